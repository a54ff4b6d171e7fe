"""The demo's request handlers as plain Python: input checks, one pacl_core.segment_many call per input geometry
(the methods of one geometry share the backbone's trunk), display values.

Nothing here imports gradio, so the handlers can be called and tested directly. Problems with the user's input
raise PACLError (one sentence); problems with one method only (e.g. PACL without a trained head) become that
method's status line, and the other methods still run. demo/ui.py turns both into visible messages.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import tempfile
import threading
import time
import uuid
import warnings
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pacl_core.errors import PACLError
from pacl_core.explain import explain_both
from pacl_core.export import slug, write_outputs
from pacl_core.inputs import load_image, parse_words, to_rgb_array
from pacl_core.methods import METHODS, default_method
from pacl_core.segment import REFINERS, group_by_geometry, segment_many
from pacl_core.viz import contact_sheet, draw_heatmaps, draw_overlay, sheet_columns

from . import budget
from .drawing import draw_grid
from .folders import PrivateFolder

METHOD_TITLES = {"vanilla": "Vanilla CLIP", "pacl": "PACL", "maskclip": "MaskCLIP", "sclip": "SCLIP",
                 "clearclip": "ClearCLIP", "naclip": "NACLIP", "scclip": "SC-CLIP"}
DEFAULT_METHODS = ("vanilla", "pacl")  # with a PACL head; without one, vanilla and SC-CLIP (default_methods)
RESOLUTIONS = ("model default", "96", "160", "224", "320", "448", "672")
SHIFTS = ("1", "2", "4")  # shifted passes per axis (pacl_core.segment.shifted_scores): 1, 4 or 16 passes
REFINES = ("method default", "none", *REFINERS)  # the method's official refinement (PAMR for NACLIP), none, ...
DISPLAY_MAX_SIDE = 1024  # larger uploads are downscaled on load: the model sees a few hundred pixels anyway
HEATMAP_SIDE = 512  # the archive's heatmaps are computed and drawn at most this large
SHEET_SIDE = 768  # the page's heatmap sheet is about this wide: each word's tile is drawn at its share of it
TABLE_HEADERS = ["method", "word", "pixel share (%)", "mean cosine", "max cosine"]
LESSON_HEADERS = ["word", "PACL φ̂", "vanilla CLIP φ̂", "CLIP's CLS cosine", "PACL best patch s",
                  "vanilla best patch s", "PACL patches attended (≈)", "vanilla patches attended (≈)"]
KEEP_DOWNLOADS = 50
ARCHIVE_PNG_COMPRESSION = 1  # fast zlib level for the archive's PNGs (the default level took most of a request)


def method_title(method: str) -> str:
    return METHOD_TITLES.get(method, method)


def method_choices() -> list[tuple[str, str]]:
    """(label, value) pairs for every method pacl_core knows, in its order."""
    return [(method_title(m), m) for m in METHODS]


def default_methods(registry, model: str) -> list[str]:
    """The comparison ticked when a model is picked: vanilla CLIP beside PACL if the model has a PACL head, else
    beside SC-CLIP (pacl_core.methods.default_method). Nothing is loaded to decide."""
    return ["vanilla", default_method(registry.head_known(model))]


# The toy model opens with 2x2 shifted passes and affinity refinement: 0.71 mIoU on the toy test scenes against 0.55
# for one plain pass, and a toy request still takes 0.21 s (p50) over HTTP; 4x4 (0.74) takes 0.30 s
# (bench/app_latency.py, docs/performance.md).
TOY_VIEW = ("2", "affinity")


def default_view(registry, model: str) -> tuple[str, str]:
    """(shifted passes, refinement) the page sets when a model is picked: the toy model's best setting that keeps a
    request quick, else one plain pass with each method's own refinement."""
    return TOY_VIEW if registry.choice(model).spec == "toy" else (SHIFTS[0], REFINES[0])


def methods_info(registry, model: str) -> str:
    """The line under the method list: why PACL is not ticked, when the model has no head."""
    if registry.head_known(model):
        return ""
    return NO_HEAD.format(model=model)


# ---- input checks ------------------------------------------------------------------------------------------
MAX_ASPECT = 16  # an image whose long side is more than this times its short side is refused as too thin
MIN_IMAGE_SIDE = 8  # ... and one whose short side is under this many pixels as too small
MAX_IMAGE_PIXELS = 40_000_000  # uploads are refused above this (40 megapixels) before they are decoded


def _kind(value) -> str:
    """'a number', 'a list', ...: how a wrongly typed input is named in a message."""
    names = {bool: "a yes/no value", int: "a number", float: "a number", list: "a list", tuple: "a list",
             dict: "a dictionary", str: "text"}
    return names.get(type(value), f"a {type(value).__name__}")


def quoted(value, n: int = 40) -> str:
    """A visitor's value as a message quotes it: one line, at most n characters."""
    text = " ".join(str(value).split())
    return f"'{text[:n]}…'" if len(text) > n else f"'{text}'"


def shown_name(image, name: str | None = None) -> str:
    """What a message calls the image: the visitor's own file name, never the server's upload path."""
    if name:
        return Path(str(name)).name
    return Path(image).name if isinstance(image, (str, Path)) else "the image"


def check_shape(width: int, height: int, shown: str) -> None:
    """Refuse images too large, too small or too thin to segment, in one sentence naming the problem."""
    if width * height > MAX_IMAGE_PIXELS:
        raise PACLError(f"{shown}: the {width}×{height} image is too large ({width * height / 1e6:.0f} megapixels; "
                        f"the demo takes at most {MAX_IMAGE_PIXELS // 1_000_000}): downscale it and upload it again")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise PACLError(f"{shown}: the {width}×{height} image is too small to segment (its short side must be at "
                        f"least {MIN_IMAGE_SIDE} pixels)")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise PACLError(f"{shown}: the {width}×{height} image is too thin to segment (its long side may be at most "
                        f"{MAX_ASPECT} times its short side): crop it nearer to a square")


def _header_size(path: Path, shown: str) -> tuple[int, int] | None:
    """(W, H) from the file's header, without decoding it; None when it cannot be read (load_image says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except Image.DecompressionBombError:
        raise PACLError(f"{shown}: the image is too large (more than {MAX_IMAGE_PIXELS // 1_000_000} megapixels): "
                        "downscale it and upload it again") from None
    except Exception:  # not an image, truncated, ...: load_image gives the sentence
        return None


def _load_file(path: Path, max_side: int, shown: str) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file -> ((H, W, 3) uint8, original (W, H)); every message names the file as the visitor knows it."""
    try:
        original = _header_size(path, shown) if path.is_file() else None
        if original is not None:
            check_shape(*original, shown)
        rgb = load_image(path, max_side=max_side)
    except PACLError as e:
        raise PACLError(str(e).replace(str(path), shown)) from None
    return rgb, original or (rgb.shape[1], rgb.shape[0])


def check_image(image, max_side: int = DISPLAY_MAX_SIDE, name: str | None = None) -> tuple[np.ndarray, list[str]]:
    """A file path, PIL image or array -> (H, W, 3) uint8 at most max_side, and a note if it was downscaled.

    name: the visitor's own file name, used in messages instead of the server's upload path."""
    if image is None or (isinstance(image, str) and not image.strip()):
        raise PACLError("no image yet: upload a photo (or pick an example below), then press Segment")
    shown = shown_name(image, name)
    if isinstance(image, (str, Path)):
        rgb, original = _load_file(Path(image), max_side, shown)
    elif isinstance(image, (Image.Image, np.ndarray)):
        original = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])
        check_shape(*original, shown)
        rgb = to_rgb_array(image, max_side=max_side)
    else:
        raise PACLError(f"the image must be an uploaded image file, got {_kind(image)}")
    notes = []
    if max(original) > max_side:
        notes.append(f"the {original[0]}×{original[1]} image was downscaled to {rgb.shape[1]}×{rgb.shape[0]} "
                     "pixels for the demo")
    return rgb, notes


def check_words(words) -> tuple[list[str], list[str]]:
    """The vocabulary: text ('dog, grass') or a list of words; anything else is one sentence."""
    if words is not None and not isinstance(words, str) and not (
            isinstance(words, (list, tuple)) and all(isinstance(w, str) for w in words)):
        raise PACLError(f'the vocabulary must be text, words separated by commas (e.g. "dog, grass, sky"), got '
                        f"{_kind(words)}")
    return parse_words(words)


def check_model(registry, model, session: str | None = None) -> str:
    """The model's name as the Model list shows it; one sentence for anything else, listing only the names this
    visitor may pick (never another session's heads)."""
    if not isinstance(model, str):
        raise PACLError(f"the model must be one of the names in the Model list, got {_kind(model)}")
    registry.choice(model) if session is None else registry.choice(model, session)  # None: any model (tests)
    return model


def check_methods(methods) -> list[str]:
    if isinstance(methods, str):
        methods = [methods]
    if methods is not None and not (isinstance(methods, (list, tuple)) and all(isinstance(m, str) for m in methods)):
        raise PACLError(f"the methods must be a list of method names ({', '.join(METHODS)}), got {_kind(methods)}")
    methods = [m for m in (methods or []) if m]
    if not methods:
        raise PACLError("no method selected: tick at least one method to compare (e.g. Vanilla CLIP and PACL)")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise PACLError(f"unknown method {quoted(unknown[0])}; valid methods: {', '.join(METHODS)}")
    return [m for m in METHODS if m in methods]  # the page's order, no duplicates


def check_resolution(resolution) -> int | None:
    """'model default' -> None (the model's own input size), '448' or 448 -> 448."""
    if resolution in (None, "", RESOLUTIONS[0]):
        return None
    try:
        size = int(resolution)
    except (TypeError, ValueError, OverflowError):
        raise PACLError(f"input resolution {quoted(resolution)} must be one of: {', '.join(RESOLUTIONS)}") from None
    if str(size) not in RESOLUTIONS:
        raise PACLError(f"input resolution {size} must be one of: {', '.join(RESOLUTIONS)}")
    return size


def check_shifts(shifts) -> int:
    """'2' or 2 -> 2: the number of shifted passes per axis (1 = one plain pass)."""
    if shifts in (None, ""):
        return 1
    if str(shifts) not in SHIFTS:
        raise PACLError(f"shifted passes {quoted(shifts)} must be one of: {', '.join(SHIFTS)}")
    return int(shifts)


def check_refine(refine) -> str | None:
    """'affinity' -> 'affinity'; 'none' -> 'none' (off); 'method default' (or nothing) -> None, the method's own
    (PAMR for NACLIP, as its official code runs it)."""
    if refine in (None, "", REFINES[0]):
        return None
    if not isinstance(refine, str):
        raise PACLError(f"refinement must be one of: {', '.join(REFINES)}, got {_kind(refine)}")
    if refine not in REFINES:
        raise PACLError(f"refinement {quoted(refine)} must be one of: {', '.join(REFINES)}")
    return refine


def check_threshold(threshold) -> tuple[str, float] | None:
    """Slider value -> the segmenter's background rule: None when 0 (off), else ('score', t)."""
    try:
        t = float(threshold or 0.0)
    except (TypeError, ValueError):
        raise PACLError(f"background threshold must be a number between 0 and 1, got {_kind(threshold)}") from None
    if t != t:  # NaN
        raise PACLError("background threshold must be a number between 0 and 1, got NaN")
    if not 0.0 <= t <= 1.0:
        raise PACLError(f"background threshold {t} must be between 0 and 1")
    return None if t == 0.0 else ("score", t)


@dataclass(frozen=True)
class Settings:
    """One request's checked choices: what the backbone sees and how every method reads it."""

    size: int | None = None  # every method on the whole photo at this short side; None: each official protocol
    shifts: int = 1  # shifted passes per axis
    refine: str | None = None  # None: each method's own (PAMR for NACLIP); 'none', 'affinity' or 'pamr'
    background: tuple | None = None  # ('score', t) from the page's threshold, for every method; None: off


def check_settings(threshold=0.0, resolution=RESOLUTIONS[0], shifts=SHIFTS[0], refine=REFINES[0]) -> Settings:
    """The page's four settings -> Settings, each checked into one line."""
    return Settings(check_resolution(resolution), check_shifts(shifts), check_refine(refine),
                    check_threshold(threshold))


# ---- segmentation and comparison ---------------------------------------------------------------------------
@dataclass
class Panel:
    """One method's column on the page."""

    method: str
    title: str
    status: str  # a Markdown line: timing and sizes, or why this method could not run
    # what the page shows is two images per method, so that a request sends few files (over HTTP each one costs
    # a round trip; one mask file and one heatmap file per word made most of a toy request's time)
    overlay: np.ndarray | None = None  # (H, W, 3) uint8: the photo, each word's region coloured, and the legend
    sheet: np.ndarray | None = None  # (H, W, 3) uint8: every word's heatmap, captioned, in one grid
    segmentation: object = None  # the pacl_core Segmentation, or None when the method failed

    @property
    def ok(self) -> bool:
        return self.segmentation is not None


@dataclass
class Comparison:
    words: list[str]
    panels: list[Panel]
    table: list[list]  # rows under TABLE_HEADERS
    download: str | None  # a .zip with every method's overlay, mask, heatmaps and numbers (None: not made yet)
    notes: list[str]  # things the user should be told (duplicates removed, downscaled image, a method failed)
    settings: dict = field(default_factory=dict)  # model, size, threshold, shifts, refine: written into the archive


def table_rows(panel: Panel) -> list[list]:
    rows = []
    for r in panel.segmentation.summary():
        mean = None if np.isnan(r["mean_score"]) else round(r["mean_score"], 4)
        top = None if np.isnan(r["max_score"]) else round(r["max_score"], 4)
        rows.append([panel.title, r["word"], round(100.0 * r["pixel_share"], 1), mean, top])
    return rows


NO_HEAD = ("{model} has no trained PACL head. Drop one (NAME.safetensors with its NAME.json) into checkpoints/ "
           "and pick it in the Model list, or pick the toy model, which ships one; the training-free methods "
           "need no head.")


def load_model(registry, model: str, session: str | None = None) -> None:
    """Load the chosen model now: one that cannot load (e.g. no weights offline) fails the whole request.
    With a session, a model only another session may use is unknown here."""
    check_model(registry, model, session)
    try:
        registry.backbone(model)
    except PACLError as e:
        raise PACLError(f"could not load {model}: {e} (or pick another model in the Model list)") from None


def geometry_text(segmenter) -> str:
    """What the backbone saw: '448 px short side, whole image' or '336 px short side, 224/112 px windows'."""
    return segmenter.geometry.describe()


def sharing_text(segmenter, group, size: int | None) -> str:
    """How this method's backbone pass was shared: all methods at the chosen size, its own protocol, or the
    protocol it has in common with some other methods."""
    others = [method_title(s.method) for s in group if s is not segmenter]
    if size is not None:
        return (f"one shared pass for {len(group)} methods at the chosen {geometry_text(segmenter)}" if others
                else f"the chosen {geometry_text(segmenter)}")
    if not others:
        return f"own protocol: {geometry_text(segmenter)}"
    return f"shared pass with {', '.join(others)} (same protocol: {geometry_text(segmenter)})"


def method_panel(segmenter, seg, elapsed: float, group, size: int | None) -> Panel:
    """A segmented method's column: status line, overlay and display-size heatmaps."""
    title = method_title(segmenter.method)
    grid = seg.patch_scores.shape[1:]
    status = (f"**{title}** · {elapsed:.2f} s · {sharing_text(segmenter, group, size)} · "
              f"{grid[0]}×{grid[1]} patches"
              + (f" · {segmenter.shifts}×{segmenter.shifts} shifted passes" if segmenter.shifts > 1 else "")
              + (f" · {segmenter.refine} refinement" if segmenter.refine else ""))
    return Panel(segmenter.method, title, status, draw_overlay(seg), heatmap_sheet(seg), seg)


def heatmap_sheet(seg) -> np.ndarray:
    """Every word's heatmap, drawn at its tile's size (never at the photo's) and captioned, in one image."""
    columns = sheet_columns(len(seg.words))
    tiles = draw_heatmaps(seg, max_side=max(64, SHEET_SIDE // columns), titled=False)  # [(word, (h, w, 3))]
    return contact_sheet([img for _, img in tiles], titles=[w for w, _ in tiles], columns=columns)


def method_segmenters(registry, model: str, methods: list[str], settings: Settings) -> tuple[list, dict]:
    """The segmenters of the methods that can run with these settings, and a Panel saying why for each that
    cannot (PACL without a head, a setting the model refuses)."""
    segmenters, failed = [], {}
    for method in methods:
        title = method_title(method)
        if method == "pacl" and not registry.has_pacl_head(model):
            failed[method] = Panel(method, title, status=f"**{title}** could not run: {NO_HEAD.format(model=model)}")
            continue
        try:
            segmenter = registry.segmenter(model, method, settings.size, settings.shifts, settings.refine)
            segmenters.append(segmenter.replace(background=settings.background))
        except PACLError as e:
            failed[method] = Panel(method, title, status=f"**{title}** could not run: {e}")
    return segmenters, failed


def run_methods(registry, model: str, methods: list[str], image: np.ndarray, words: list[str],
                settings: Settings) -> list[Panel]:
    """Every chosen method on one image, one backbone trunk per input geometry (pacl_core.segment.segment_many).

    A method that cannot run (PACL without a head) becomes its panel's status; the others still run.
    """
    segmenters, panels = method_segmenters(registry, model, methods, settings)
    for group in group_by_geometry(segmenters):
        start = time.perf_counter()
        try:
            with registry.lock(model):
                segs = segment_many(group, image, words)
        except PACLError as e:
            for s in group:
                title = method_title(s.method)
                panels[s.method] = Panel(s.method, title, status=f"**{title}** could not run: {e}")
            continue
        elapsed = time.perf_counter() - start
        for s in group:
            panels[s.method] = method_panel(s, segs[s.method], elapsed, group, settings.size)
    return [panels[m] for m in methods]


def compare(registry, image, words, methods, model: str, threshold=0.0, resolution=RESOLUTIONS[0],
            shifts=SHIFTS[0], refine=REFINES[0], package: bool = True, session: str | None = None,
            image_name: str | None = None) -> Comparison:
    """Segment one image with each chosen method; every input is checked before any model is loaded.

    An explicit resolution runs every method on the whole image at that size, in one shared backbone pass;
    "model default" keeps each method's official protocol and shares the pass among methods whose protocols
    coincide. package=False leaves the archive for later (`hold` + `package_held`), so the page can show
    results first. session: the visitor's browser session (only its own trained heads may be picked);
    image_name: the file's name as the visitor knows it, for messages. The request's cost is estimated before it
    runs (demo/budget.py): over the budget it is refused, heavy ones run in the heavy lane.
    """
    rgb, notes = check_image(image, name=image_name)
    words, word_notes = check_words(words)
    methods = check_methods(methods)
    settings = check_settings(threshold, resolution, shifts, refine)
    load_model(registry, model, session)
    panels = run_in_lane(registry, model, methods, rgb, words, settings)
    notes = word_notes + notes + [p.status.replace("**", "") for p in panels if not p.ok]
    table = [row for p in panels if p.ok for row in table_rows(p)]
    info = {"model": model, "image_size": settings.size, "shifts": settings.shifts,
            "background_threshold": settings.background[1] if settings.background else 0.0,
            "refine": settings.refine or "method default"}
    result = Comparison(words=words, panels=panels, table=table, download=None, notes=notes, settings=info)
    if package:
        result.download = package_comparison(result)
    return result


def request_cost(registry, model: str, methods: list[str], shape, n_words: int, settings: Settings):
    """The estimated cost (demo/budget.py) of running these methods: the segmenters run_methods will use."""
    segmenters, _ = method_segmenters(registry, model, methods, settings)  # run_methods says why one cannot run
    spec = registry.choice(model).spec
    return budget.estimate(group_by_geometry(segmenters), shape[:2], n_words, budget.unit_for(registry, model),
                           budget.correction(spec))


@contextmanager
def lane_for(registry, model: str, cost):
    """The registry a request of this cost runs on: the light lane (the registry itself) when cheap, else the
    heavy lane (its own copy of the model, one heavy request at a time; PACLError when it is busy)."""
    if cost.lane == "light":
        yield registry
        return
    budget.heavy_lane.enter(cost)
    try:
        lane = registry.heavy_lane()
        load_model(lane, model)
        yield lane
    finally:
        budget.heavy_lane.leave()


def run_in_lane(registry, model: str, methods: list[str], image: np.ndarray, words: list[str],
                settings: Settings) -> list[Panel]:
    """run_methods within the budget: refused above it (a message naming the cost and what to lower), else in
    the lane its cost calls for."""
    cost = request_cost(registry, model, methods, image.shape, len(words), settings)
    budget.check_budget(cost, len(methods), settings.size, settings.shifts, settings.refine)
    with lane_for(registry, model, cost) as lane:
        start = time.perf_counter()
        panels = run_methods(lane, model, methods, image, words, settings)
        budget.observe(registry.choice(model).spec, cost.seconds, time.perf_counter() - start)
        return panels


# ---- downloads ---------------------------------------------------------------------------------------------
_downloads = PrivateFolder("pacl-demo-downloads-")
_downloads_lock = threading.Lock()


def downloads_dir() -> Path:
    """A private folder for result archives, made once per process and removed at exit; only the newest
    KEEP_DOWNLOADS archives are kept (Gradio serves its own copy of each)."""
    with _downloads_lock:
        folder = _downloads()
        archives = sorted(folder.glob("*.zip"), key=lambda p: p.stat().st_mtime)
        for old in archives[: max(0, len(archives) - KEEP_DOWNLOADS + 1)]:
            old.unlink(missing_ok=True)
        return folder


def package_comparison(result: Comparison, folder: Path | None = None) -> str | None:
    """The archive of a comparison (None when no method ran); folder: where (default: downloads_dir())."""
    ok = [p for p in result.panels if p.ok]
    return package_results(ok, result.table, result.settings, folder) if ok else None


HELD_PER_SESSION = 2  # comparisons one session may have waiting for their archive (the newest ones)
HELD_SECONDS = 600  # ... for at most this long
HELD_BYTES = 384 * 2**20  # all sessions' waiting comparisons together; beyond it a result is packaged at once
DELIVERED_TOKENS = 4096  # tokens whose archive was handed out (asked again: nothing new to give)


@dataclass
class _Held:
    session: str
    result: Comparison | None  # None once packaged to disk (then `archive` is set)
    archive: str | None
    nbytes: int
    expires: float


class HeldResults:
    """Results waiting for their archive, per session: at most HELD_PER_SESSION per session, HELD_SECONDS each
    and HELD_BYTES in all. A result that would overflow the byte bound is packaged to disk at once (its archive
    is then what is held), so no session's archive is ever dropped to make room for another's."""

    def __init__(self, per_session: int = HELD_PER_SESSION, seconds: float = HELD_SECONDS,
                 max_bytes: int = HELD_BYTES):
        self.per_session, self.seconds, self.max_bytes = per_session, seconds, max_bytes
        self._items: OrderedDict[str, _Held] = OrderedDict()  # token -> held, oldest first
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def nbytes(self) -> int:
        with self._lock:
            return sum(item.nbytes for item in self._items.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def folder(self) -> Path:
        """Where spilled archives wait: a folder of downloads_dir(), pruned by age only."""
        path = downloads_dir() / "held"
        path.mkdir(exist_ok=True)
        return path

    def _expire(self, now: float) -> None:
        for token in [t for t, item in self._items.items() if item.expires < now]:
            self._forget(token)
        held = downloads_dir() / "held"
        for old in held.glob("*.zip") if held.is_dir() else ():  # handed out long ago: Gradio has its copy
            try:
                if time.time() - old.stat().st_mtime > self.seconds:
                    old.unlink()
            except OSError:
                pass

    def _forget(self, token: str) -> None:
        item = self._items.pop(token)
        if item.archive is not None:
            Path(item.archive).unlink(missing_ok=True)

    def hold(self, result: Comparison, session: str = "anonymous") -> str:
        """Keep a comparison (without its display images) until its archive is asked for; returns its token."""
        slim = dataclasses.replace(result, panels=[dataclasses.replace(p, overlay=None, sheet=None)
                                                   for p in result.panels])
        size = comparison_bytes(slim)
        token, now = uuid.uuid4().hex, time.monotonic()
        with self._lock:
            self._expire(now)
            mine = [t for t, item in self._items.items() if item.session == session]
            for old in mine[: max(0, len(mine) - self.per_session + 1)]:
                self._forget(old)
            in_memory = sum(item.nbytes for item in self._items.values())
            spill = in_memory + size > self.max_bytes
            self._items[token] = _Held(session, None if spill else slim, None, 0 if spill else size,
                                       now + self.seconds)
        if spill:  # packaged outside the lock, into a folder only expiry prunes (not downloads_dir's count)
            archive = package_comparison(slim, self.folder())
            with self._lock:
                if token in self._items:
                    self._items[token].archive = archive
        return token

    def forget_session(self, session: str) -> None:
        """A browser tab closed: its waiting results (and spilled archives) go at once."""
        with self._lock:
            for token in [t for t, item in self._items.items() if item.session == session]:
                self._forget(token)

    def take(self, token: str | None) -> str | None:
        """The archive of a held comparison, which is then released. None when there is no token or its archive
        was handed out already; PACLError when it expired or was replaced, so the visitor is told."""
        if not token:
            return None
        with self._lock:
            item = self._items.pop(token, None)
            delivered = token in self._delivered
            if item is not None:
                self._delivered[token] = None
                while len(self._delivered) > DELIVERED_TOKENS:
                    self._delivered.popitem(last=False)
        if item is None:
            if delivered:
                return None
            raise PACLError(f"these results are no longer kept for download (results wait {self.seconds // 60:.0f} "
                            f"minutes, and only your {self.per_session} newest): press Segment again")
        if item.result is None and (item.archive is None or not Path(item.archive).is_file()):
            raise PACLError("these results' archive is not there any more: press Segment again")
        return item.archive if item.result is None else package_comparison(item.result)


def comparison_bytes(result: Comparison) -> int:
    """About how much memory a comparison holds: its arrays and tensors, those of its segmentations included."""
    total = 0
    for panel in result.panels:
        for value in (panel.overlay, panel.sheet, *vars(panel.segmentation or object()).values()):
            total += getattr(value, "nbytes", 0) or (value.numel() * value.element_size()
                                                      if hasattr(value, "element_size") else 0)
    return total


held_results = HeldResults()


def hold(result: Comparison, session: str = "anonymous") -> str:
    """Keep a comparison until its archive is made; returns the token `package_held` takes."""
    return held_results.hold(result, session)


def package_held(token: str | None) -> str | None:
    """The archive of a held comparison, which is then released; None if it was handed out already."""
    return held_results.take(token)


def package_results(panels: list[Panel], table: list[list], info: dict, folder: Path | None = None) -> str:
    """A zip: summary.csv, and per method overlay.png, mask.png, heatmap_*.png (each word's own, titled, at
    most HEATMAP_SIDE per side) and result.json; PNGs at a fast zlib level. folder: default downloads_dir()."""
    folder = folder or downloads_dir()
    archive = folder / f"pacl-results-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.zip"
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        root = Path(tmp)
        for i, p in enumerate(panels):
            write_outputs(root / slug(p.method, i + 1), p.segmentation, dict(info, method_title=p.title, notes=[]),
                          heatmaps=draw_heatmaps(p.segmentation, max_side=HEATMAP_SIDE),
                          compression=ARCHIVE_PNG_COMPRESSION)
        with open(root / "summary.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(TABLE_HEADERS)
            writer.writerows(table)
        (root / "settings.json").write_text(json.dumps(info, indent=2))
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(root.rglob("*")):
                if path.is_file():  # PNGs are compressed already: stored as they are
                    kind = zipfile.ZIP_STORED if path.suffix == ".png" else zipfile.ZIP_DEFLATED
                    zf.write(path, path.relative_to(root).as_posix(), compress_type=kind)
    return str(archive)


# ---- pictures the page shows ------------------------------------------------------------------------------
DISPLAY_SECONDS = 300  # the app's own copies of shown pictures are deleted after this (Gradio serves its copy)
DISPLAY_QUALITY = 90


class DisplayFiles:
    """The page's pictures as JPEG files the app writes itself, each under a temporary name renamed into place,
    at a unique path: Gradio copies a returned file into its cache atomically, so concurrent requests that show
    identical pictures never read a half-written one (Gradio's own encoder rewrites such files in place)."""

    def __init__(self, seconds: float = DISPLAY_SECONDS):
        self.seconds = seconds
        self.folder = PrivateFolder("pacl-demo-display-")
        self._lock = threading.Lock()
        self._pruned = 0.0

    def write(self, image: np.ndarray | None) -> str | None:
        """An (H, W, 3) uint8 picture -> the path of its JPEG file (None stays None)."""
        if image is None:
            return None
        folder = self.folder()
        name = uuid.uuid4().hex
        staging, path = folder / f".{name}.tmp", folder / f"{name}.jpeg"
        Image.fromarray(np.ascontiguousarray(image)).save(staging, format="JPEG", quality=DISPLAY_QUALITY)
        staging.replace(path)
        self._prune()
        return str(path)

    def _prune(self) -> None:
        """Delete the files older than `seconds`, at most every tenth of that."""
        now = time.time()
        if now - self._pruned < self.seconds / 10:
            return
        self._pruned = now
        for old in self.folder().iterdir():
            try:
                if now - old.stat().st_mtime > self.seconds:
                    old.unlink()
            except OSError:
                pass


display_files = DisplayFiles()


def display_file(image: np.ndarray | None) -> str | None:
    """A picture for the page, as a file the app wrote (see DisplayFiles)."""
    return display_files.write(image)


# ---- the teaching view -------------------------------------------------------------------------------------
@dataclass
class LessonSide:
    """One patch embedder's maps for the chosen word."""

    similarity_image: np.ndarray  # s(x,y) on the patch grid over the image
    attention_image: np.ndarray  # a(x,y) on the same grid
    similarity_range: tuple[float, float]  # the values drawn darkest and brightest
    attention_range: tuple[float, float]


@dataclass
class Lesson:
    """What the teaching view shows for one word: PACL's maps beside vanilla CLIP's, and the numbers."""

    word: str
    similarity_image: np.ndarray  # PACL's s(x,y) on the patch grid over the image
    attention_image: np.ndarray  # PACL's a(x,y) on the same grid
    similarity_range: tuple[float, float]  # the values drawn darkest and brightest
    attention_range: tuple[float, float]
    summary: str  # Markdown: both φ̂ next to the CLS cosine, in words
    table: list[list]  # rows under LESSON_HEADERS, one per vocabulary word
    method: str  # 'pacl', or 'vanilla' when the model has no PACL head
    notes: list[str]
    vanilla: LessonSide | None = None  # vanilla CLIP's maps for the same word, at the same τ


def lesson_segmenters(registry, model: str, size: int | None):
    """(PACL's segmenter, vanilla's, notes): without a head, CLIP's own patch projection on both sides, with a note."""
    vanilla = registry.segmenter(model, "vanilla", size)
    if registry.has_pacl_head(model):
        return registry.segmenter(model, "pacl", size), vanilla, []
    note = (f"{model} has no trained PACL head, so this view shows vanilla CLIP's patch embeddings "
            "(what PACL starts from) on both sides; drop a head into checkpoints/ to see PACL's.")
    return vanilla, vanilla, [note]


def describe(sides, k: int) -> str:
    """Plain-language Markdown for word k of a SideBySide."""
    ex = sides.pacl
    r = sides.rows()[k]
    name = "PACL" if ex.method == "pacl" else "vanilla CLIP"
    patches = ex.grid[0] * ex.grid[1]
    rows = sides.rows()

    def first(key):
        return max(rows, key=lambda row: row[key])["word"]

    return (
        f"**“{r['word']}”**: {name}'s patch-level score φ̂ = **{r['pacl_compatibility']:.3f}**, vanilla CLIP's "
        f"φ̂ = **{r['vanilla_compatibility']:.3f}** (same τ = {ex.tau:g}), CLIP's CLS cosine = "
        f"**{r['cls_cosine']:.3f}**. {name}'s attention a(x,y) is spread over about "
        f"**{r['pacl_effective_patches']:.0f} of {patches}** patches, vanilla CLIP's over about "
        f"**{r['vanilla_effective_patches']:.0f}**; the best single patch has s = {r['pacl_max_patch_cosine']:.3f} "
        f"({r['vanilla_max_patch_cosine']:.3f} for vanilla).\n\n"
        f"Across the vocabulary, {name}'s φ̂ ranks **{first('pacl_compatibility')}** first, vanilla CLIP's φ̂ "
        f"**{first('vanilla_compatibility')}**, and the CLS embedding **{first('cls_cosine')}**."
    )


def check_tau(tau) -> float | None:
    """Slider value -> attention temperature; 0 or None = the one the head was trained with."""
    try:
        t = float(tau or 0.0)
    except (TypeError, ValueError):
        raise PACLError(f"attention temperature must be a number, got {_kind(tau)}") from None
    if not 0.0 <= t <= 10.0:
        raise PACLError(f"attention temperature {t} must be between 0 (the head's own) and 10")
    return None if t == 0.0 else t


def lesson_side(ex, k: int) -> LessonSide:
    """Word k's s and a maps of one Explanation, drawn over its image."""
    return LessonSide(draw_grid(ex.image, ex.similarity[k], cmap="viridis"),
                      draw_grid(ex.image, ex.attention[k], cmap="magma", scale="max"),
                      (float(ex.similarity[k].min()), float(ex.similarity[k].max())),
                      (0.0, float(ex.attention[k].max())))


def lesson(registry, image, words, word, model: str, resolution=RESOLUTIONS[0], tau=None,
           session: str | None = None, image_name: str | None = None) -> Lesson:
    """The teaching view for one word (added to the vocabulary if missing; the first word if none is chosen).
    session and image_name as in `compare`; the view's cost is checked against the same budget."""
    rgb, notes = check_image(image, name=image_name)
    vocab, _ = check_words(words)
    if word is not None and not isinstance(word, str):
        raise PACLError(f"the word must be text, got {_kind(word)}")
    word = " ".join(str(word or "").split()) or vocab[0]
    if word.casefold() not in {w.casefold() for w in vocab}:
        vocab, _ = parse_words(vocab + [word])
    size = check_resolution(resolution)
    tau = check_tau(tau)
    load_model(registry, model, session)
    cost = request_cost(registry, model, ["vanilla", "pacl"], rgb.shape, len(vocab), Settings(size))
    budget.check_budget(cost, 2, size, 1, None)
    with lane_for(registry, model, cost) as lane:
        pacl, vanilla, seg_notes = lesson_segmenters(lane, model, size)
        with lane.lock(model):
            sides = explain_both(pacl, vanilla, rgb, vocab, tau=tau)
    k = sides.pacl.index(word)
    main = lesson_side(sides.pacl, k)
    table = [[r["word"], round(r["pacl_compatibility"], 4), round(r["vanilla_compatibility"], 4),
              round(r["cls_cosine"], 4), round(r["pacl_max_patch_cosine"], 4),
              round(r["vanilla_max_patch_cosine"], 4), round(r["pacl_effective_patches"], 1),
              round(r["vanilla_effective_patches"], 1)] for r in sides.rows()]
    return Lesson(word=sides.pacl.words[k], similarity_image=main.similarity_image,
                  attention_image=main.attention_image, similarity_range=main.similarity_range,
                  attention_range=main.attention_range, summary=describe(sides, k), table=table,
                  method=sides.pacl.method, notes=notes + seg_notes, vanilla=lesson_side(sides.vanilla, k))
