"""pacl_core: open-vocabulary segmentation with CLIP, and PACL patch-level alignment (CVPR 2023).

The library never imports gradio; the demo in demo/ only wires it to a UI.
"""

from .backbone import Backbone, load_backbone
from .checkpoint import load_head, save_head
from .errors import PACLError
from .loss import PACLLoss
from .pacl import VisionEmbedder, attended_embedding, compatibility, patch_attention, patch_similarity
from .segment import Segmentation, Segmenter
from .toymodel import load_toy_backbone  # also registers load_backbone("toy")

__version__ = "0.1.0"
__all__ = [
    "Backbone", "load_backbone", "load_head", "save_head", "PACLError", "PACLLoss", "VisionEmbedder",
    "attended_embedding", "compatibility", "patch_attention", "patch_similarity", "Segmentation", "Segmenter",
    "load_toy_backbone",
]
