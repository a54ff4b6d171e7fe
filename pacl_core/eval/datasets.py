"""Semantic-segmentation benchmarks in their standard on-disk layouts, with class names and protocol defaults.

    voc21 / voc20          PASCAL VOC 2012 val: VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation}
    context60 / context59  PASCAL Context val, mmsegmentation layout:
                           VOC2010/{JPEGImages, SegmentationClassContext, ImageSets/SegmentationContext}
    cocostuff171           COCO-Stuff 164k val, mmsegmentation layout: {images,annotations}/val2017, *_labelTrainIds.png
    ade150                 ADE20K: ADEChallengeData2016/{images,annotations}/validation

Labels become train ids 0..K-1 with 255 = ignore, exactly as the standard conversions do:
    voc21         0 = background, 1..20 objects, 255 (object boundaries) ignored
    voc20         background and boundaries ignored, objects 1..20 -> 0..19 (mmseg reduce_zero_label)
    context60     0 = background, 1..59 classes (the mmseg converter's 59-class ids)
    context59     background ignored, 1..59 -> 0..58 (reduce_zero_label)
    cocostuff171  labelTrainIds 0..170 as they are, 255 unlabeled
    ade150        0 = "other" ignored, 1..150 -> 0..149 (reduce_zero_label)
For voc21 / context60 class 0 is not a word: background is where the background rule fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pacl_core.errors import PACLError
from pacl_core.metrics import IGNORE_INDEX

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table", "dog",
    "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor",
)

CONTEXT_CLASSES = (  # train ids 1..59 of mmsegmentation's converter: the 59 names in alphabetical order
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building", "bus",
    "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "potted plant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "tv monitor", "wall", "water", "window", "wood",
)

COCO_STUFF_CLASSES = (
    # 80 things
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
    # 91 stuff
    "banner", "blanket", "branch", "bridge", "building", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling",
    "ceiling tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk", "dirt", "door", "fence",
    "marble floor", "floor", "stone floor", "tile floor", "wood floor", "flower", "fog", "food", "fruit", "furniture",
    "grass", "gravel", "ground", "hill", "house", "leaves", "light", "mat", "metal", "mirror", "moss", "mountain",
    "mud", "napkin", "net", "paper", "pavement", "pillow", "plant", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky", "skyscraper", "snow",
    "solid", "stairs", "stone", "straw", "structural", "table", "tent", "textile", "towel", "tree", "vegetable",
    "brick wall", "concrete wall", "wall", "panel wall", "stone wall", "tile wall", "wood wall", "water", "waterdrops",
    "window blind", "window", "wood",
)

ADE_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand",
    "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall",
    "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag",
)


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark: where its files live, how its labels map to train ids, and its evaluation protocol."""

    name: str
    title: str
    classes: tuple[str, ...]  # train id k -> class name; with background, classes[0] == "background"
    background: bool  # class 0 is background (predicted by the background rule, never a word)
    roots: tuple[str, ...]  # sub-folders of --root tried in turn
    image_dir: str  # '{split}' is replaced by the split folder name
    label_dir: str
    label_suffix: str  # appended to the image id
    split_file: str | None  # a list of ids, or None = every image in image_dir
    splits: tuple[tuple[str, str], ...]  # --split value -> folder / list name
    reduce_zero_label: bool  # 0 -> ignore, k -> k - 1
    short_side: int  # protocol defaults (pixels for a 224-px-native backbone such as ViT-B/16)
    window: int = 224
    stride: int = 112
    default_background: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def words(self) -> tuple[str, ...]:
        """The class names given to the segmenter (background excluded)."""
        return self.classes[1:] if self.background else self.classes


_VOC = dict(roots=(".", "VOC2012", "VOCdevkit/VOC2012"), image_dir="JPEGImages", label_dir="SegmentationClass",
            label_suffix=".png", split_file="ImageSets/Segmentation/{split}.txt",
            splits=(("val", "val"), ("train", "train")), short_side=336)
_CONTEXT = dict(roots=(".", "VOC2010", "VOCdevkit/VOC2010"), image_dir="JPEGImages",
                label_dir="SegmentationClassContext", label_suffix=".png",
                split_file="ImageSets/SegmentationContext/{split}.txt", splits=(("val", "val"), ("train", "train")),
                short_side=336)

DATASETS: dict[str, DatasetSpec] = {
    "voc21": DatasetSpec("voc21", "PASCAL VOC 2012 val, 20 classes + background", ("background", *VOC_CLASSES),
                         True, reduce_zero_label=False, default_background="entropy:1.5", **_VOC),
    "voc20": DatasetSpec("voc20", "PASCAL VOC 2012 val, 20 classes (background ignored)", VOC_CLASSES, False,
                         reduce_zero_label=True, **_VOC),
    "context60": DatasetSpec("context60", "PASCAL Context val, 59 classes + background",
                             ("background", *CONTEXT_CLASSES), True, reduce_zero_label=False,
                             default_background="entropy:1.5", **_CONTEXT),
    "context59": DatasetSpec("context59", "PASCAL Context val, 59 classes (background ignored)", CONTEXT_CLASSES,
                             False, reduce_zero_label=True, **_CONTEXT),
    "cocostuff171": DatasetSpec("cocostuff171", "COCO-Stuff 164k val, 171 classes", COCO_STUFF_CLASSES, False,
                                roots=(".", "coco_stuff164k"), image_dir="images/{split}2017",
                                label_dir="annotations/{split}2017", label_suffix="_labelTrainIds.png",
                                split_file=None, splits=(("val", "val"), ("train", "train")),
                                reduce_zero_label=False, short_side=448),
    "ade150": DatasetSpec("ade150", "ADE20K val, 150 classes", ADE_CLASSES, False,
                          roots=(".", "ADEChallengeData2016"), image_dir="images/{split}",
                          label_dir="annotations/{split}", label_suffix=".png", split_file=None,
                          splits=(("val", "validation"), ("train", "training")), reduce_zero_label=True,
                          short_side=336),
}
DATASET_NAMES = (*DATASETS, "toy")

# The dataset keys pacl_core.methods uses for each method's per-benchmark settings.
METHOD_DATASET_KEYS = {"voc21": "voc21", "voc20": "voc20", "context60": "context60", "context59": "context59",
                       "cocostuff171": "coco_stuff", "ade150": "ade20k"}

assert len(VOC_CLASSES) == 20, "VOC has 20 object classes"
assert len(CONTEXT_CLASSES) == 59, "PASCAL Context has 59 classes"
assert len(COCO_STUFF_CLASSES) == 171, "COCO-Stuff has 171 classes"
assert len(ADE_CLASSES) == 150, "ADE20K has 150 classes"
assert all(len({c.casefold() for c in s.classes}) == s.num_classes for s in DATASETS.values()), "duplicate class name"


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise PACLError(f"unknown dataset '{name}'; choose one of {', '.join(DATASET_NAMES)}")
    return DATASETS[name]


def convert_label(raw: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """Raw annotation values (H, W) -> train ids (H, W) uint8 in 0..K-1, 255 = ignore."""
    lab = raw.astype(np.int64)
    if spec.reduce_zero_label:
        lab = np.where(lab == 0, IGNORE_INDEX, lab - 1)
        lab[lab == IGNORE_INDEX - 1] = IGNORE_INDEX
    bad = (lab != IGNORE_INDEX) & ((lab < 0) | (lab >= spec.num_classes))
    if bad.any():
        raise PACLError(f"{spec.name}: label value {int(raw[bad].max())} is outside its {spec.num_classes} classes; "
                        f"are these the standard annotation files ({spec.label_dir}/*{spec.label_suffix})?")
    return lab.astype(np.uint8)


def read_label(path: Path) -> np.ndarray:
    """An indexed / greyscale PNG -> its raw values (H, W); palette PNGs give their indices, never colours."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise PACLError(f"{path}: a label map must be a palette or greyscale PNG, got mode {im.mode}")
            return np.array(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise PACLError(f"{path}: cannot read label map ({type(e).__name__})") from None


def read_image(path: Path) -> np.ndarray:
    """The stored pixels as (H, W, 3) uint8 RGB: no EXIF rotation, no resizing, so labels stay aligned."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise PACLError(f"{path}: image is missing") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise PACLError(f"{path}: cannot decode image ({type(e).__name__})") from None


class SegDataset:
    """A benchmark split on disk: `len(ds)`, `ds.ids`, `ds[i] -> (id, image (H, W, 3) uint8, label (H, W) uint8)`."""

    def __init__(self, name: str, root, split: str = "val", limit: int | None = None):
        self.spec = spec = get_spec(name)
        splits = dict(spec.splits)
        if split not in splits:
            raise PACLError(f"{name} has no split '{split}'; use one of {', '.join(splits)}")
        self.split = splits[split]
        self.root = self._find_root(Path(root))
        self.image_dir = self.root / spec.image_dir.format(split=self.split)
        self.label_dir = self.root / spec.label_dir.format(split=self.split)
        self.ids = self._list_ids()
        if limit is not None:
            self.ids = self.ids[:max(0, limit)]

    def _find_root(self, root: Path) -> Path:
        if not root.is_dir():
            raise PACLError(f"{root}: no such folder")
        for sub in self.spec.roots:
            cand = root / sub
            if (cand / self.spec.image_dir.format(split=self.split)).is_dir():
                return cand
        where = " or ".join(str(root / s / self.spec.image_dir.format(split=self.split)) for s in self.spec.roots)
        raise PACLError(f"{self.spec.name}: no image folder found under {root} (looked for {where})")

    def _list_ids(self) -> list[str]:
        if not self.label_dir.is_dir():
            raise PACLError(f"{self.spec.name}: label folder {self.label_dir} not found")
        if self.spec.split_file:
            path = self.root / self.spec.split_file.format(split=self.split)
            if not path.is_file():
                raise PACLError(f"{self.spec.name}: split list {path} not found")
            ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            ids = sorted(p.stem for p in self.image_dir.glob("*.jpg"))
        if not ids:
            raise PACLError(f"{self.spec.name}: no images listed in {self.root}")
        return ids

    def __len__(self) -> int:
        return len(self.ids)

    def paths(self, i: int) -> tuple[Path, Path]:
        iid = self.ids[i]
        return self.image_dir / f"{iid}.jpg", self.label_dir / f"{iid}{self.spec.label_suffix}"

    def label(self, i: int) -> np.ndarray:
        _, lpath = self.paths(i)
        if not lpath.is_file():
            raise PACLError(f"{self.spec.name}: label map {lpath} is missing")
        return convert_label(read_label(lpath), self.spec)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray, np.ndarray]:
        ipath, _ = self.paths(i)
        image = read_image(ipath)  # (H, W, 3) at full resolution: the label is pixel-aligned with it
        label = self.label(i)
        if image.shape[:2] != label.shape:
            raise PACLError(f"{ipath.name}: image {image.shape[1]}x{image.shape[0]} and label "
                            f"{label.shape[1]}x{label.shape[0]} differ in size")
        return self.ids[i], image, label


def read_class_names(path) -> list[list[str]]:
    """A class-name file: one line per class, each line one name or comma-separated synonyms."""
    path = Path(path)
    if not path.is_file():
        raise PACLError(f"{path}: no such class-name file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [[w.strip() for w in line.split(",") if w.strip()] for line in lines]
