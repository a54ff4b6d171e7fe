"""The Gradio demo: a thin UI (demo/ui.py) over plain-Python handlers (demo/handlers.py) and a lazy model registry.

All the maths lives in pacl_core; nothing in this package computes tensors itself.
"""

from .ui import build_demo, launch_options

__all__ = ["build_demo", "launch_options"]
