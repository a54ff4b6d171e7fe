"""Prompt-template ensembles used to turn a word into a text embedding.

A word's embedding is the mean of the L2-normalised text embeddings of every template filled with it
(CLIP's "prompt ensembling"), renormalised.
"""

from pacl_core.errors import PACLError

# The 7 templates CLIP's authors found best on ImageNet; PACL's inference uses this ensemble.
IMAGENET_7 = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

# CLIP's 80 ImageNet templates, the ensemble used by MaskCLIP, SCLIP, ClearCLIP and NACLIP.
IMAGENET_80 = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.",
    "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.",
    "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.", "the toy {}.",
    "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.",
    "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.",
    "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.",
    "a photo of the nice {}.", "a photo of the small {}.", "a photo of the weird {}.",
    "the cartoon {}.", "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.", "itap of a {}.",
    "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

SINGLE = ("a photo of a {}.",)
BARE = ("{}",)

TEMPLATE_SETS = {"imagenet7": IMAGENET_7, "imagenet80": IMAGENET_80, "single": SINGLE, "bare": BARE}


def get_templates(name_or_templates) -> tuple:
    """A named template set, or a sequence of templates each holding one '{}'."""
    if isinstance(name_or_templates, str):
        if name_or_templates not in TEMPLATE_SETS:
            raise PACLError(
                f"unknown template set '{name_or_templates}'; choose one of {', '.join(TEMPLATE_SETS)}"
            )
        return TEMPLATE_SETS[name_or_templates]
    templates = tuple(name_or_templates)
    if not templates or any(t.count("{}") != 1 for t in templates):
        raise PACLError("each prompt template must contain exactly one '{}'")
    return templates
