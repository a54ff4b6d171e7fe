"""Examples that fit the model: the toy model offers its toy-world scenes first, real models offer photos.

`model_examples(registry, label, image, words, model_box)` builds two example lists below the inputs (toy scenes,
then photos) and shows the ones that fit the model picked: the toy model knows only its toy world, and photos
give meaningful masks only with real CLIP weights, which their label says (offline, they cannot be had).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

TOY_TITLE = "Toy-world scenes (what the toy model knows): pick one, then press Segment"
TOY_BEST = ("The toy model opens with **2 shifted passes per axis** and **Refinement: affinity**: 0.71 mIoU on 200 "
            "held-out scenes, against 0.55 for one plain pass (the paper's), in about 0.2 s a request; 4 per axis "
            "(16 passes) gives 0.74 (docs/toy-world.md).")
PHOTO_TITLE_TOY = ("Photos: these need real CLIP weights (pick ViT-B/16, downloaded once from the Hugging Face Hub); "
                   "the toy model knows only its toy world")
PHOTO_TITLE_REAL = ("Photos: pick one, then press Segment (they need this model's real weights, downloaded once; "
                    "offline, pick the toy model and its scenes)")


def split_examples(rows: list[list[str]]) -> tuple[list[list[str]], list[list[str]]]:
    """[[path, words], ...] -> (toy-world scenes, photos), each in the file's order."""
    toy = [r for r in rows if Path(r[0]).name.startswith("toy_")]
    return toy, [r for r in rows if r not in toy]


def is_toy(registry, label: str) -> bool:
    """Whether the picked model runs on the toy CLIP (the toy model, its heads, heads trained on the page)."""
    try:
        return registry.choice(label).spec == "toy"
    except Exception:  # an unknown label: a real model's examples
        return False


def _titles(toy: bool) -> tuple[dict, dict]:
    return gr.Column(visible=toy), gr.Column(visible=True), gr.Markdown(PHOTO_TITLE_TOY if toy else PHOTO_TITLE_REAL)


def model_examples(registry, label: str, image, words, model_box, rows: list[list[str]]) -> None:
    """Both example lists, the toy scenes first and shown only for a toy model, and the wiring that switches them."""
    toy_rows, photo_rows = split_examples(rows)
    toy = is_toy(registry, label)
    with gr.Column(visible=toy, elem_id="toy-examples") as toy_col:
        gr.Markdown(TOY_BEST, elem_id="toy-best-setting")
        if toy_rows:
            gr.Examples(toy_rows, inputs=[image, words], label=TOY_TITLE, cache_examples=False, examples_per_page=8)
    with gr.Column(elem_id="photo-examples") as photo_col:
        title = gr.Markdown(PHOTO_TITLE_TOY if toy else PHOTO_TITLE_REAL, elem_id="photo-examples-title")
        if photo_rows:
            gr.Examples(photo_rows, inputs=[image, words], label="Photos", cache_examples=False, examples_per_page=8)
    model_box.change(lambda m: _titles(is_toy(registry, m)), model_box, [toy_col, photo_col, title],
                     api_visibility="private", queue=False)
