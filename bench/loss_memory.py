"""Peak memory and time of loss + backward: chunked PACLLoss vs a naive all-pairs implementation (CPU, fp32).

Each measurement runs in a fresh process so peaks do not mix; the naive loss is written here, on purpose the
straightforward way: it builds the (B, B, T) attention and the (B, B, D) attended embeddings at once.

    python bench/loss_memory.py                 # B=512, T=196, D=512, plus growth over B = 128..1024
    python bench/loss_memory.py --sizes 128 256 # other batch sizes for the growth table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._util import median_time, peak_rss_mb, reset_peak_rss  # noqa: E402
from pacl_core.loss import PACLLoss  # noqa: E402


def naive_pacl_loss(patch_emb, text_emb, logit_scale, tau=1.0):
    """All pairs at once: (B, B, T) attention and (B, B, D) attended embeddings."""
    p = F.normalize(patch_emb, dim=-1)  # (B, T, D)
    t = F.normalize(text_emb, dim=-1)  # (B, D)
    a = torch.softmax(torch.einsum("btd,nd->bnt", p, t) / tau, dim=-1)  # (B, B, T)
    v_hat = torch.einsum("bnt,btd->bnd", a, patch_emb)  # (B, B, D)
    logits = logit_scale * F.cosine_similarity(v_hat, t[None], dim=-1)  # (B, B)
    labels = torch.arange(len(t))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def worker(kind: str, B: int, T: int, D: int, repeats: int) -> dict:
    torch.manual_seed(0)
    patch = torch.randn(B, T, D, requires_grad=True)
    text = torch.randn(B, D, requires_grad=True)
    loss_fn = naive_pacl_loss if kind == "naive" else PACLLoss()

    def step():
        patch.grad = text.grad = None
        loss = loss_fn(patch, text, 10.0)
        loss.backward()
        return loss

    if repeats:  # a timing run
        return {"seconds": median_time(step, repeats=repeats, warmup=1)}
    step()  # warm-up: thread pools and allocator caches
    patch.grad = text.grad = None
    base = reset_peak_rss()
    loss = step()
    return {"peak_mb": peak_rss_mb() - base, "loss": float(loss),  # extra memory of one loss + backward
            "grad_sum": float(patch.grad.double().abs().sum())}


def measure(kind: str, B: int, T: int, D: int, repeats: int = 0) -> dict:
    """repeats=0: peak memory, in a process whose glibc returns freed tensors to the OS at once (a fixed mmap
    threshold), so RSS tracks live tensors; repeats>0: median time, in a process with the usual allocator."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if repeats == 0 else None
    out = subprocess.run([sys.executable, __file__, "--worker", kind, "--B", str(B), "--T", str(T), "--D", str(D),
                          "--repeats", str(repeats)], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=("naive", "chunked"))
    ap.add_argument("--B", type=int, default=512)
    ap.add_argument("--T", type=int, default=196)
    ap.add_argument("--D", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="*", default=[128, 256, 512, 1024])
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.B, args.T, args.D, args.repeats)))
        return
    print(f"PACL loss + backward, T={args.T}, D={args.D}, float32 on CPU ({torch.get_num_threads()} threads)")
    B, T, D = args.B, args.T, args.D
    naive, chunked = measure("naive", B, T, D), measure("chunked", B, T, D)
    tn, tc = measure("naive", B, T, D, args.repeats)["seconds"], measure("chunked", B, T, D, args.repeats)["seconds"]
    print(f"B={B}: peak memory naive {naive['peak_mb']} MB, chunked {chunked['peak_mb']} MB "
          f"-> {naive['peak_mb'] / max(chunked['peak_mb'], 1):.1f}x lower")
    print(f"B={B}: time (median of {args.repeats}) naive {tn:.2f} s, chunked {tc:.2f} s "
          f"-> chunked/naive {tc / tn:.2f}x")
    diff = abs(naive["loss"] - chunked["loss"])
    print(f"  loss naive {naive['loss']:.6f}, chunked {chunked['loss']:.6f}, |diff| {diff:.1e}"
          f"; sum |grad| naive {naive['grad_sum']:.4f}, chunked {chunked['grad_sum']:.4f}")
    print("peak memory (MB) as B grows:")
    print("    B | naive | chunked")
    for b in args.sizes:
        print(f"{b:5d} | {measure('naive', b, T, D)['peak_mb']:>5} | {measure('chunked', b, T, D)['peak_mb']:>7}")


if __name__ == "__main__":
    main()
