"""Image-caption training data in the formats people already have, read in a deterministic, resumable order.

Sources (each yields records in an order fixed by (seed, epoch, rank, world) and a JSON cursor to restart at):
    TarShards   webdataset tar shards as img2dataset writes them (KEY.jpg + KEY.txt ...), read with tarfile
    CsvCaptions a CSV/TSV with an image-path column and a caption column (open_clip's filepath/title)
    CocoCaptions COCO captions JSON (captions_train2017.json) + its image folder; one caption per image per epoch

`CaptionLoader` turns a source into batches of exactly L decoded, centre-cropped uint8 images and tokenised
captions. Broken images, missing files and empty captions are skipped and counted, never fatal. Each batch
carries the loader state *after* it, so a checkpoint taken after a step resumes at exactly the next sample.
With a token cache (pacl_core.train.cache), images whose tokens are cached are not decoded at all.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import queue
import re
import tarfile
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pacl_core.errors import PACLError
from pacl_core.inputs import pil_to_rgb

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
CAPTION_EXTS = ("txt",)
FORMATS = ("auto", "wds", "csv", "coco")
SHUFFLE_BLOCK = 1000  # tar records are shuffled within blocks of this many (a resumable shuffle buffer)
# The one image transform of training: deterministic, so a token cache made in one epoch is valid for the next.
TRANSFORM = "decode-rgb, short side to S (bicubic), centre crop S x S"
CACHED = np.zeros((0, 0, 3), np.uint8)  # stands in for a decoded image whose tokens are cached


@dataclass
class Record:
    """One raw sample: image bytes (tar) or a file path (CSV, COCO), and its caption ('' if none)."""

    key: str
    image: bytes | str | None
    caption: str
    error: str | None = None  # set when the record could not even be read (e.g. a truncated shard)
    alternatives: tuple[str, ...] = ()  # every caption of this image (COCO), for a token cache to embed at once


def epoch_rng(seed: int, epoch: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), *map(int, more)])


# ---- sources with random access: CSV/TSV and COCO ---------------------------------------------------


class StringTable:
    """Many strings stored as one UTF-8 buffer + offsets (compact for tens of millions of rows)."""

    def __init__(self, strings):
        chunks = [s.encode("utf-8") for s in strings]
        self.offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
        np.cumsum([len(c) for c in chunks], out=self.offsets[1:])
        self.data = b"".join(chunks)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i]:self.offsets[i + 1]].decode("utf-8")


class IndexedSource:
    """A source with N samples by index. Each epoch is a seeded permutation; every global batch of G = W·L
    positions is cut into W contiguous slices of L, one per rank, so the global batches are the same for any
    number of processes. The cursor is how many of this rank's positions were consumed."""

    name = "indexed"

    def __init__(self, seed: int = 0, limit: int | None = None):
        self.seed, self.limit = seed, limit

    def __len__(self) -> int:
        n = self._size()
        return min(n, self.limit) if self.limit else n

    def _size(self) -> int:
        raise NotImplementedError

    def record(self, index: int, epoch: int) -> Record:
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        """Hook for per-epoch choices (COCO's caption pick)."""

    def records(self, epoch: int, rank: int, world: int, local_batch: int, cursor=None) -> Iterator[tuple]:
        n = len(self)
        order = epoch_rng(self.seed, epoch).permutation(n)  # (N,)
        self.start_epoch(epoch)
        c = int(cursor or 0)
        G, L = world * local_batch, local_batch
        while True:
            b, k = divmod(c, L)
            j = b * G + rank * L + k  # this rank's c-th position in the epoch's order
            if j >= n:
                return
            c += 1
            yield self.record(int(order[j]), epoch), c


def _resolve(path: str, root: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else root / p)


class CsvCaptions(IndexedSource):
    """A CSV/TSV file with a header row; image paths are absolute or relative to `root` (default: the CSV's folder)."""

    name = "csv"

    def __init__(self, path, img_key: str = "filepath", caption_key: str = "title", sep: str | None = None,
                 root=None, seed: int = 0, limit: int | None = None):
        super().__init__(seed, limit)
        path = Path(path)
        if not path.is_file():
            raise PACLError(f"{path}: no such CSV/TSV file")
        sep = sep or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
        self.root = Path(root) if root else path.parent
        paths, captions = [], []
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f, delimiter=sep)
            header = next(reader, None) or []
            for key in (img_key, caption_key):
                if key not in header:
                    raise PACLError(f"{path}: no column '{key}' (columns: {', '.join(header) or 'none'}); "
                                    "set --csv-img-key / --csv-caption-key / --csv-separator")
            ii, ci = header.index(img_key), header.index(caption_key)
            for row in reader:
                if limit and len(paths) >= limit:
                    break
                paths.append(row[ii] if ii < len(row) else "")
                captions.append(row[ci] if ci < len(row) else "")
        self.paths, self.captions = StringTable(paths), StringTable(captions)

    def _size(self) -> int:
        return len(self.paths)

    def record(self, index: int, epoch: int) -> Record:
        p = self.paths[index]
        caption = " ".join(self.captions[index].split())
        return Record(key=p, image=_resolve(p, self.root) if p else None, caption=caption)


class CocoCaptions(IndexedSource):
    """COCO captions JSON + image folder. One sample per image; each epoch picks one of its captions at random."""

    name = "coco"

    def __init__(self, path, root=None, seed: int = 0, limit: int | None = None):
        super().__init__(seed, limit)
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            images, annotations = data["images"], data["annotations"]
        except FileNotFoundError:
            raise PACLError(f"{path}: no such COCO captions file") from None
        except (ValueError, KeyError, TypeError):
            raise PACLError(f"{path}: not a COCO captions JSON (needs 'images' and 'annotations')") from None
        self.root = Path(root) if root else self.default_root(path)
        if not self.root.is_dir():
            raise PACLError(f"{self.root}: image folder for {path.name} not found; pass --images DIR")
        images = sorted(images, key=lambda im: im["id"])
        if limit:
            images = images[:limit]
        self.index = {im["id"]: i for i, im in enumerate(images)}
        self.files = StringTable(im["file_name"] for im in images)
        by_image: list[list[str]] = [[] for _ in images]
        for a in sorted(annotations, key=lambda a: a.get("id", 0)):
            i = self.index.get(a.get("image_id"))
            text = " ".join(str(a.get("caption", "")).split())
            if i is not None and text:
                by_image[i].append(text)
        self.count = np.array([len(c) for c in by_image], dtype=np.int64)  # (N,)
        self.first = np.concatenate([[0], np.cumsum(self.count)[:-1]]).astype(np.int64)  # (N,)
        self.captions = StringTable(c for caps in by_image for c in caps)
        self.pick = np.zeros(len(images), dtype=np.int64)

    @staticmethod
    def default_root(path: Path) -> Path:
        """annotations/captions_train2017.json -> ../train2017 (the layout COCO is unpacked in)."""
        split = path.stem.split("_")[-1]
        return path.parent.parent / split if path.parent.name == "annotations" else path.parent / split

    def _size(self) -> int:
        return len(self.files)

    def start_epoch(self, epoch: int) -> None:
        self.pick = epoch_rng(self.seed, epoch, 1).integers(0, 1 << 30, len(self.files))  # (N,)

    def record(self, index: int, epoch: int) -> Record:
        n = int(self.count[index])
        first = int(self.first[index])
        caption = self.captions[first + int(self.pick[index] % n)] if n else ""
        return Record(key=self.files[index], image=str(self.root / self.files[index]), caption=caption,
                      alternatives=tuple(self.captions[first + j] for j in range(n)))


# ---- webdataset tar shards ----------------------------------------------------------------------------


def expand_braces(spec: str) -> list[str]:
    """'a/{000..003}.tar' -> a/000.tar ... a/003.tar (zero-padded ranges and {x,y} lists, as webdataset)."""
    m = re.search(r"\{([^{}]*)\}", spec)
    if not m:
        return [spec]
    head, tail, body = spec[:m.start()], spec[m.end():], m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        items = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    return [s for item in items for s in expand_braces(head + item + tail)]


def list_shards(spec: str) -> list[str]:
    """A .tar, a folder of .tar, a glob, or brace notation; several joined with '::'. Sorted, de-duplicated."""
    shards: list[str] = []
    for part in spec.split("::"):
        for item in expand_braces(part):
            if os.path.isdir(item):
                shards += sorted(glob.glob(os.path.join(item, "*.tar")))
            elif any(ch in item for ch in "*?["):
                shards += sorted(glob.glob(item))
            elif os.path.isfile(item):
                shards.append(item)
            else:
                raise PACLError(f"{item}: no such tar shard")
    shards = list(dict.fromkeys(shards))
    if not shards:
        raise PACLError(f"no .tar shards found for '{spec}'")
    return shards


def _split_name(name: str) -> tuple[str, str] | None:
    """'dir/000123.jpg' -> ('dir/000123', 'jpg'); webdataset keys end at the first dot of the file name."""
    folder, base = os.path.split(name)
    if "." not in base or base.startswith("."):
        return None
    stem, ext = base.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _tar_groups(tf: tarfile.TarFile) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """Consecutive members with the same key, as (key, {ext: member}); data is not read here."""
    key, group = None, {}
    for member in tf:
        parts = _split_name(member.name) if member.isfile() else None
        if parts is None:
            continue
        if parts[0] != key and group:
            yield key, group
            group = {}
        key = parts[0]
        group[parts[1]] = member
    if group:
        yield key, group


def _read_group(tf: tarfile.TarFile, key: str, group: dict) -> Record:
    """Read one sample's image bytes and caption; a sample without one of them is an error record."""
    img = next((group[e] for e in IMAGE_EXTS if e in group), None)
    txt = next((group[e] for e in CAPTION_EXTS if e in group), None)
    if img is None or txt is None:
        return Record(key=key, image=None, caption="", error="missing_image" if img is None else "missing_caption")
    caption = tf.extractfile(txt).read().decode("utf-8", errors="replace")
    return Record(key=key, image=tf.extractfile(img).read(), caption=" ".join(caption.split()))


def count_tar_samples(path: str) -> int:
    """Samples in one shard: img2dataset's KEY_stats.json 'successes' if present, else a scan of the headers."""
    stats = Path(path).with_name(Path(path).stem + "_stats.json")
    if stats.is_file():
        try:
            return int(json.loads(stats.read_text())["successes"])
        except (ValueError, KeyError, TypeError):
            pass
    try:
        with tarfile.open(path, "r:*") as tf:
            return sum(1 for _, g in _tar_groups(tf) if any(e in g for e in IMAGE_EXTS))
    except (tarfile.TarError, OSError, EOFError):
        return 0


class TarShards:
    """webdataset tar shards. Per epoch the shard order is a seeded permutation and rank r reads every W-th shard;
    within a shard, records are shuffled in blocks of `block`. Cursor = [shard ordinal, records consumed in it]."""

    name = "wds"

    def __init__(self, spec: str, seed: int = 0, limit: int | None = None, num_samples: int | None = None,
                 block: int = SHUFFLE_BLOCK):
        self.shards = list_shards(spec)
        self.seed, self.limit, self.block = seed, limit, block
        self._num = num_samples

    def __len__(self) -> int:
        if self._num is None:
            self._num = sum(count_tar_samples(s) for s in self.shards)
        return min(self._num, self.limit) if self.limit else self._num

    def rank_shards(self, epoch: int, rank: int, world: int) -> list[str]:
        if len(self.shards) < world:
            raise PACLError(f"{len(self.shards)} tar shards cannot feed {world} processes; need one shard per process")
        order = epoch_rng(self.seed, epoch).permutation(len(self.shards))
        return [self.shards[i] for i in order[rank::world]]

    def records(self, epoch: int, rank: int, world: int, local_batch: int, cursor=None) -> Iterator[tuple]:
        """(record, cursor after it); cursor = [shard ordinal, records consumed in that shard, records this epoch]."""
        shards = self.rank_shards(epoch, rank, world)
        ordinal, done, used = cursor if cursor else (0, 0, 0)
        budget = -(-self.limit // world) if self.limit else None  # raw records per rank per epoch
        for o in range(int(ordinal), len(shards)):
            start = int(done) if o == ordinal else 0
            for record, consumed in self._shard_records(shards[o], epoch, start):
                if budget is not None and used >= budget:
                    return
                used += 1
                yield record, ([o, consumed, used] if consumed is not None else [o + 1, 0, used])

    def _shard_records(self, path: str, epoch: int, start: int) -> Iterator[tuple[Record, int | None]]:
        """Records of one shard from position `start` of its block-shuffled order, each with the count consumed
        after it; a shard that turns out truncated or corrupt ends with one error record (count None)."""
        skip_blocks, offset = divmod(start, self.block)
        try:
            with tarfile.open(path, "r:*") as tf:
                groups = _tar_groups(tf)
                for _ in range(skip_blocks * self.block):  # headers only, no data read
                    if next(groups, None) is None:
                        return
                b = skip_blocks
                while True:
                    block = [(k, g) for _, (k, g) in zip(range(self.block), groups)]
                    if not block:
                        return
                    perm = epoch_rng(self.seed, epoch, b, hash_path(path)).permutation(len(block))
                    for i in range(offset, len(block)):
                        key, group = block[perm[i]]
                        yield _read_group(tf, key, group), b * self.block + i + 1
                    b, offset = b + 1, 0
        except (tarfile.TarError, OSError, EOFError):
            yield Record(key=path, image=None, caption="", error="broken_shard"), None  # the rest of it is lost


def hash_path(path: str) -> int:
    """A stable (not per-process-salted) 31-bit number for a shard name, to seed its block shuffles."""
    h = 0
    for ch in os.path.basename(path).encode():
        h = (h * 131 + ch) % 2147483647
    return h


# ---- choosing a source --------------------------------------------------------------------------------


def detect_format(spec: str) -> str:
    low = spec.lower()
    if low.endswith((".csv", ".tsv", ".tab")):
        return "csv"
    if low.endswith(".json"):
        return "coco"
    if low.endswith(".tar") or "{" in spec or "::" in spec or os.path.isdir(spec) or any(c in spec for c in "*?["):
        return "wds"
    raise PACLError(f"cannot tell the format of '{spec}'; pass --data-format wds, csv or coco")


def open_source(spec: str, fmt: str = "auto", images=None, seed: int = 0, limit: int | None = None,
                csv_img_key: str = "filepath", csv_caption_key: str = "title", csv_sep: str | None = None,
                num_samples: int | None = None):
    """Build the right source for --train-data SPEC."""
    fmt = detect_format(spec) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise PACLError(f"unknown data format '{fmt}'; use one of {', '.join(FORMATS)}")
    if fmt == "wds":
        return TarShards(spec, seed=seed, limit=limit, num_samples=num_samples)
    if fmt == "csv":
        return CsvCaptions(spec, csv_img_key, csv_caption_key, csv_sep, root=images, seed=seed, limit=limit)
    return CocoCaptions(spec, root=images, seed=seed, limit=limit)


# ---- decoding and batching ----------------------------------------------------------------------------


def decode_image(data: bytes | str | None, size: int) -> np.ndarray | None:
    """Bytes or a path -> (size, size, 3) uint8: short side resized to `size` (bicubic), centre crop. None if broken."""
    if data is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (size, size))  # decode at a reduced scale, still >= size
                arr = pil_to_rgb(im, max_side=8 * size)  # (H, W, 3)
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError, PACLError):
        return None
    return center_crop(arr, size)


def center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: short side to `size`, then the central square."""
    h, w = arr.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    img = Image.fromarray(arr).resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


@dataclass
class Batch:
    """L samples: images (M, S, S, 3) uint8 of the M decoded ones (all L without a token cache), tokens
    (L, context) long, captions, and the loader state after it; keys, which were decoded, every caption per image."""

    images: torch.Tensor
    tokens: torch.Tensor
    captions: list[str]
    state: dict = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    decoded: list[bool] = field(default_factory=list)
    alternatives: list[tuple[str, ...]] = field(default_factory=list)


def _skip_reason(record: Record, image: np.ndarray | None) -> str | None:
    if record.error:
        return record.error
    if not record.caption:
        return "empty_caption"
    if record.image is None:
        return "missing_image"
    if image is None:
        return "unreadable_image"
    return None


def _decode_unless_cached(record: Record, size: int, is_cached) -> np.ndarray | None:
    """The decoded image, CACHED when its tokens are cached (no decode), None when it cannot be used."""
    if not record.caption or record.error:
        return None
    if is_cached is not None and is_cached(record.key):
        return CACHED
    return decode_image(record.image, size)


class CaptionLoader:
    """Batches of exactly `local_batch` usable samples for this rank, forever (epochs roll over).

    state = {"epoch", "cursor", "world", "skipped": {reason: count}, "samples"}: resume by passing it back.
    Decoding runs on `workers` threads (PIL releases the GIL); a background thread keeps `prefetch` batches ready.
    """

    def __init__(self, source, local_batch: int, image_size: int, tokenizer, rank: int = 0, world: int = 1,
                 workers: int = 4, prefetch: int = 2, state: dict | None = None, is_cached=None):
        assert local_batch > 0, "local batch size must be positive"
        self.source, self.L, self.size, self.tokenizer = source, local_batch, image_size, tokenizer
        self.is_cached = is_cached  # key -> bool: a token cache holds this image (then it is not decoded)
        self.rank, self.world, self.workers, self.prefetch = rank, world, workers, prefetch
        state = dict(state or {})
        if state and state.get("world", world) != world:
            raise PACLError(f"the checkpoint was written by {state['world']} processes; resume with the same number "
                            f"(got {world}) to continue at the same data position")
        self.state = {"epoch": int(state.get("epoch", 0)), "cursor": state.get("cursor"), "world": world,
                      "skipped": dict(state.get("skipped", {})), "samples": int(state.get("samples", 0))}

    def _records(self) -> Iterator[tuple[Record, dict]]:
        """(record, position after it) forever, epoch after epoch; raises if a whole epoch has no record."""
        epoch, cursor = self.state["epoch"], self.state["cursor"]
        while True:
            fresh, empty = cursor is None, True
            for record, after in self.source.records(epoch, self.rank, self.world, self.L, cursor):
                empty = False
                yield record, {"epoch": epoch, "cursor": after}
            if fresh and empty:
                raise PACLError(f"{self.source.name} data: no samples for rank {self.rank} of {self.world} in an epoch")
            epoch, cursor = epoch + 1, None

    def _check_epoch(self, epoch: int) -> None:
        """Called on every record: fails once a whole epoch, read from its start, had no usable sample."""
        if epoch != self._epoch:
            if self._fresh and self._usable == 0:
                raise PACLError(f"{self.source.name} data: no usable image-caption pair for rank {self.rank} in a "
                                f"whole epoch (skipped: {self.state['skipped'] or 'none'})")
            self._epoch, self._fresh, self._usable = epoch, True, 0

    def batches(self) -> Iterator[Batch]:
        """The batch generator, without the prefetch thread."""
        records = self._records()
        skipped = Counter(self.state["skipped"])
        samples, pos = self.state["samples"], {"epoch": self.state["epoch"], "cursor": self.state["cursor"]}
        self._epoch, self._fresh, self._usable = self.state["epoch"], self.state["cursor"] is None, 0
        pool = ThreadPoolExecutor(self.workers) if self.workers > 0 else None
        try:
            while True:
                images, captions, keys, alternatives = [], [], [], []
                while len(captions) < self.L:
                    chunk = [next(records) for _ in range(self.L - len(captions))]
                    recs = [r for r, _ in chunk]
                    n = len(recs)
                    arrays = list(pool.map(_decode_unless_cached, recs, [self.size] * n, [self.is_cached] * n)) \
                        if pool else [_decode_unless_cached(r, self.size, self.is_cached) for r in recs]
                    for (r, p), a in zip(chunk, arrays):
                        self._check_epoch(p["epoch"])
                        reason = _skip_reason(r, a)
                        if reason:
                            skipped[reason] += 1
                            self.state["skipped"] = dict(skipped)
                        else:
                            self._usable += 1
                            images.append(a)
                            captions.append(r.caption)
                            keys.append(r.key)
                            alternatives.append(r.alternatives or (r.caption,))
                    pos = chunk[-1][1]
                samples += self.L
                state = {**pos, "world": self.world, "skipped": dict(skipped), "samples": samples}
                decoded = [a is not CACHED for a in images]
                pixels = [a for a in images if a is not CACHED]
                pixels = np.stack(pixels) if pixels else np.zeros((0, self.size, self.size, 3), np.uint8)
                yield Batch(images=torch.from_numpy(pixels), tokens=self.tokenizer(captions), captions=captions,
                            state=state, keys=keys, decoded=decoded, alternatives=alternatives)
        finally:
            if pool:
                pool.shutdown(wait=False, cancel_futures=True)

    def __iter__(self) -> Iterator[Batch]:
        if self.prefetch <= 0:
            yield from self.batches()
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for b in self.batches():
                    while not stop.is_set():
                        try:
                            q.put(b, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as e:  # handed to the consumer, raised there
                q.put(e)

        thread = threading.Thread(target=produce, daemon=True, name="pacl-data")
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
