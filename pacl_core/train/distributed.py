"""Multi-process training (torchrun / DDP-style): process-group setup and the PACL loss over the global batch.

Every process holds L image-caption pairs of a global batch of G = L·W. PACL's compatibility φ̂(x_i, y_j) is
text-conditioned attention over the patches of image i, so (unlike CLIP, where pooled image vectors suffice)
the patch embeddings have to be gathered as well as the text embeddings. Rank r then computes the rows of
the G x G logit matrix that belong to its L images (local patches vs all texts) and the columns of its L
captions (all patches vs local texts); summed over ranks these are exactly the single-process loss, and the
gradients flowing back through the gathers (summed onto their owner) are exactly the single-process ones.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from pacl_core.backbone import check_device
from pacl_core.loss import DEFAULT_CHUNK_ELEMENTS, PACLLoss, pairwise_compatibility


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank among world processes, and the device it computes on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when not launched by it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: str = "cpu", backend: str | None = None, timeout_min: float = 30.0) -> DistInfo:
    """Join the process group torchrun set up (if any) and pick this process's device.

    `device` 'cuda' becomes cuda:LOCAL_RANK. The backend defaults to nccl on GPUs and gloo on CPUs.
    """
    check_device(device)  # a device this machine lacks is one line, before any process group
    rank, world, local_rank = env_world()
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}" if world > 1 or device == "cuda" else device
        torch.cuda.set_device(torch.device(device))
    if world == 1:
        return DistInfo(0, 1, 0, device)
    backend = backend or ("nccl" if device.startswith("cuda") else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_min))
    assert dist.get_world_size() == world and dist.get_rank() == rank, "process group disagrees with torchrun's env"
    return DistInfo(rank, world, local_rank, device)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every rank's gradient for this rank's slice onto it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        ctx.local = x.shape[0]
        if dist.get_backend() == "nccl":
            out = torch.empty((dist.get_world_size() * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
            dist.all_gather_into_tensor(out, x)  # (W·L, ...)
            return out
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts)  # (W·L, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()  # (W·L, ...)
        if dist.get_backend() == "nccl":
            local = torch.empty((ctx.local, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(local, grad)
            return local
        dist.all_reduce(grad)  # gloo has no reduce-scatter: sum everything, keep this rank's slice
        start = dist.get_rank() * ctx.local
        return grad[start:start + ctx.local]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(L, ...) on each of W ranks -> (W·L, ...) in rank order, differentiable; identity when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


class DistributedPACLLoss(nn.Module):
    """PACLLoss over the global batch; each rank returns its share, and the shares sum to the global loss.

    Call `forward` with this rank's (L, T, D) patch embeddings and (L, D) text embeddings; back-propagate the
    returned share and sum the parameter gradients over ranks (`all_reduce_gradients`) to get exactly the
    single-process gradient of the global loss. `global_loss` sums the shares for logging.
    """

    def __init__(self, tau: float = 1.0, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
        super().__init__()
        self.tau, self.chunk_elements = tau, chunk_elements
        self.single = PACLLoss(tau, chunk_elements)

    def forward(self, patch_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale) -> torch.Tensor:
        assert patch_emb.ndim == 3 and text_emb.ndim == 2, "expected patch_emb (L, T, D) and text_emb (L, D)"
        assert patch_emb.shape[0] == text_emb.shape[0], "one caption per image"
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.single(patch_emb, text_emb, logit_scale)
        L, rank = patch_emb.shape[0], dist.get_rank()
        all_patch = gather_with_grad(patch_emb)  # (G, T, D)
        all_text = gather_with_grad(text_emb)  # (G, D)
        G = all_text.shape[0]
        labels = torch.arange(rank * L, (rank + 1) * L, device=patch_emb.device)  # (L,)
        rows = logit_scale * pairwise_compatibility(patch_emb, all_text, self.tau, self.chunk_elements)  # (L, G)
        cols = logit_scale * pairwise_compatibility(all_patch, text_emb, self.tau, self.chunk_elements)  # (G, L)
        image_to_text = F.cross_entropy(rows, labels, reduction="sum")
        text_to_image = F.cross_entropy(cols.T, labels, reduction="sum")
        return (image_to_text + text_to_image) / (2 * G)


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over ranks (a copy; the input is untouched)."""
    out = value.detach().clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out)
    return out


def all_reduce_gradients(params) -> None:
    """Sum every parameter's .grad over ranks, in one flat collective."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])  # (P,)
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def all_gather_json(obj, device="cpu") -> list:
    """Every rank's JSON-able object, in rank order ([obj] when not distributed). Travels as JSON, never pickle."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=device)  # (n,)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[:data.numel()] = data
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return [json.loads(bytes(p[:int(n.item())].cpu().tolist()).decode()) for p, n in zip(parts, sizes)]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
