"""The "Point at a patch" tab: click a point of the image and see what its patch matches, beside the whole image.

`patch_tab(demo, registry, image, words, methods, model, resolution)` builds the tab inside the page's Tabs and
wires it: opening the tab or pressing "Show this patch" (the HTTP endpoint /patch) answers for the point in the
x and y boxes (the image's centre when empty); clicking the picture answers for the patch under the click. The
backbone pass is kept per browser session (demo/patch.py) and dropped when the tab closes.
"""

from __future__ import annotations

import gradio as gr

from . import handlers as h
from . import patch as p
from .ui import _guarded, _warn, image_path

INTRO = """
**Point at a patch.** Click anywhere on the picture. The outlined patch's embedding is compared with every word,
under each ticked method, beside CLIP's **CLS** embedding of the *whole image* (grey): CLIP was trained to align
the whole image with text, PACL trains each *patch*. The ★ marks the word each method gives this patch. Below:
**semantic coherence** (the PACL paper's Section 4), the cosine between this patch and every other patch, for the
frozen CLIP tokens that every method starts from and for each method's embeddings; and one word's map, large,
with its score range. The first click on an image runs the backbone once; later clicks read from that pass.
"""

NOTE = ("The picture shows the whole image at one size for every method (the model's input size, or the Input "
        "resolution chosen on the left), without shifted passes or refinement: the patch scores as the segmenter "
        "computes them before upsampling.")


def patch_tab(demo: gr.Blocks, registry, image, words, methods, model_box, resolution) -> gr.Tab:
    """Build and wire the tab (call inside the page's gr.Tabs); returns the tab."""
    cache = p.PassCache()
    with gr.Tab("Point at a patch", id="patch") as tab:
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                picture = gr.Image(label="Click a patch", type="numpy", interactive=False, height=420,
                                   elem_id="patch-picture", buttons=[], format="png")
                with gr.Row():
                    x = gr.Number(label="x (px)", value=None, elem_id="patch-x", min_width=80)
                    y = gr.Number(label="y (px)", value=None, elem_id="patch-y", min_width=80)
                    show = gr.Button("Show this patch", variant="secondary", elem_id="patch-button", min_width=120)
            with gr.Column(scale=1, min_width=420):
                status = gr.Markdown("Pick an image and words on the left, then open this tab or press "
                                     "*Show this patch*.", elem_id="patch-status")
                gr.Markdown("**This patch's cosine with each word**, per method, beside the whole image's (CLS)")
                bars = gr.Image(label="This patch's cosine with each word, per method, beside the CLS cosine",
                                show_label=False, type="numpy", interactive=False, elem_id="patch-bars",
                                format="png", buttons=["fullscreen"])
        gr.Markdown("**Semantic coherence**: this patch's cosine with every patch (dark = least similar, bright = "
                    "most; 1 at the patch itself)")
        coherence = gr.Image(label="Semantic coherence", show_label=False, type="numpy", interactive=False,
                             elem_id="patch-coherence", format="jpeg", buttons=["fullscreen"])
        with gr.Row(equal_height=False):
            word = gr.Dropdown([], label="Word to see large", allow_custom_value=True, elem_id="patch-word", scale=0,
                               min_width=220, info="its cosine with every patch, per method, with its score range")
            large = gr.Image(label="One word, large", show_label=False, type="numpy", interactive=False,
                             elem_id="patch-large", format="jpeg", scale=3, buttons=["fullscreen"])
        table = gr.Dataframe(label="Per word: CLS cosine; this patch's cosine and probability per method; PACL's "
                                   "attention share", interactive=False, wrap=True)
        data = gr.JSON(label="The same numbers as data (what the /patch endpoint serves)", open=False)
        gr.Markdown(NOTE)
    outputs = [picture, status, bars, coherence, large, word, table, data]
    inputs = [image, words, methods, model_box, resolution, x, y, word]

    def answer(image, words, methods, model, resolution, px, py, chosen, request):
        view = p.point_at(registry, cache, _session(request), image_path(image), words, methods, model,
                          resolution, px, py, chosen)
        _warn(view.notes)
        return (view.picture, view.status, view.bars, view.coherence,
                view.word_view,
                gr.Dropdown(choices=view.report.words, value=view.word),
                gr.Dataframe(view.table, headers=view.headers), view.data)

    @_guarded
    def shown(image, words, methods, model, resolution, px, py, chosen, request: gr.Request):
        return answer(image, words, methods, model, resolution, px, py, chosen, request)

    @_guarded
    def clicked(image, words, methods, model, resolution, chosen, evt: gr.SelectData, request: gr.Request):
        rgb, _ = h.check_image(image_path(image))
        px, py = p.to_image_point(evt.index, rgb.shape)
        return (round(px, 1), round(py, 1),
                *answer(image, words, methods, model, resolution, px, py, chosen, request))

    @_guarded
    def opened(image, words, methods, model, resolution, px, py, chosen, request: gr.Request):
        if image_path(image) is None:
            return [gr.skip()] * len(outputs)
        return answer(image, words, methods, model, resolution, px, py, chosen, request)

    def closed(request: gr.Request):
        cache.drop(_session(request))

    show.click(shown, inputs, outputs, api_name="patch", preprocess=False)
    picture.select(clicked, [image, words, methods, model_box, resolution, word], [x, y, *outputs],
                   api_visibility="private", preprocess=False)
    tab.select(opened, inputs, outputs, api_visibility="private", preprocess=False)
    word.input(shown, inputs, outputs, api_visibility="private", preprocess=False)
    image.change(lambda: (None, None, None), None, [picture, x, y], api_visibility="private", queue=False)
    demo.unload(closed)
    return tab


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "anonymous"
