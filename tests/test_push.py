"""`push`: the folder it would upload (--dry-run, offline), its model card's Hub metadata and tables, that the
folder works as a Hub head once cached, and one-line errors that write nothing."""

from __future__ import annotations

import json

import huggingface_hub.constants as hf_constants
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from pacl_core.checkpoint import load_head, save_head, save_tensors
from pacl_core.cli import main
from pacl_core.eval.datasets import DATASETS
from pacl_core.eval.evaluate import metrics_from_confusion, write_reports
from pacl_core.modelcard import card_text
from pacl_core.pacl import VisionEmbedder
from tests.helpers import cache_repo

TRAINING = {"step": 1200, "total_steps": 1200, "train_data": "coco/annotations/captions_train2017.json",
            "batch_size": 4096, "lr": 5e-4, "epochs": 10}


@pytest.fixture
def head_path(tiny, tmp_path):
    torch.manual_seed(2)
    head = VisionEmbedder(tiny.width, tiny.embed_dim)
    return save_head(tmp_path / "run" / "head.safetensors", head, tiny, tau=1.0, logit_scale=100.0, training=TRAINING)


@pytest.fixture
def metrics_file(tmp_path):
    """A metrics.json as `evaluate --out` writes it (the real writer), two methods on VOC-21."""
    spec = DATASETS["voc21"]
    rng = np.random.default_rng(0)
    results = {}
    for method in ("vanilla", "pacl"):
        conf = rng.integers(0, 50, (spec.num_classes, spec.num_classes))
        conf[np.diag_indices_from(conf)] += 200 if method == "pacl" else 20
        results[method] = dict(metrics_from_confusion(conf, spec.classes), dataset="voc21", split="val", images=7,
                               method=method, protocol={"mode": "slide", "image_size": 448, "window": 448,
                                                        "stride": 224, "background": "entropy:1.5",
                                                        "templates": "imagenet7"})
    write_reports(results, tmp_path / "eval")
    return tmp_path / "eval" / "metrics.json", results


def test_dry_run_writes_exactly_the_upload_folder(head_path, metrics_file, tmp_path, capsys):
    mpath, results = metrics_file
    out = tmp_path / "upload"
    assert main(["push", str(head_path), "--repo", "my-org/pacl-tiny", "--metrics", str(mpath),
                 "--dry-run", str(out)]) == 0
    assert "nothing was uploaded" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "head.json", "head.safetensors"]
    assert (out / "head.safetensors").read_bytes() == head_path.read_bytes()
    assert json.loads((out / "head.json").read_text()) == json.loads(head_path.with_suffix(".json").read_text())
    card = ModelCard((out / "README.md").read_text())
    data = card.data.to_dict()
    assert data["library_name"] == "pacl_core" and data["license"] == "mit"
    assert data["pipeline_tag"] == "image-segmentation"
    assert {"pacl", "PACL-Tiny-Test"} <= set(data["tags"])
    assert "base_model" not in data  # random weights: no base model to name
    (entry,) = data["model-index"][0]["results"]  # the PACL row only
    assert entry["dataset"]["type"] == "voc21"
    assert entry["metrics"][0]["value"] == round(100 * results["pacl"]["miou"], 2)
    text = card.text
    for method, r in results.items():  # the evaluation table, one row per method, from the metrics file
        row = f"| voc21 | val | 7 | {method} | {100 * r['miou']:.1f} | {100 * r['pixel_accuracy']:.1f} |"
        assert row in text, row
    assert "| steps done | `1200` |" in text and "captions_train2017.json" in text
    assert "--head hf-hub:my-org/pacl-tiny" in text and "PACL_HEADS=my-org/pacl-tiny" in text
    assert "- my-org/pacl-tiny head.safetensors,head.json" in text


def test_the_uploaded_folder_is_a_hub_head(head_path, tiny, tmp_path, monkeypatch):
    out = tmp_path / "upload"
    assert main(["push", str(head_path), "--repo", "my-org/pacl-tiny", "--dry-run", str(out)]) == 0
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    cache_repo(cache, "my-org/pacl-tiny", {p.name: p for p in out.iterdir()})
    a, b = load_head("hf-hub:my-org/pacl-tiny", tiny), load_head(head_path, tiny)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_a_vit_b16_card_names_its_base_model_and_preloads_it():
    meta = {"format": "pacl-head", "backbone": "ViT-B-16-quickgelu", "pretrained": "openai", "in_dim": 768,
            "out_dim": 512, "hidden_dim": 512, "tau": 1.0, "logit_scale": 100.0, "training": TRAINING}
    card = ModelCard(card_text(meta, "org/pacl-vit-b-16"))
    assert card.data.base_model == "timm/vit_base_patch16_clip_224.openai"
    assert "- timm/vit_base_patch16_clip_224.openai open_clip_model.safetensors" in card.text
    assert "--model vit-b-16 --head hf-hub:org/pacl-vit-b-16" in card.text


def _state_file(tmp_path):
    return save_tensors(tmp_path / "state.safetensors", {"x": torch.zeros(2)}, {"format": "pacl-train-state"})


@pytest.mark.parametrize("case, message", [
    ("not_a_head", "is a 'pacl-train-state' checkpoint, expected 'pacl-head'"),
    ("missing", "no such checkpoint file"),
    ("bad_repo", "'not a repo' is not a Hub repository name"),
    ("bad_metrics", "not a metrics.json written by"),
    ("full_dir", "--dry-run needs a new or empty folder"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, message, head_path, tmp_path, capsys):
    head, repo, extra = str(head_path), "org/repo", []
    out = tmp_path / "upload"
    if case == "not_a_head":
        head = str(_state_file(tmp_path))
    elif case == "missing":
        head = str(tmp_path / "nothing.safetensors")
    elif case == "bad_repo":
        repo = "not a repo"
    elif case == "bad_metrics":
        (tmp_path / "m.json").write_text(json.dumps({"classes": ["a"], "n_images": 3}))
        extra = ["--metrics", str(tmp_path / "m.json")]
    elif case == "full_dir":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    assert main(["push", head, "--repo", repo, *extra, "--dry-run", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert (not out.exists()) if case != "full_dir" else [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_real_push_offline_is_one_line_and_never_shows_a_token(head_path, monkeypatch, capsys):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecretsecret")
    assert main(["push", str(head_path), "--repo", "org/repo"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not upload to org/repo"), err
    assert "hf_secret" not in captured.err + captured.out
