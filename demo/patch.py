"""The "Point at a patch" view as plain Python: input checks, the per-session cache of backbone passes, drawings.

A click asks pacl_core.explain for the report of the patch under it (`report_from_pass`); the backbone pass it
reads is made once per image, model, geometry and methods, and kept for the browser session (`PassCache`), so a
click costs no pass. Nothing here imports gradio or computes scores: the numbers come from pacl_core.explain,
and this module only checks inputs and draws them. demo/patch_tab.py wires it into the page.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, ImageDraw

from pacl_core.errors import PACLError
from pacl_core.explain import FROZEN, PatchPass, PatchReport, patch_pass, report_from_pass, word_maps
from pacl_core.viz import _font, apply_colormap, contact_sheet, display_size, palette

from . import handlers as h
from .drawing import draw_grid

PER_SESSION = 3  # passes kept per browser session (a few images or settings to go back to)
MAX_SESSIONS_BYTES = 256 << 20  # passes kept for all sessions together; the oldest go first
PICTURE_MIN_SIDE, PICTURE_MAX_SIDE = 384, 640  # the clickable picture is drawn this large (browsers shrink it)
TILE_SIDE = 256  # each coherence map's tile
WORD_SIDE = 448  # each method's large heatmap of the chosen word
CLS_COLOUR = (90, 90, 90)
FROZEN_TITLE = "CLIP tokens"
TABLE_HEADERS_FIXED = ["word", "CLS cosine"]


# ---- the per-session cache -----------------------------------------------------------------------------------
class PassCache:
    """Backbone passes kept per browser session: at most `per_session` each and `max_bytes` in all, least recently
    used first out; `drop(session)` forgets a closed session's."""

    def __init__(self, per_session: int = PER_SESSION, max_bytes: int = MAX_SESSIONS_BYTES):
        self.per_session, self.max_bytes = per_session, max_bytes
        self._entries: OrderedDict[tuple, PatchPass] = OrderedDict()  # (session, key) -> pass, oldest first
        self._lock = threading.Lock()

    def get(self, session: str, key: tuple) -> PatchPass | None:
        with self._lock:
            pp = self._entries.get((session, key))
            if pp is not None:
                self._entries.move_to_end((session, key))
            return pp

    def put(self, session: str, key: tuple, pp: PatchPass) -> None:
        with self._lock:
            self._entries[(session, key)] = pp
            self._entries.move_to_end((session, key))
            mine = [k for k in self._entries if k[0] == session]
            for old in mine[: max(0, len(mine) - self.per_session)]:
                del self._entries[old]
            while len(self._entries) > 1 and self.nbytes() > self.max_bytes:
                self._entries.popitem(last=False)

    def drop(self, session: str) -> None:
        with self._lock:
            for k in [k for k in self._entries if k[0] == session]:
                del self._entries[k]

    def nbytes(self) -> int:
        return sum(pp.nbytes for pp in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def sessions(self) -> set[str]:
        return {s for s, _ in self._entries}


# ---- checks --------------------------------------------------------------------------------------------------
def check_point(x, y, shape) -> tuple[float, float]:
    """The point typed or clicked, in the image's pixels; none yet -> the image's centre."""
    H, W = shape[:2]
    if x in (None, "") and y in (None, ""):
        return (W - 1) / 2, (H - 1) / 2
    try:
        px, py = float(x), float(y)
    except (TypeError, ValueError):
        raise PACLError(f"the point ({x}, {y}) must be two numbers in the image's pixels") from None
    if not (0 <= px < W and 0 <= py < H):
        raise PACLError(f"the point ({px:g}, {py:g}) is outside the {W}×{H} image; click on the picture")
    return px, py


def patch_methods(registry, model: str, methods: list[str]) -> tuple[list[str], list[str]]:
    """The ticked methods this model can run here, and a note for PACL without a head."""
    if "pacl" in methods and not registry.has_pacl_head(model):
        methods = [m for m in methods if m != "pacl"]
        note = f"PACL is left out: {h.NO_HEAD.format(model=model)}"
        if not methods:
            raise PACLError(note)
        return methods, [note]
    return methods, []


def image_key(rgb: np.ndarray) -> str:
    """A short fingerprint of the image's pixels: the same photo uploaded again finds its pass."""
    return hashlib.blake2b(np.ascontiguousarray(rgb).data, digest_size=12).hexdigest() + f"-{rgb.shape}"


# ---- the handler ---------------------------------------------------------------------------------------------
@dataclass
class PatchView:
    """What the tab shows for one point."""

    report: PatchReport
    picture: np.ndarray  # (H', W', 3) the image with the patch grid and this patch outlined: click it
    bars: np.ndarray  # every word's cosine with this patch under each method beside the CLS cosine
    coherence: np.ndarray  # this patch's cosine with every patch: frozen tokens, then each method
    word_view: np.ndarray  # the chosen word's cosine map per method, large, with its colour bar
    word: str
    table: list[list]
    headers: list[str]
    status: str  # Markdown: the patch, each method's word, and the time
    data: dict  # the report as plain data, with the timings: what /patch serves
    notes: list[str] = field(default_factory=list)


def get_pass(registry, cache: PassCache, session: str, model: str, rgb: np.ndarray, methods: list[str],
             size: int | None) -> tuple[PatchPass, bool]:
    """The kept pass for this session, image, model, geometry and methods, else a new one (kept). (pass, was kept)"""
    key = (model, image_key(rgb), size, tuple(methods))
    pp = cache.get(session, key)
    if pp is not None:
        return pp, True
    head = registry.segmenter(model, "pacl", size).head if "pacl" in methods else None
    backbone = registry.backbone(model)  # takes the model's lock itself
    with registry.lock(model):
        pp = patch_pass(backbone, rgb, methods, head=head, image_size=size)
    cache.put(session, key, pp)
    return pp, False


def point_at(registry, cache: PassCache, session: str, image, words, methods, model: str,
             resolution=h.RESOLUTIONS[0], x=None, y=None, word=None) -> PatchView:
    """What the patch under (x, y) matches (the image's centre when no point is given yet)."""
    start = time.perf_counter()
    if image is None or (isinstance(image, str) and not image.strip()):
        raise PACLError("no image yet: upload a photo (or pick an example), then click a point of it")
    rgb, notes = h.check_image(image)
    vocab, word_notes = h.check_words(words)
    point = check_point(x, y, rgb.shape)
    methods = h.check_methods(methods)
    size = h.check_resolution(resolution)
    h.load_model(registry, model)
    methods, method_notes = patch_methods(registry, model, methods)
    pp, kept = get_pass(registry, cache, session or "anonymous", model, rgb, methods, size)
    with registry.lock(model):  # the backbone's text cache is shared
        report = report_from_pass(pp, vocab, point)
        word = word if word and str(word).casefold() in {w.casefold() for w in report.words} else report.words[0]
        maps = word_maps(pp, report.words, word)
    view = draw_view(rgb, report, maps)
    elapsed = time.perf_counter() - start
    status = status_line(report, pp, kept, elapsed, size)
    data = dict(report.to_dict(), image_shape=list(rgb.shape[:2]), resized=list(pp.resized),
                pass_kept=kept, pass_seconds=round(pp.seconds, 4), seconds=round(elapsed, 4))
    table, headers = table_rows(report)
    return PatchView(report, *view, word, table, headers, status, data, word_notes + notes + method_notes)


def status_line(report: PatchReport, pp: PatchPass, kept: bool, elapsed: float, size) -> str:
    (row, col), (gh, gw) = report.patch, report.grid
    best = " · ".join(f"{h.method_title(m)}: **{w}**" for m, w in report.best_words().items())
    cls_word = report.words[int(np.argmax(report.cls_cosines))]
    how = (f"read from this session's kept pass ({pp.seconds:.2f} s when it was made)" if kept
           else f"new backbone pass {pp.seconds:.2f} s, kept for your next clicks")
    where = f"{pp.resized[1]}×{pp.resized[0]} px whole image" + ("" if size else " (the model's input size)")
    return (f"Patch **row {row + 1}, column {col + 1}** of {gh}×{gw} · this patch is {best} · the whole image "
            f"(CLS) is **{cls_word}** · {elapsed:.2f} s, {how} · {where}")


def table_rows(report: PatchReport) -> tuple[list[list], list[str]]:
    """One row per word: the CLS cosine, this patch's cosine and probability under each method, PACL's share."""
    headers = [*TABLE_HEADERS_FIXED]
    for m in report.cosines:
        headers += [f"{h.method_title(m)} cosine", f"{h.method_title(m)} p"]
    if report.attention_share is not None:
        headers.append("share of PACL's attention a(x,y) on this patch")
    rows = []
    for k, w in enumerate(report.words):
        row = [w, round(float(report.cls_cosines[k]), 4)]
        for m in report.cosines:
            row += [round(float(report.cosines[m][k]), 4), round(float(report.probs[m][k]), 4)]
        if report.attention_share is not None:
            row.append(round(float(report.attention_share[k]), 5))
        rows.append(row)
    return rows, headers


# ---- drawings ------------------------------------------------------------------------------------------------
def picture_shape(shape) -> tuple[int, int]:
    """(H', W') the clickable picture of an (H, W) image is drawn at."""
    return display_size(shape, PICTURE_MAX_SIDE, PICTURE_MIN_SIDE)


def to_image_point(index, image_shape) -> tuple[float, float]:
    """A click on the picture (its pixels, as the browser reports them) -> the point in the image's pixels."""
    (H, W), (Hd, Wd) = image_shape[:2], picture_shape(image_shape)
    try:
        cx, cy = (float(v) for v in index)
    except (TypeError, ValueError):
        raise PACLError("the click did not land on the picture; click inside it") from None
    return (cx + 0.5) * W / Wd, (cy + 0.5) * H / Hd


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) -> (h, w, 3), area when shrinking, linear when enlarging."""
    if image.shape[:2] == tuple(size):
        return image
    shrink = size[0] <= image.shape[0]
    return cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def outline(image: np.ndarray, grid: tuple[int, int], patch: tuple[int, int], lines: bool = True) -> np.ndarray:
    """The patch grid (thin lines, when it has few patches) and one patch outlined, over an image of any size."""
    H, W = image.shape[:2]
    (gh, gw), (row, col) = grid, patch
    pil = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(pil, "RGBA")
    if lines and max(gh, gw) <= 40:
        for i in range(1, gh):
            draw.line([(0, round(i * H / gh)), (W, round(i * H / gh))], fill=(255, 255, 255, 70), width=1)
        for j in range(1, gw):
            draw.line([(round(j * W / gw), 0), (round(j * W / gw), H)], fill=(255, 255, 255, 70), width=1)
    box = [round(col * W / gw), round(row * H / gh), round((col + 1) * W / gw) - 1, round((row + 1) * H / gh) - 1]
    width = max(2, round(min(H, W) / 150))
    draw.rectangle([box[0] - width, box[1] - width, box[2] + width, box[3] + width], outline=(0, 0, 0), width=width)
    draw.rectangle(box, outline=(255, 40, 200), width=width)
    return np.asarray(pil)


def method_colours(methods: list[str]) -> dict[str, tuple]:
    return {m: tuple(int(v) for v in c) for m, c in zip(methods, palette(len(methods) + 2)[2:])}


def _legend(draw: ImageDraw.ImageDraw, entries: list[tuple[str, tuple]], font) -> None:
    """One row of colour swatches and names along the top."""
    x = 4
    for name, colour in entries:
        draw.rectangle([x, 6, x + 12, 18], fill=colour)
        draw.text((x + 16, 5), name, fill=(0, 0, 0), font=font)
        x += 28 + int(font.getlength(name))


def _axis(values: np.ndarray, left: int, span: int) -> tuple[float, float, float]:
    """(x of 0, pixels per unit, largest |value|): symmetric about 0 when some value is negative."""
    top = max(0.05, float(np.abs(values).max()))
    if values.min() < 0:
        return left + span / 2, span / (2 * top), top
    return float(left), span / top, top


def draw_bars(report: PatchReport, width: int = 720) -> np.ndarray:
    """Grouped horizontal bars: per word the CLS cosine (grey), then this patch's cosine under each method; each
    method's own word is starred."""
    methods = list(report.cosines)
    colours = {None: CLS_COLOUR, **method_colours(methods)}
    K, n = len(report.words), len(methods) + 1
    bar = int(np.clip(720 / (K * n), 4, 14))
    gap, legend_h, left, span = max(4, bar), 26, 150, width - 150 - 54
    zero, scale, top = _axis(np.concatenate([report.cls_cosines, *report.cosines.values()]), left, span)
    pil = Image.new("RGB", (width, legend_h + K * (n * bar + gap) + 22), (255, 255, 255))
    draw, font = ImageDraw.Draw(pil), _font(13)
    _legend(draw, [("CLS (whole image)", CLS_COLOUR), *[(h.method_title(m), colours[m]) for m in methods]], font)
    best = report.best_words()
    y = legend_h
    for k, word in enumerate(report.words):
        draw.text((4, y + (n * bar - 13) // 2), word if len(word) <= 18 else word[:17] + "…", fill=(0, 0, 0),
                  font=font)
        rows = [(None, report.cls_cosines[k])] + [(m, report.cosines[m][k]) for m in methods]
        for i, (m, value) in enumerate(rows):
            end, y0 = zero + float(value) * scale, y + i * bar
            draw.rectangle([min(zero, end), y0, max(zero, end), y0 + bar - 2], fill=colours[m])
            if m is not None and best[m] == word:  # the word this method gives the patch
                draw.text((max(zero, end) + 3, y0 + bar // 2 - 7), "★", fill=colours[m], font=_font(12))
        y += n * bar + gap
    draw.line([(zero, legend_h - 2), (zero, y)], fill=(0, 0, 0), width=1)
    draw.text((zero - 4, y + 2), "0", fill=(0, 0, 0), font=font)
    draw.text((left + span - 40, y + 2), f"{top:.2f}", fill=(0, 0, 0), font=font)
    draw.text((left, y + 2), "cosine with each word", fill=(90, 90, 90), font=font)
    return np.asarray(pil)


def colour_bar(height: int, lo: float, hi: float, cmap: str, width: int = 70) -> np.ndarray:
    """A vertical colour bar (bright = hi at the top) labelled with the values its ends stand for."""
    ramp = np.repeat(np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None], 16, axis=1)  # (height, 16)
    pil = Image.new("RGB", (width, height), (255, 255, 255))
    pil.paste(Image.fromarray(apply_colormap(ramp, cmap)), (4, 0))
    draw = ImageDraw.Draw(pil)
    font = _font(12)
    draw.text((23, 0), f"{hi:.3f}", fill=(0, 0, 0), font=font)
    draw.text((23, height // 2 - 7), f"{(lo + hi) / 2:.3f}", fill=(0, 0, 0), font=font)
    draw.text((23, height - 14), f"{lo:.3f}", fill=(0, 0, 0), font=font)
    return np.asarray(pil)


def draw_coherence(rgb: np.ndarray, report: PatchReport) -> np.ndarray:
    """This patch's cosine with every patch, one flat block per patch: the frozen tokens, then each method."""
    small = _resize(rgb, display_size(rgb.shape, TILE_SIDE, 0))
    tiles, titles = [], []
    for key, values in report.coherence.items():
        tile = draw_grid(small, values, cmap="viridis")  # min (dark) to max (bright) of this map
        tiles.append(outline(tile, report.grid, report.patch, lines=False))
        titles.append(FROZEN_TITLE if key == FROZEN else h.method_title(key))
    return contact_sheet(tiles, titles=titles, columns=min(4, len(tiles)))


def draw_word(rgb: np.ndarray, report: PatchReport, maps: dict[str, np.ndarray]) -> np.ndarray:
    """The chosen word's cosine with every patch, per method, large (bilinear between patch centres), each with
    its colour bar: the score range it spans."""
    size = display_size(rgb.shape, WORD_SIDE, WORD_SIDE)
    base = _resize(rgb, size)
    tiles, titles = [], []
    for m, values in maps.items():
        lo, hi = float(values.min()), float(values.max())
        unit = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
        heat = cv2.resize(unit.astype(np.float32), size[::-1], interpolation=cv2.INTER_LINEAR)  # (H', W')
        shown = cv2.addWeighted(base, 0.4, apply_colormap(heat, "turbo"), 0.6, 0.0)
        shown = outline(shown, report.grid, report.patch, lines=False)
        tiles.append(np.concatenate([shown, colour_bar(shown.shape[0], lo, hi, "turbo")], axis=1))
        titles.append(h.method_title(m))
    return contact_sheet(tiles, titles=titles, columns=min(2, len(tiles)))


def draw_view(rgb: np.ndarray, report: PatchReport, maps: dict) -> tuple:
    """(picture, bars, coherence sheet, large word view)."""
    picture = outline(_resize(rgb, picture_shape(rgb.shape)), report.grid, report.patch)
    return picture, draw_bars(report), draw_coherence(rgb, report), draw_word(rgb, report, maps)
