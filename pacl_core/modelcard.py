"""The model card (the repository's README.md) for a PACL head on the Hugging Face Hub.

Built with huggingface_hub's ModelCard / ModelCardData: the YAML header carries the Hub metadata (library,
licence, base model, tags, pipeline, and a model-index of the PACL rows of an evaluation), the text says what
the head is, how it was trained (from the head's JSON), how it evaluated (the metrics.json that `evaluate --out`
writes) and how to use it with this project.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from pacl_core.backbone import backbone_spec, hub_location
from pacl_core.errors import PACLError
from pacl_core.eval.datasets import DATASETS

LIBRARY = "pacl_core"
PROJECT = "PACL explorer"
TAGS = ("pacl", "clip", "open_clip", "open-vocabulary-segmentation", "zero-shot-segmentation")


def base_weights(meta: dict) -> tuple[str, str] | None:
    """(Hub repository, weights file) of the frozen CLIP the head was trained on, when open_clip knows them."""
    name, tag = meta.get("backbone"), meta.get("pretrained")
    if not name or not tag:
        return None
    try:
        loc = hub_location(name, tag)
    except (KeyError, RuntimeError, ValueError):
        return None
    return (loc[0], loc[1][0]) if loc else None


def read_metrics(path) -> list[dict]:
    """The per-method results of a metrics.json written by `evaluate --out` (one dataset, one or more methods)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PACLError(f"{path}: no such metrics file") from None
    except (ValueError, UnicodeDecodeError):
        raise PACLError(f"{path}: not valid JSON") from None
    rows = [dict(r, method=r.get("method", m)) for m, r in (data.items() if isinstance(data, dict) else [])
            if isinstance(r, dict) and isinstance(r.get("miou"), (int, float))]
    if not rows:
        raise PACLError(f"{path}: not a metrics.json written by `python -m pacl_core evaluate --out DIR` "
                        "(no method with an 'miou')")
    return rows


def _pct(v) -> str:
    return "-" if not isinstance(v, (int, float)) else f"{100 * v:.1f}"


def eval_table(rows: list[dict]) -> str:
    """A Markdown table, one row per (dataset, method)."""
    lines = ["| dataset | split | images | method | mIoU | pixel acc. | mean acc. | protocol |",
             "|---|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        p = r.get("protocol") or {}
        proto = ", ".join(f"{k} {p[k]}" for k in ("mode", "image_size", "window", "stride", "background", "templates")
                          if p.get(k) is not None)
        lines.append(f"| {r.get('dataset', '?')} | {r.get('split', '?')} | {r.get('images', '?')} | {r['method']} | "
                     f"{_pct(r['miou'])} | {_pct(r.get('pixel_accuracy'))} | {_pct(r.get('mean_accuracy'))} | "
                     f"{proto} |")
    return "\n".join(lines)


def _eval_results(rows: list[dict]) -> list:

    out = []
    for r in rows:
        if r["method"] != "pacl":
            continue
        spec = DATASETS.get(r.get("dataset"))
        out.append(EvalResult(task_type="image-segmentation", dataset_type=str(r.get("dataset")),
                              dataset_name=spec.title if spec else str(r.get("dataset")), dataset_split=r.get("split"),
                              metric_type="mean_iou", metric_name="mIoU", metric_value=round(100 * r["miou"], 2)))
    return out


def _training_lines(meta: dict) -> list[str]:
    t = meta.get("training") or {}
    if not t:
        return ["No training information was recorded in the head's JSON."]
    names = {"train_data": "training data", "step": "steps done", "total_steps": "steps planned",
             "batch_size": "global batch", "lr": "peak learning rate", "epochs": "epochs"}
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {names.get(k, k)} | `{v}` |" for k, v in t.items()]
    return lines


def card_text(meta: dict, repo: str, license: str = "mit", metrics: list[dict] | None = None) -> str:
    """The full README.md (YAML header + Markdown) for the head `meta` published as `repo`."""
    spec = backbone_spec(meta)
    backbone = f"{meta.get('backbone')} ({meta.get('pretrained') or 'random weights'})"
    tags = [*TAGS, str(meta.get("backbone"))]
    evals = _eval_results(metrics or [])
    base = base_weights(meta)
    data = ModelCardData(library_name=LIBRARY, license=license, base_model=base[0] if base else None, tags=tags,
                         pipeline_tag="image-segmentation", model_name=repo.split("/")[-1] if evals else None,
                         eval_results=evals or None)
    dims = f"{meta.get('in_dim')} -> {meta.get('hidden_dim')} -> {meta.get('out_dim')}"
    body = [
        f"# PACL head for {backbone}",
        "",
        f"The patch-aligned vision embedder e_v of PACL (Mukhoti et al., CVPR 2023), trained with the {PROJECT} "
        f"(`python -m pacl_core train`) on a frozen `{meta.get('backbone')}` with pretrained tag "
        f"`{meta.get('pretrained')}`. Only e_v ({dims}: a linear layer plus a two-layer MLP, residual) was trained; "
        "the text side is CLIP's own. Each patch token is mapped into CLIP's joint space, so every patch can be "
        "compared with any word: open-vocabulary segmentation.",
        "",
        f"Files: `head.safetensors` (the weights) and `head.json` (backbone, dimensions, tau {meta.get('tau')}, "
        f"logit scale {meta.get('logit_scale')}, training settings). No pickle.",
        "",
        "## Training",
        "",
        *_training_lines(meta),
        "",
    ]
    if metrics:
        body += ["## Evaluation", "", "From `python -m pacl_core evaluate --out DIR` (its metrics.json); IoU in %.",
                 "", eval_table(metrics), ""]
    body += [
        "## Use it",
        "",
        "With the PACL explorer checked out and its requirements installed:",
        "",
        "```bash",
        f'python -m pacl_core segment photo.jpg --words "dog, grass, sky" --method pacl --model {spec} '
        f"--head hf-hub:{repo} --out out/",
        f"PACL_HEADS={repo} python app.py   # the demo lists this head among its models",
        "```",
        "",
        "```python",
        "from pacl_core.backbone import load_backbone",
        "from pacl_core.segment import Segmenter",
        "",
        f'segmenter = Segmenter(load_backbone("{spec}"), method="pacl", head="hf-hub:{repo}")',
        "```",
        "",
        "On a Hugging Face Space running the demo, set the variable `PACL_HEADS` to "
        f"`{repo}` and preload the files (and the frozen CLIP's weights) at build time in the Space's README header:",
        "",
        "```yaml",
        "preload_from_hub:",
        f"  - {repo} head.safetensors,head.json",
        *([f"  - {base[0]} {base[1]}"] if base else []),
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)).content
