"""The toy world: seeded procedural scenes of coloured, textured shapes with captions and per-pixel masks.

Each scene is a textured background with one to three objects, each object a shape (the segmentation
classes), a colour and a texture. Scene `i` of a stream with seed `s` depends only on (s, i), so any
scene can be regenerated alone. Captions describe the scene in words ("a red star above a striped blue
ring on a dotted grey background"); the masks are only ever used for evaluation, never for training.

A fixed set of colour-shape pairs (one per shape and one per colour) never appears in the training split,
neither in images nor captions; the test split draws objects from them often, so open-vocabulary
generalisation to unseen compositions can be measured.

On disk (`write_split`, read back by `ToyDataset`):
    DIR/meta.json            format, split, seed, n, image size, classes, unseen pairs
    DIR/annotations.jsonl    one JSON per scene: file, caption, objects, background
    DIR/images/NNNNNN.png    RGB scene
    DIR/masks/NNNNNN.png     class index per pixel (0 = background, k = CLASSES[k])
    DIR/instances/NNNNNN.png object index per pixel (0 = background, i = objects[i - 1])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from pacl_core.errors import PACLError
from pacl_core.inputs import check_out_folder

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "ring", "moon")
CLASSES = ("background",) + SHAPES  # segmentation classes: index 0 is the background
COLOURS = {  # object colours, bright (RGB in [0, 1])
    "red": (0.90, 0.12, 0.10), "orange": (1.00, 0.55, 0.05), "yellow": (0.95, 0.88, 0.12),
    "green": (0.15, 0.75, 0.20), "blue": (0.15, 0.35, 0.95), "purple": (0.60, 0.20, 0.80),
    "pink": (1.00, 0.50, 0.75), "white": (0.96, 0.96, 0.96),
}
BG_COLOURS = {  # background colours, muted
    "grey": (0.50, 0.50, 0.50), "brown": (0.45, 0.30, 0.17), "navy": (0.10, 0.13, 0.35),
    "olive": (0.42, 0.42, 0.14), "teal": (0.08, 0.42, 0.42), "black": (0.07, 0.07, 0.07),
}
TEXTURES = ("plain", "striped", "dotted", "checkered")
COLOUR_NAMES = tuple(COLOURS)
# One held-out colour per shape and one held-out shape per colour (a Latin-square pick: 3 is prime to 8).
UNSEEN_PAIRS = frozenset((s, COLOUR_NAMES[(3 * i + 2) % len(COLOUR_NAMES)]) for i, s in enumerate(SHAPES))
SPLITS = ("train", "test")
DEFAULT_SIZE = 96
FORMAT = "pacl-toyworld"
SUPERSAMPLE = 4  # shapes are drawn at 4x and area-downsampled, for anti-aliased edges
N_OBJECTS_P = (0.45, 0.40, 0.15)  # probability of 1, 2, 3 objects
UNSEEN_P_TEST = 0.4  # in the test split, the chance an object uses its shape's held-out colour
MAX_TILT = 20.0  # degrees
RADIUS = (0.16, 0.26)  # object radius range, as a fraction of the image size
OBJ_CONTRAST = 0.15  # how far a texture's second colour is from the first, for objects
BG_CONTRAST = 0.1  # and for backgrounds
CAPTION_P = {"colour": 0.3, "texture": 0.2, "background": 0.2}  # chance a caption names each attribute
MENTION_BACKGROUND_P = 0.3  # chance a mention (a one-thing caption, for PACL's stage 2) names the background
OUTLINE = 0.021  # width of a dark outline drawn around every object, as a fraction of the image size (0: none)
OUTLINE_RGB = (0.03, 0.03, 0.03)
# Every shape's surface also carries a fine grating whose orientation is the shape's own (k·22.5° for SHAPES[k]):
# a local cue, as fur or bark is for real classes. Without it the inside of a star and of a square look the
# same, and no patch token can tell which shape it lies in (see "Why the shapes carry a grating" in the README).
SHAPE_GRATING = 0.3  # amplitude, added to every channel (0: none)
SHAPE_GRATING_PERIOD = 3.0  # px at the generated size


@dataclass
class Scene:
    """One generated scene; arrays are (H, W, 3) uint8 / (H, W) uint8."""

    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    caption: str
    objects: list[dict]
    background: dict


# ---- shapes -----------------------------------------------------------------------------------
def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])  # (N, 2)


def _regular(n: int, radius: float, start: float = -np.pi / 2) -> np.ndarray:
    t = start + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)  # (n, 2)


def _star(r: float) -> np.ndarray:
    outer, inner = _regular(5, 1.15 * r), _regular(5, 0.48 * r, -np.pi / 2 + np.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(10, 2)  # (10, 2) alternating tips and notches


def _heart(r: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) - 2.5
    return np.stack([x, y], axis=1) * (r / 15.5)  # (48, 2)


def _cross(r: float) -> np.ndarray:
    a, b = 0.36 * r, 1.05 * r
    return np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a],
                     [-b, -a], [-a, -a]])  # (12, 2)


def _polygon(shape: str, r: float) -> np.ndarray | None:
    polys = {"square": lambda: _regular(4, 1.2 * r, np.pi / 4), "triangle": lambda: _regular(3, 1.25 * r),
             "star": lambda: _star(r), "heart": lambda: _heart(r), "cross": lambda: _cross(r)}
    return polys[shape]() if shape in polys else None


def shape_box(size: int, centre: tuple[float, float], r: float) -> tuple[int, int, int, int]:
    """The pixel box (y0, y1, x0, x1) that holds a shape of radius r at centre, clipped to the image."""
    m = 1.3 * r + 1
    x0, x1 = max(0, int(centre[0] - m)), min(size, int(np.ceil(centre[0] + m)))
    y0, y1 = max(0, int(centre[1] - m)), min(size, int(np.ceil(centre[1] + m)))
    return y0, y1, x0, x1


def shape_alpha(shape: str, box: tuple[int, int, int, int], centre: tuple[float, float], r: float,
                angle: float) -> np.ndarray:
    """Anti-aliased coverage of one shape inside its box (y0, y1, x0, x1): (y1-y0, x1-x0) float32 in [0, 1]."""
    assert shape in SHAPES, f"unknown shape {shape}"
    y0, y1, x0, x1 = box
    S = SUPERSAMPLE
    canvas = np.zeros(((y1 - y0) * S, (x1 - x0) * S), np.uint8)
    cx, cy = (centre[0] - x0) * S, (centre[1] - y0) * S

    def disc(x, y, rad, value):
        cv2.circle(canvas, (int(round(x)), int(round(y))), int(round(rad)), value, -1)

    poly = _polygon(shape, r * S)
    if poly is not None:
        pts = _rotate(poly, angle) + np.array([cx, cy])  # (N, 2)
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 255)
    elif shape == "circle":
        disc(cx, cy, r * S, 255)
    elif shape == "ring":
        disc(cx, cy, r * S, 255)
        disc(cx, cy, 0.55 * r * S, 0)
    else:  # moon: a disc with an offset disc cut out
        disc(cx, cy, r * S, 255)
        disc(cx + 0.5 * r * S * np.cos(angle), cy - 0.5 * r * S * np.sin(angle) - 0.2 * r * S, 0.88 * r * S, 0)
    small = cv2.resize(canvas, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)  # (h, w)
    return small.astype(np.float32) * np.float32(1 / 255)


def outline_alpha(alpha: np.ndarray, width: float) -> np.ndarray:
    """Coverage of a band of about `width` px straddling the edge of a shape's coverage `alpha`: (h, w)."""
    k = max(1, int(round(width)))
    kernel = np.ones((2 * k + 1, 2 * k + 1), np.uint8)
    band = cv2.dilate(alpha, kernel) - cv2.erode(alpha, kernel)  # (h, w) in [0, 1]
    return np.clip(band, 0, 1).astype(np.float32)


# ---- textures ---------------------------------------------------------------------------------
def _second_colour(c: np.ndarray, contrast: float) -> np.ndarray:
    """The texture's other colour: a darker shade, or a lighter one for dark colours."""
    return c * (1 - contrast) if float(c.mean()) > 0.3 else c * (1 - contrast) + 0.6 * contrast


def texture(kind: str, colour, rng: np.random.Generator, h: int, w: int, contrast: float = 0.5) -> np.ndarray:
    """An (h, w, 3) float32 texture made of `colour` and its second colour, with a little pixel noise."""
    assert kind in TEXTURES, f"unknown texture {kind}"
    c = np.asarray(colour, np.float32)
    theta, period = rng.uniform(0, np.pi), rng.uniform(6.0, 10.0)
    phase_u, phase_v = rng.uniform(0, period, 2)
    yy = np.arange(h, dtype=np.float32)[:, None]  # (h, 1)
    xx = np.arange(w, dtype=np.float32)[None, :]  # (1, w)
    u = xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta)) + np.float32(phase_u)  # (h, w)
    v = yy * np.float32(np.cos(theta)) - xx * np.float32(np.sin(theta)) + np.float32(phase_v)  # (h, w)
    if kind == "plain":
        t = None
    elif kind == "striped":
        t = (u % period) < period / 2
    elif kind == "dotted":
        t = (u % period - period / 2) ** 2 + (v % period - period / 2) ** 2 < (0.28 * period) ** 2
    else:  # checkered
        t = (np.floor(u / (period * 0.6)) + np.floor(v / (period * 0.6))) % 2 == 1
    noise = rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(0.025)  # (h, w, 1)
    if t is None:
        return c + noise  # (h, w, 3)
    return c + (_second_colour(c, contrast) - c) * t[..., None].astype(np.float32) + noise  # (h, w, 3)


def shape_grating(shape: str, h: int, w: int) -> np.ndarray:
    """The shape's own fine grating, SHAPE_GRATING · sin(2π u / period) along the shape's direction: (h, w, 1)."""
    theta = SHAPES.index(shape) * np.pi / len(SHAPES)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)  # (h, w) each
    u = xx * np.cos(theta) + yy * np.sin(theta)  # (h, w)
    return (SHAPE_GRATING * np.sin(2 * np.pi * u / SHAPE_GRATING_PERIOD))[..., None].astype(np.float32)


def _jitter(rgb, rng) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-0.06, 0.06, 3).astype(np.float32), 0, 1)


# ---- captions ---------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(obj: dict, rng: np.random.Generator) -> str:
    """'a red striped star', with the colour and texture words each sometimes left out."""
    words = []
    if rng.random() < CAPTION_P["colour"]:
        words.append(obj["colour"])
    if obj["texture"] != "plain" and rng.random() < CAPTION_P["texture"]:
        words.append(obj["texture"])
    words.append(obj["shape"])
    return f"{_article(words[0])} {' '.join(words)}"


def relation(a: dict, b: dict) -> str:
    """Where object a is relative to b, from their centres (image y grows downwards)."""
    dx, dy = a["centre"][0] - b["centre"][0], a["centre"][1] - b["centre"][1]
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "to the left of" if dx < 0 else "to the right of"


def make_caption(objects: list[dict], background: dict, rng: np.random.Generator) -> str:
    """A natural-language caption naming every object's shape."""
    names = [describe(o, rng) for o in objects]
    if len(names) == 1:
        text = names[0]
    elif len(names) == 2 and rng.random() < 0.7:
        text = f"{names[0]} {relation(objects[0], objects[1])} {names[1]}"
    else:
        text = ", ".join(names[:-1]) + f" and {names[-1]}"
    if rng.random() < CAPTION_P["background"]:
        bg = [w for w in (background["texture"] if background["texture"] != "plain" else None,
                          background["colour"] if rng.random() < 0.7 else None) if w]
        text += f" on {_article(bg[0]) if bg else 'a'} {' '.join(bg + ['background'])}"
    return text


def mention(objects: list[dict], background: dict, k: int, rng: np.random.Generator) -> str:
    """A short caption that names one thing in the scene, as most web alt-texts do.

    With chance MENTION_BACKGROUND_P the background ('a dotted navy background', its texture and colour words each
    kept half the time), otherwise object k with its colour and texture ('a red striped star').
    """
    if rng.random() < MENTION_BACKGROUND_P:
        words = [w for w, keep in ((background["texture"], background["texture"] != "plain" and rng.random() < 0.5),
                                   (background["colour"], rng.random() < 0.5)) if keep] + ["background"]
    else:
        obj = objects[k]
        words = [obj["colour"]] + ([obj["texture"]] if obj["texture"] != "plain" else []) + [obj["shape"]]
    return f"{_article(words[0])} {' '.join(words)}"


# ---- scenes -----------------------------------------------------------------------------------
def _pick_colour(shape: str, split: str, u_unseen: float, u_colour: float) -> str:
    """A colour for this shape from two uniform draws; a held-out pair becomes the next colour in train."""
    held = next(c for c in COLOUR_NAMES if (shape, c) in UNSEEN_PAIRS)
    if split == "test" and u_unseen < UNSEEN_P_TEST:
        return held
    i = int(u_colour * len(COLOUR_NAMES))
    return COLOUR_NAMES[i] if COLOUR_NAMES[i] != held else COLOUR_NAMES[(i + 1) % len(COLOUR_NAMES)]


def _place(n: int, size: int, rng) -> list[tuple[tuple[float, float], float]]:
    """Centres and radii of n objects inside the image that overlap little."""
    placed = []
    lo, hi = RADIUS[0] * size, RADIUS[1] * size
    for _ in range(n):
        for _attempt in range(50):
            r = rng.uniform(lo, hi) if not placed else rng.uniform(lo, hi - 0.03 * size)
            c = (rng.uniform(r, size - r), rng.uniform(r, size - r))
            if all(np.hypot(c[0] - p[0], c[1] - p[1]) > 0.95 * (r + q) for p, q in placed):
                placed.append((c, r))
                break
    return placed


def make_scene(seed: int, index: int, split: str = "train", size: int = DEFAULT_SIZE, variant: int = 0) -> Scene:
    """Scene `index` of the stream with this seed and split; a pure function of its arguments.

    Variants of one index share everything (background, layout, colours, textures, caption wording) except
    the shapes: each object has a different shape in each of up to 8 variants, so a batch of variants can
    only be told apart by shape (hard negatives for contrastive training).
    """
    assert split in SPLITS, f"split must be one of {SPLITS}"
    rng = np.random.default_rng([seed, index, SPLITS.index(split)])
    bg = {"colour": str(rng.choice(list(BG_COLOURS))), "texture": str(rng.choice(TEXTURES))}
    image = texture(bg["texture"], _jitter(BG_COLOURS[bg["colour"]], rng), rng, size, size, BG_CONTRAST)
    mask = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.uint8)
    n = 1 + int(rng.choice(len(N_OBJECTS_P), p=N_OBJECTS_P))
    base = rng.choice(len(SHAPES), size=n, replace=False)  # distinct shapes within a scene
    shift = rng.permutation(len(SHAPES))[variant % len(SHAPES)]  # every variant shifts every object's shape
    shapes = (base + shift) % len(SHAPES)
    objects = []
    for k, ((centre, r), s) in enumerate(zip(_place(n, size, rng), shapes)):
        shape = SHAPES[int(s)]
        u_unseen, u_colour = rng.random(2)
        obj = {"shape": shape, "colour": _pick_colour(shape, split, u_unseen, u_colour),
               "texture": str(rng.choice(TEXTURES)), "centre": [round(centre[0], 2), round(centre[1], 2)],
               "radius": round(r, 2)}
        obj["unseen"] = (shape, obj["colour"]) in UNSEEN_PAIRS
        box = shape_box(size, centre, r)
        y0, y1, x0, x1 = box
        angle = np.deg2rad(rng.uniform(-MAX_TILT, MAX_TILT))  # shapes stand upright, slightly tilted
        alpha = shape_alpha(shape, box, centre, r, angle)  # (h, w)
        fill = texture(obj["texture"], _jitter(COLOURS[obj["colour"]], rng), rng, y1 - y0, x1 - x0,
                       OBJ_CONTRAST) + shape_grating(shape, y1 - y0, x1 - x0)  # (h, w, 3)
        crop = image[y0:y1, x0:x1]  # (h, w, 3), a view
        crop += (fill - crop) * alpha[..., None]
        if OUTLINE > 0:
            line = outline_alpha(alpha, OUTLINE * size)  # (h, w)
            crop += (np.float32(OUTLINE_RGB) - crop) * line[..., None]
        inside = alpha > 0.5  # (h, w)
        mask[y0:y1, x0:x1][inside] = CLASSES.index(shape)
        instances[y0:y1, x0:x1][inside] = k + 1
        objects.append(obj)
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Scene(image, mask, instances, make_caption(objects, bg, rng), objects, bg)


# ---- on disk ----------------------------------------------------------------------------------
def write_split(out, split: str = "test", seed: int = 0, n: int = 200, size: int = DEFAULT_SIZE,
                progress: bool = False) -> Path:
    """Generate n scenes into `out` in the layout ToyDataset reads; returns the folder."""
    if split not in SPLITS:
        raise PACLError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    if n < 1:
        raise PACLError("--n must be at least 1")
    out = check_out_folder(out)
    for sub in ("images", "masks", "instances"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(n), desc=f"generating {split}", unit="scene", disable=not progress):
        scene, name = make_scene(seed, i, split, size), f"{i:06d}.png"
        Image.fromarray(scene.image).save(out / "images" / name)
        Image.fromarray(scene.mask).save(out / "masks" / name)
        Image.fromarray(scene.instances).save(out / "instances" / name)
        rows.append({"file": name, "caption": scene.caption, "objects": scene.objects,
                     "background": scene.background})
    (out / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"format": FORMAT, "version": 1, "split": split, "seed": seed, "n": n, "image_size": size,
            "classes": list(CLASSES), "unseen_pairs": sorted(list(p) for p in UNSEEN_PAIRS)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out


class ToyDataset:
    """Reader of a folder written by `write_split`: item i -> dict(image, mask, instances, caption, ...)."""

    def __init__(self, root):
        self.root = Path(root)
        meta_file = self.root / "meta.json"
        if not meta_file.is_file():
            raise PACLError(f"{self.root}: not a toy-world folder (no meta.json); make one with "
                            "`python -m pacl_core toy generate --out DIR`")
        try:
            self.meta = json.loads(meta_file.read_text())
            self.rows = [json.loads(line) for line in (self.root / "annotations.jsonl").read_text().splitlines()
                         if line.strip()]
        except (OSError, ValueError):
            raise PACLError(f"{self.root}: meta.json or annotations.jsonl is missing or unreadable") from None
        if self.meta.get("format") != FORMAT:
            raise PACLError(f"{self.root}: meta.json is not a '{FORMAT}' file")
        self.classes = tuple(self.meta["classes"])

    def __len__(self) -> int:
        return len(self.rows)

    def _png(self, sub: str, name: str) -> np.ndarray:
        path = self.root / sub / name
        if not path.is_file():
            raise PACLError(f"{path}: missing from the toy-world folder")
        with Image.open(path) as im:
            return np.asarray(im).copy()

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        item = dict(row)
        item["image"] = self._png("images", row["file"])  # (H, W, 3) uint8
        item["mask"] = self._png("masks", row["file"])  # (H, W) uint8 class index
        item["instances"] = self._png("instances", row["file"])  # (H, W) uint8 object index
        return item

    @staticmethod
    def unseen_pixels(item: dict) -> np.ndarray:
        """(H, W) bool: pixels of objects whose colour-shape pair is held out of training."""
        flags = np.array([False] + [bool(o["unseen"]) for o in item["objects"]])
        return flags[item["instances"]]


def write_examples(folder, seed: int = 2024, n: int = 4, size: int = DEFAULT_SIZE) -> list[dict]:
    """Save n test-split scenes with 2+ objects as folder/toy_NN.png and list them in folder/examples.json.

    Entries whose file does not start with 'toy_' (e.g. real photos) are kept; each toy entry's words are the
    whole toy vocabulary, so the example shows the model choosing among every class.
    """
    folder = check_out_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index_file = folder / "examples.json"
    entries = json.loads(index_file.read_text()) if index_file.is_file() else []
    entries = [e for e in entries if not str(e.get("file", "")).startswith("toy_")]
    for old in folder.glob("toy_*.png"):
        old.unlink()
    toy, i = [], 0
    while len(toy) < n:
        scene = make_scene(seed, i, "test", size)
        i += 1
        if len(scene.objects) < 2:
            continue
        name = f"toy_{len(toy) + 1:02d}.png"
        Image.fromarray(scene.image).save(folder / name)
        toy.append({"file": name, "words": ", ".join(CLASSES), "caption": scene.caption,
                    "unseen_pairs": [f"{o['colour']} {o['shape']}" for o in scene.objects if o["unseen"]]})
    index_file.write_text(json.dumps(entries + toy, indent=2) + "\n")
    return toy
