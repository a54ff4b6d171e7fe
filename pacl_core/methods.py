"""How the last transformer block runs for each method; 'vanilla' and 'pacl' use CLIP's block unchanged.

Every variant is a function (block, x (B, 1+T, W), grid) -> (B, 1+T, W) that reads the block's parameters
and never modifies them, so one loaded backbone serves every method.
"""

from __future__ import annotations

import torch

from .errors import PACLError


def vanilla_block(block, x: torch.Tensor, grid) -> torch.Tensor:
    return block(x)


LAST_BLOCK = {"vanilla": vanilla_block, "pacl": vanilla_block}
METHODS = tuple(LAST_BLOCK)


# Inference settings a method's official code uses (e.g. its logit scale); empty = the model's own.
METHOD_DEFAULTS: dict[str, dict] = {}


def method_defaults(method: str) -> dict:
    return dict(METHOD_DEFAULTS.get(check_method(method), {}))


def check_method(method: str) -> str:
    if method not in LAST_BLOCK:
        raise PACLError(f"unknown method '{method}'; valid methods: {', '.join(LAST_BLOCK)}")
    return method


def run_last_block(block, x: torch.Tensor, grid, method: str) -> torch.Tensor:
    return LAST_BLOCK[check_method(method)](block, x, grid)
