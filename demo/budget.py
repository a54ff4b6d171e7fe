"""What a Segment request costs before it runs, and the two lanes requests run in.

A request's cost is counted in bare forwards of its model at the model's native size (one "unit"): for every
input geometry the ticked methods share, the shifted passes × the windows × what one pass at that size costs,
plus two blocks' worth per extra method on the shared trunk, plus PAMR's pixel work. What one pass costs at r
times the native number of patches is t(r) = a·r + b·r² (the MLP grows with the patches, attention with their
square), with a and b fitted per model from two timed bare forwards (at twice and three times its native side,
or for a slow model at its native side and twice it) the first time the model is used. Units × the native
forward's seconds is the estimate, times a correction factor learnt from the model's finished requests (actual
over estimated seconds, never below 1), which keeps the estimate honest on a busy machine and for methods
heavier than their share.

Requests estimated at most LIGHT_SECONDS run in the light lane, on the registry's own backbones, as before.
Heavier ones, up to BUDGET_SECONDS, run one at a time in the heavy lane, on a second copy of the model (see
ModelRegistry.heavy_lane), so they never hold the lock light requests wait on; a heavy request that finds the
lane busy is told so at once. Anything estimated above BUDGET_SECONDS is refused with a message that names its
cost and what to lower. Nothing here imports gradio.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from pacl_core.errors import PACLError
from pacl_core.segment import window_boxes

log = logging.getLogger(__name__)

LIGHT_SECONDS = 6.0  # estimated seconds up to which a request runs in the light lane
BUDGET_SECONDS = 30.0  # estimated seconds above which a request is refused (every accepted one ends within 60 s)
EXTRA_BLOCKS = 2.0  # each further method on a shared trunk: its own last block(s) and scoring, in blocks
CALIBRATION_WEIGHT = 0.5  # how much each finished request moves the model's correction factor
PAMR_SECONDS_PER_MEGA = 0.25  # PAMR's seconds per million (word × pixel) scores of the image, on 2 vCPUs
FALLBACK_UNIT = (0.05, 1.0, 0.0)  # (seconds of a native forward, a, b) when the forward cannot be timed


@dataclass
class Cost:
    """A request's estimated cost."""

    units: float  # bare native-size forwards
    seconds: float  # units × the model's native forward, plus PAMR
    passes: int  # trunk passes (windows × shifted views, over all geometries)
    unit_seconds: float

    @property
    def lane(self) -> str:
        return "light" if self.seconds <= LIGHT_SECONDS else "heavy"


_units: dict[str, tuple[float, float, float]] = {}  # model spec -> (native forward seconds, a, b)
_units_lock = threading.Lock()


def _time_forward(backbone, side: int, repeats: int = 2) -> float:
    """Fastest of `repeats` bare forwards (patch tokens) of a side × side image, after one warm-up: the fastest,
    since other work on a shared machine only ever slows a run down."""
    x = backbone.preprocess(np.zeros((side, side, 3), np.uint8), (side, side))
    times = []
    with torch.no_grad():
        backbone.patch_tokens(x)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            backbone.patch_tokens(x)
            times.append(time.perf_counter() - start)
    return min(times)


def fit_unit(r1: float, t1: float, r2: float, t2: float) -> tuple[float, float, float]:
    """Seconds t1, t2 of forwards at r1 < r2 times the native patch count -> (seconds of one native forward, a, b)
    with t(r) = a·r + b·r² native forwards (a + b = 1, both at least 0); t/r = a + b·r is a line through both."""
    b = max(0.0, (t2 / r2 - t1 / r1) / (r2 - r1))  # seconds per r²
    a = max(0.0, t1 / r1 - b * r1)  # seconds per r
    if a + b <= 0:
        return FALLBACK_UNIT
    return a + b, a / (a + b), b / (a + b)


SLOW_FORWARD = 0.5  # seconds: a model this slow at twice its native side is also timed at its native side


def measure_unit(backbone) -> tuple[float, float, float]:
    """(seconds of a native forward, a, b) with t(r) = a·r + b·r² in native forwards, r the patch-count ratio,
    fitted to bare forwards at twice the native side and, for a quick model, three times (its native size is too
    quick to time reliably on a busy machine, and attention's share only shows on larger inputs), for a slow one
    (ViT-B/16) the native side (so the first request does not wait for forwards at 672 px)."""
    try:
        native = backbone.native_size
        t4 = _time_forward(backbone, 2 * native)
        if t4 > SLOW_FORWARD:
            return fit_unit(1, _time_forward(backbone, native), 4, t4)
        return fit_unit(4, t4, 9, _time_forward(backbone, 3 * native))
    except Exception:  # a backbone that cannot be timed this way: a cautious constant, and say so in the log
        log.warning("could not time a bare forward; using %s s", FALLBACK_UNIT[0], exc_info=True)
        return FALLBACK_UNIT


def unit_for(registry, model: str) -> tuple[float, float, float]:
    """The model's measured unit, timed once per backbone (under its lock, so nothing else runs meanwhile)."""
    spec = registry.choice(model).spec
    with _units_lock:
        if spec in _units:
            return _units[spec]
    backbone = registry.backbone(model)
    with registry.lock(model):
        unit = measure_unit(backbone)
    log.info("model %s: a bare forward takes %.3f s; t(r) = %.2f r + %.3f r²", spec, *unit)
    with _units_lock:
        return _units.setdefault(spec, unit)


def _pass_units(side_h: int, side_w: int, backbone, a: float, b: float) -> float:
    """One trunk pass over a side_h × side_w input, in native forwards."""
    r = (side_h * side_w) / float(backbone.native_size ** 2)
    return a * r + b * r * r


def group_units(group, shape: tuple[int, int], a: float, b: float) -> tuple[float, int]:
    """(native forwards, trunk passes) of one geometry group of segmenters on an image of `shape` (H, W): the
    pipeline's own resize rule and windows (pacl_core.segment), so the estimate counts the passes that will run."""
    first = group[0]
    geo, backbone = first.geometry, first.backbone
    views = geo.shifts ** 2
    extra = 1.0 + EXTRA_BLOCKS / max(1, getattr(backbone, "depth", 12)) * (len(group) - 1)
    h, w = geo.input_shape(shape)  # short side geo.size, aspect ratio kept
    if geo.mode == "whole":
        return views * _pass_units(h, w, backbone, a, b) * extra, views
    boxes = window_boxes((h, w), geo.window, geo.stride)
    units = sum(_pass_units(y2 - y1, x2 - x1, backbone, a, b) for y1, y2, x1, x2 in boxes)
    return views * units * extra, views * len(boxes)


_factors: dict[str, float] = {}  # model spec -> actual / estimated seconds of its finished requests (at least 1)


def correction(spec: str) -> float:
    """What this model's estimates are multiplied by: learnt from its finished requests, never below 1."""
    with _units_lock:
        return _factors.get(spec, 1.0)


def observe(spec: str, estimated: float, actual: float) -> None:
    """A request estimated at `estimated` s (corrected) took `actual` s: move the model's correction towards the
    ratio, so a busy machine or a method heavier than its share makes later estimates larger (and lighter
    outcomes bring them back down, never below the measured cost)."""
    if estimated < 0.5:  # too short to say anything (fixed overheads dominate)
        return
    with _units_lock:
        old = _factors.get(spec, 1.0)
        ratio = old * actual / estimated
        _factors[spec] = max(1.0, (1 - CALIBRATION_WEIGHT) * old + CALIBRATION_WEIGHT * ratio)


def estimate(groups, shape: tuple[int, int], n_words: int, unit: tuple[float, float, float],
             factor: float = 1.0) -> Cost:
    """The cost of running these geometry groups (lists of segmenters) on an image of `shape` with n_words;
    factor: the model's correction (`correction`)."""
    seconds_per_unit, a, b = unit
    units, passes, pamr = 0.0, 0, 0
    for group in groups:
        u, p = group_units(group, shape, a, b)
        units, passes = units + u, passes + p
        pamr += sum(1 for s in group if s.refine == "pamr")
    pamr_seconds = pamr * PAMR_SECONDS_PER_MEGA * n_words * shape[0] * shape[1] / 1e6
    return Cost(units, factor * (units * seconds_per_unit + pamr_seconds), passes, seconds_per_unit)


def lower_what(methods: int, size: int | None, shifts: int, refine: str | None) -> str:
    """What to lower, in the order it saves the most."""
    advice = []
    if shifts > 1:
        advice.append("fewer shifted passes per axis")
    if size is not None and size > 224:
        advice.append("a lower input resolution (or 'model default')")
    if refine == "pamr":
        advice.append("no PAMR refinement")
    if methods > 2:
        advice.append("fewer methods")
    return ", ".join(advice) or "a smaller image or fewer words"


def check_budget(cost: Cost, methods: int, size: int | None, shifts: int, refine: str | None) -> None:
    """PACLError naming the cost and what to lower when the estimate is above the budget."""
    if cost.seconds > BUDGET_SECONDS:
        raise PACLError(f"this request would take about {cost.seconds:.0f} s here ({cost.passes} passes through the "
                        f"model, as much work as {cost.units:.0f} plain passes at its native size), over the "
                        f"{BUDGET_SECONDS:.0f} s a request may take on this shared server: choose "
                        f"{lower_what(methods, size, shifts, refine)}")


class HeavyLane:
    """One heavy request at a time; a second is told at once instead of holding a worker while it waits."""

    def __init__(self):
        self._slot = threading.Lock()
        self._until = 0.0  # when the running heavy request is expected to end (time.monotonic)

    def enter(self, cost: Cost) -> None:
        if not self._slot.acquire(blocking=False):
            left = max(1, round(self._until - time.monotonic()))
            raise PACLError(f"another visitor's heavy request is running (about {left} s left); this one "
                            f"(about {cost.seconds:.0f} s) must wait for it: try again then, or choose settings "
                            f"that take under {LIGHT_SECONDS:.0f} s, which run at once")
        self._until = time.monotonic() + cost.seconds

    def leave(self) -> None:
        self._slot.release()

    def busy(self) -> bool:
        return self._slot.locked()


heavy_lane = HeavyLane()
