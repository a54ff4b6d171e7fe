"""Shared by the live-server and browser tests: which model the demo starts on, and serving it on a free port."""

import socket
from contextlib import contextmanager

import torch

from demo import launch_options
from demo.models import TOY_LABEL
from pacl_core.backbone import load_backbone
from pacl_core.checkpoint import save_head
from pacl_core.pacl import VisionEmbedder
from pacl_core.toymodel import clip_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_model(folder) -> tuple[str, str]:
    """(model request, dropdown label): the toy model (it ships a PACL head); until its weights exist, a tiny
    random model with a head saved in `folder`."""
    if clip_path().is_file():
        return "toy", TOY_LABEL
    torch.manual_seed(0)
    tiny = load_backbone("PACL-Tiny-Test:none")
    path = save_head(folder / "tiny_head", VisionEmbedder(tiny.width, tiny.embed_dim), tiny)
    return str(path), "PACL head: tiny_head (PACL-Tiny-Test:none)"


@contextmanager
def serving(demo):
    """Launch `demo` on a free loopback port; yields its URL and closes it afterwards."""
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
