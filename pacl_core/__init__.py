"""pacl_core: open-vocabulary segmentation with CLIP, and PACL patch-level alignment (CVPR 2023).

The library never imports gradio; the demo in demo/ only wires it to a UI.
"""

from pacl_core.backbone import Backbone, load_backbone
from pacl_core.checkpoint import load_head, save_head
from pacl_core.errors import PACLError
from pacl_core.loss import PACLLoss
from pacl_core.pacl import VisionEmbedder, attended_embedding, compatibility, patch_attention, patch_similarity
from pacl_core.segment import Geometry, Readout, Segmentation, Segmenter, segment_many
from pacl_core.toy.model import load_toy_backbone

__version__ = "0.1.0"
__all__ = [
    "Backbone", "load_backbone", "load_head", "save_head", "PACLError", "PACLLoss", "VisionEmbedder",
    "attended_embedding", "compatibility", "patch_attention", "patch_similarity", "Geometry", "Readout",
    "Segmentation", "Segmenter", "segment_many", "load_toy_backbone",
]
