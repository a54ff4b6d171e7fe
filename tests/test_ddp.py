"""Multi-process training: two CPU processes (torchrun, gloo) on a tiny model give the single-process loss,
gradient norm and final weights on the same global batches, because the loss gathers patch and text embeddings
from every rank (pacl_core.train.distributed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from pacl_core.cli import main
from pacl_core.train.loop import read_log
from tests.helpers import make_pairs, write_csv

pytestmark = pytest.mark.slow  # torchrun: several processes (python -m pytest -m "not slow" skips it)
TINY = "PACL-Tiny-Test:none"


def _args(data, out):
    return ["train", "--train-data", data, "--model", TINY, "--batch-size", "8", "--lr", "2e-3", "--warmup", "1",
            "--max-steps", "3", "--save-every", "3", "--log-every", "1", "--workers", "0", "--no-progress",
            "--out", str(out)]


def test_two_gloo_processes_match_one_process(tmp_path):
    data = str(write_csv(tmp_path / "data", make_pairs(24), missing=False))
    torch.manual_seed(0)
    assert main(_args(data, tmp_path / "single")) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.pacl_cli", *_args(data, tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 processes" in proc.stdout
    single, ddp = read_log(tmp_path / "single"), read_log(tmp_path / "ddp")
    assert len(single) == len(ddp) == 3
    for a, b in zip(single, ddp):  # the same global batch each step: the same loss and gradient
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["lr"] == a["lr"]
    ha = load_file(str(tmp_path / "single" / "head.safetensors"))
    hb = load_file(str(tmp_path / "ddp" / "head.safetensors"))
    for k in ha:
        torch.testing.assert_close(hb[k], ha[k], atol=1e-5, rtol=1e-4)
    meta = (tmp_path / "ddp" / "checkpoints" / "step_00000003.json").read_text()
    assert '"world": 2' in meta  # both ranks' data positions are in the checkpoint


def _evaluate(root, weights, head, out):
    return ["-m", "tests.pacl_cli", "evaluate", "--dataset", "voc21", "--root", str(root), "--model",
            "PACL-Tiny-Test", "--pretrained", str(weights), "--method", "vanilla,pacl", "--head", str(head), "--json",
            "--no-progress", "--out", str(out)]


def test_two_gloo_processes_evaluate_exactly_like_one(tmp_path):
    """5 images over 2 ranks (3 + 2): the summed confusion matrices, hence every metric, are the one-process ones;
    only rank 0 prints and writes."""
    from safetensors.torch import save_file

    from pacl_core.backbone import load_backbone
    from pacl_core.checkpoint import save_head
    from pacl_core.pacl import VisionEmbedder
    from tests.helpers import write_layout

    root, _ = write_layout(tmp_path, "voc", n=5)
    torch.manual_seed(3)  # one set of random weights, saved, so every process has the same model
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in load_backbone(TINY).model.state_dict().items()}, str(weights))
    head = save_head(tmp_path / "head", VisionEmbedder(64, 32), None)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    one = subprocess.run([sys.executable, *_evaluate(root, weights, head, tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *_evaluate(root, weights, head, tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=240)
    assert two.returncode == 0, two.stderr[-2000:]
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for method in ("vanilla", "pacl"):
        assert b[method]["confusion"] == a[method]["confusion"], method
        assert b[method]["miou"] == a[method]["miou"] and b[method]["images"] == 5
        assert sum(map(sum, a[method]["confusion"])) > 0
    assert json.loads(two.stdout) == json.loads(one.stdout)  # one JSON document: rank 0 alone printed
