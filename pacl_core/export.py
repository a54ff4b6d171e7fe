"""Writing a Segmentation to disk: overlay.png, mask.png, one heatmap PNG per word and result.json.

Used by `python -m pacl_core segment` and by the demo's result archive.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from pacl_core.viz import draw_heatmaps, draw_overlay, save_png

PNG_COMPRESSION = 3  # OpenCV's default zlib level


def slug(text: str, index: int) -> str:
    """A file-name-safe label: slug("hot dog!", 3) -> "03-hot-dog"."""
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40]
    return f"{index:02d}-{s}" if s else f"{index:02d}-word"


def write_outputs(folder: Path, seg, info: dict, heatmaps=None, compression: int = PNG_COMPRESSION) -> None:
    """overlay.png, mask.png (0 = background, k = k-th word), heatmap_NN-word.png, result.json.

    heatmaps: already drawn [(word, image)] to write instead of drawing them at full resolution;
    compression: the PNG zlib level (the demo's archive uses 1, fast)."""
    folder.mkdir(parents=True)
    save_png(folder / "overlay.png", draw_overlay(seg), compression)
    save_png(folder / "mask.png", (seg.mask.astype(np.int32) + 1).astype(np.uint8), compression)
    for i, (word, img) in enumerate(heatmaps if heatmaps is not None else draw_heatmaps(seg)):
        save_png(folder / f"heatmap_{slug(word, i + 1)}.png", img, compression)
    rows = seg.summary()
    result = dict(info, words=seg.words, mask_labels=["background"] + seg.words,
                  pixel_share={r["word"]: r["pixel_share"] for r in rows},
                  mean_score={r["word"]: r["mean_score"] for r in rows if r["word"] in seg.words},
                  image_size=[int(seg.image.shape[1]), int(seg.image.shape[0])], method=seg.method,
                  logit_scale=seg.logit_scale, background=list(seg.background) if seg.background else None,
                  notes=seg.notes + info.get("notes", []))
    (folder / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
