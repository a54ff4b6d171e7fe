"""The Gradio page. `build_demo()` only wires components to the plain-Python handlers in demo/handlers.py.

Events run with preprocess=False, so reading the uploaded file is pacl_core's job: a non-image or corrupt file
becomes a sentence, not a server error. Every handler runs through `_guarded`: a PACLError becomes a visible
gr.Error, notes become gr.Warning toasts, and an unexpected exception is logged and shown as one sentence, so the
page never shows a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from pacl_core.errors import PACLError
from pacl_core.methods import METHODS

from . import handlers as h
from . import training as tr
from .guard import PayloadGuard
from .models import ModelRegistry, default_registry, pick_default

log = logging.getLogger(__name__)


EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
QUEUE_SIZE = 64  # requests waiting beyond this are turned away with Gradio's "queue is full" message; a burst of
# 32 clients (each also fetching its archive afterwards) fits
CONCURRENCY = 2  # requests running at once; inference on one model is serialised by the registry anyway
MAX_FILE_SIZE = "25mb"

INTRO = """
# PACL explorer: which words does each patch of a photo match?
Upload a photo, type the things to look for, and compare how **vanilla CLIP** and **PACL**
(*Patch Aligned Contrastive Learning*, Mukhoti et al., CVPR 2023) label every pixel.
CLIP learned to match the *whole image* to text; PACL teaches each *patch* to match the words in it.
"""

LESSON = """
**Patch vs CLS alignment, in four steps.**
1. The vision transformer cuts the image into a grid of patches (16×16 pixels for ViT-B/16) and turns each
   patch into a vector; a PACL head maps these into the same space as the text vectors.
2. **s(x,y)** (left): the cosine between each patch's vector and the word's text vector. Bright = this patch
   looks like the word.
3. **a(x,y)** (right): a softmax over all patches of s/τ. It sums to 1 and says *where to look* for the word.
4. **φ̂(x,y)**: average the patch vectors weighted by a, then take the cosine with the word.

The top row is PACL's head, the bottom row vanilla CLIP's own patch projection (what PACL starts from), both at
the same τ; the table gives both φ̂ next to the one CLS cosine.

CLIP is trained on one number per image and caption: the cosine of the single **CLS** image vector with the
text. Nothing asks its *patches* to match words, so their s maps are noisy and segmentation suffers. PACL
trains with φ̂ instead, which is only high when the *right patches* match the word; the patch-level alignment
this produces is exactly what segmenting needs, and it comes for free from image–caption pairs.
"""

CSS = """
.gradio-container {max-width: 1480px !important}
.method-status p {margin: 0 !important}
#run-button {min-height: 48px}
"""


def image_path(payload):
    """The raw image payload (events run with preprocess=False) -> the uploaded file's path, or None (anything
    else is passed on for the handler to refuse in one sentence).

    Gradio has already checked that the file is one of its uploads; reading it is left to pacl_core, which
    turns a file that is not an image, or is corrupt or huge, into a one-sentence PACLError.
    """
    if isinstance(payload, dict):
        return payload.get("path")
    return payload or None


def image_name(payload) -> str | None:
    """The file's name as the visitor uploaded it (for messages), if the payload says."""
    name = payload.get("orig_name") if isinstance(payload, dict) else None
    return name if isinstance(name, str) and name else None


def session_of(request: gr.Request | None) -> str:
    """The browser session a request comes from ('anonymous' when Gradio gives none)."""
    return getattr(request, "session_hash", None) or "anonymous"


def _guarded(fn):
    """Run a handler: user problems -> gr.Error (visible, the app keeps running); notes -> gr.Warning."""

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except gr.Error:
            raise
        except PACLError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # a bug: keep the page alive and say so in one sentence
            log.exception("demo handler %s failed", fn.__name__)
            raise gr.Error(f"something went wrong ({type(e).__name__}); please try again or "
                           "with other inputs") from None

    return wrapper


def _warn(notes) -> None:
    for note in notes:
        gr.Warning(note[:1].upper() + note[1:])


def load_examples(folder: Path = EXAMPLES_DIR) -> list[list[str]]:
    """[[image path, words], ...] from assets/examples/examples.json; missing files are skipped."""
    index = folder / "examples.json"
    try:
        entries = json.loads(index.read_text())
    except (OSError, ValueError):
        return []
    rows = []
    for e in entries if isinstance(entries, list) else []:
        path = folder / str(e.get("file", "")) if isinstance(e, dict) else None
        if path is not None and path.is_file() and e.get("words"):
            rows.append([str(path), str(e["words"])])
    return rows


def _slot(method: str, visible: bool) -> dict:
    """One method's column: a status line, the overlay with its legend, and every word's heatmap in one sheet.

    Two images per method, whatever the number of words: each file of a response is one more HTTP round trip,
    and a mask and a heatmap file per word took most of a toy request's time. JPEG, since encoding WebP took
    longer than the toy model's whole compute."""
    title = h.method_title(method)
    # no label badge or buttons over the overlay: they would hide the legend; the status line names the method
    with gr.Column(visible=visible, min_width=340, elem_classes="method-col", elem_id=f"col-{method}") as col:
        status = gr.Markdown(f"**{title}**", elem_classes="method-status")
        overlay = gr.Image(label=f"{title}: segmentation", show_label=False, buttons=[], type="numpy", height=360,
                           format="jpeg", interactive=False)
        sheet = gr.Image(label=f"{title}: per-word heatmaps", show_label=False, buttons=["fullscreen"],
                         type="numpy", height=300, format="jpeg", interactive=False)
    return {"column": col, "status": status, "overlay": overlay, "sheet": sheet}


def make_run(registry: ModelRegistry):
    """The Segment button: one output group per method slot, then the table, the (cleared) download, the word
    list and the token under which the results wait for their archive."""

    @_guarded
    def run(image, words, methods, model, threshold, resolution, shifts=h.SHIFTS[0], refine=h.REFINES[0],
            request: gr.Request = None):
        session = session_of(request)
        result = h.compare(registry, image_path(image), words, methods, model, threshold, resolution, shifts,
                           refine, package=False, session=session, image_name=image_name(image))
        _warn(result.notes)
        by_method = {p.method: p for p in result.panels}
        outputs = []
        for m in METHODS:
            p = by_method.get(m)
            if p is None:
                outputs += ["", None, None]
                continue
            outputs += [p.status, h.display_file(p.overlay), h.display_file(p.sheet)]
        words_update = gr.Dropdown(choices=result.words, value=result.words[0])
        return [*outputs, result.table, None, words_update, h.hold(result, session)]

    return run


@_guarded
def make_download(token):
    """After the results are on screen: their zip archive."""
    return h.package_held(token)


def _side_images(side, word: str, who: str) -> tuple:
    """One side's s and a maps as labelled images."""
    (s_lo, s_hi), (a_lo, a_hi) = side.similarity_range, side.attention_range
    return (gr.Image(h.display_file(side.similarity_image), label=f"{who}: s(x, “{word}”): patch–word cosine, "
                                                                 f"{s_lo:.3f} (dark) to {s_hi:.3f} (bright)"),
            gr.Image(h.display_file(side.attention_image), label=f"{who}: a(x, “{word}”): attention over "
                                                                f"patches, {a_lo:.3f} (dark) to {a_hi:.3f} (bright)"))


def make_lesson(registry: ModelRegistry):
    """The teaching view's handler (the Explain button, a word picked, the tab opened)."""

    @_guarded
    def explain_word(image, words, word, model, resolution, tau, request: gr.Request = None):
        lesson = h.lesson(registry, image_path(image), words, word, model, resolution, tau,
                          session=session_of(request), image_name=image_name(image))
        _warn(lesson.notes)
        who = "PACL" if lesson.method == "pacl" else "vanilla CLIP (no PACL head)"
        return (*_side_images(lesson, lesson.word, who), lesson.summary, lesson.table,
                *_side_images(lesson.vanilla, lesson.word, "vanilla CLIP"))

    return explain_word


def make_lesson_if_open(registry: ModelRegistry):
    """After Segment, or when the tab is opened: refresh the teaching view only if it is on screen and has an
    image, so that the compare tab alone costs one pass per method."""
    explain_word = make_lesson(registry)

    def refresh(tab, image, words, word, model, resolution, tau, request: gr.Request = None):
        if tab != "lesson" or image_path(image) is None:
            return [gr.skip()] * 6
        return explain_word(image, words, word, model, resolution, tau, request)

    return refresh


def make_method_defaults(registry: ModelRegistry):
    """A new model ticks its default comparison (PACL with a head, else SC-CLIP) and says why, and sets its default
    shifted passes and refinement (the toy model's best quick setting, h.default_view)."""

    def update(model):
        try:
            shifts, refine = h.default_view(registry, model)
            return (gr.CheckboxGroup(value=h.default_methods(registry, model), info=h.methods_info(registry, model)),
                    gr.Radio(value=shifts), gr.Radio(value=refine))
        except PACLError:  # an unknown model: Segment will say so
            return gr.skip(), gr.skip(), gr.skip()

    return update


def show_slots(methods):
    chosen = set(methods or [])
    return [gr.Column(visible=m in chosen) for m in METHODS]


def build_demo(model: str | None = None, registry: ModelRegistry | None = None,
               trainings: tr.Trainings | None = None) -> gr.Blocks:
    """The whole page. `model` picks the initial model ('toy', 'vit-b-16', a head file, ...); None = automatic.
    trainings: the live trainings' state (demo/training.py; a fresh one by default)."""
    registry = registry or default_registry()
    default_label, notice = pick_default(registry, model)
    with gr.Blocks(title="PACL explorer: open-vocabulary segmentation", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(f"ℹ️ {notice}", visible=bool(notice), elem_id="model-notice")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                image = gr.Image(label="Image", type="filepath", elem_id="input-image", height=300,
                                 sources=["upload", "webcam", "clipboard"])
                words = gr.Textbox(label="Vocabulary (comma-separated)", value="", lines=2,
                                   placeholder="e.g. dog, grass, sky", max_lines=4)
                ticked = h.default_methods(registry, default_label)
                methods = gr.CheckboxGroup(h.method_choices(), value=ticked, label="Methods to compare",
                                           info=h.methods_info(registry, default_label), elem_id="methods")
                model_box = gr.Dropdown(registry.labels, value=default_label, label="Model")
                threshold = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Background threshold",
                                      info="pixels whose best cosine is below this become background; 0 = off")
                resolution = gr.Dropdown(list(h.RESOLUTIONS), value=h.RESOLUTIONS[0], label="Input resolution (px)",
                                         info="the short side the image is resized to (aspect ratio kept); "
                                              "larger = finer, slower")
                view = h.default_view(registry, default_label)  # (shifts, refinement) this model opens with
                shifts = gr.Radio(list(h.SHIFTS), value=view[0], label="Shifted passes per axis",
                                  info="average m×m passes of the image moved by fractions of a patch: "
                                       "smoother, less noisy maps for m² times the compute; 1 = one pass")
                refine = gr.Radio(list(h.REFINES), value=view[1], label="Refinement",
                                  info="method default: each method's official setting (PAMR for NACLIP); affinity: "
                                       "each patch takes the scores of the patches whose embeddings resemble its "
                                       "own; pamr: smoothed along the image's colour edges")
                run_btn = gr.Button("Segment", variant="primary", elem_id="run-button")
                from .examples import model_examples  # toy scenes for the toy model, photos for real ones
                model_examples(registry, default_label, image, words, model_box, load_examples())
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Compare methods", id="compare") as compare_tab:
                        with gr.Row(equal_height=False):
                            slots = {m: _slot(m, m in ticked) for m in METHODS}
                        table = gr.Dataframe(headers=h.TABLE_HEADERS, label="Per-word pixel share and mean score",
                                             interactive=False, wrap=True)
                        download = gr.File(label="Download the results (.zip: overlays, masks, heatmaps, numbers)",
                                           interactive=False)
                    with gr.Tab("How PACL sees this word", id="lesson") as lesson_tab:
                        with gr.Row():
                            word = gr.Dropdown([], label="Word", allow_custom_value=True,
                                               info="a word of the vocabulary (press Segment first), or type one")
                            tau = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Attention temperature τ",
                                            info="0 = the τ the head was trained with; lower τ sharpens a(x,y)")
                            explain_btn = gr.Button("Explain", variant="secondary", scale=0, min_width=140)
                        with gr.Row():
                            s_img = gr.Image(label="PACL: s(x,y): patch–word cosine", type="numpy", height=300)
                            a_img = gr.Image(label="PACL: a(x,y): softmax attention over patches", type="numpy",
                                             height=300)
                        with gr.Row():
                            vs_img = gr.Image(label="vanilla CLIP: s(x,y): patch–word cosine", type="numpy",
                                              height=300)
                            va_img = gr.Image(label="vanilla CLIP: a(x,y): softmax attention over patches",
                                              type="numpy", height=300)
                        lesson_md = gr.Markdown(label="explanation")
                        lesson_table = gr.Dataframe(headers=h.LESSON_HEADERS, interactive=False,
                                                    label="PACL's and vanilla CLIP's patch-level score φ̂ "
                                                          "next to CLIP's CLS cosine")
                        gr.Markdown(LESSON)
                    from .patch_tab import patch_tab  # the "Point at a patch" tab (demo/patch_tab.py)
                    patch_tab_ = patch_tab(demo, registry, image, words, methods, model_box, resolution)
                    with gr.Tab("Train PACL yourself", id="train"):
                        trainings = trainings or tr.Trainings()
                        train_parts = _train_tab(trainings.live)
        slot_outputs = [c for m in METHODS for c in (slots[m]["status"], slots[m]["overlay"], slots[m]["sheet"])]
        methods.change(show_slots, methods, [slots[m]["column"] for m in METHODS], api_visibility="private",
                       queue=False)
        model_box.change(make_method_defaults(registry), model_box, [methods, shifts, refine], api_visibility="private",
                         queue=False)
        lesson_inputs = [image, words, word, model_box, resolution, tau]
        lesson_outputs = [s_img, a_img, lesson_md, lesson_table, vs_img, va_img]
        token = gr.State(None)
        run_event = run_btn.click(make_run(registry),
                                  [image, words, methods, model_box, threshold, resolution, shifts, refine],
                                  [*slot_outputs, table, download, word, token], api_name="segment",
                                  preprocess=False)
        run_event.success(make_download, token, download, api_name="download", preprocess=False,
                          concurrency_id="download", concurrency_limit=1)  # its own worker: never delays a Segment
        lesson_fn, refresh = make_lesson(registry), make_lesson_if_open(registry)
        tab = gr.State("compare")
        compare_tab.select(lambda: "compare", None, tab, api_visibility="private", queue=False)
        patch_tab_.select(lambda: "patch", None, tab, api_visibility="private", queue=False)  # no lesson refresh
        lesson_tab.select(lambda: "lesson", None, tab, api_visibility="private", queue=False).then(
            refresh, [tab, *lesson_inputs], lesson_outputs, api_visibility="private", preprocess=False)
        run_event.success(refresh, [tab, *lesson_inputs], lesson_outputs, api_visibility="private", preprocess=False)
        explain_btn.click(lesson_fn, lesson_inputs, lesson_outputs, api_name="explain", preprocess=False)
        word.input(lesson_fn, lesson_inputs, lesson_outputs, api_visibility="private", preprocess=False)
        _wire_training(demo, train_parts, registry, trainings, model_box)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return demo


# ---- the "Train PACL yourself" tab ----------------------------------------------------------------------------
TRAIN_INTRO = """
**Watch PACL learn.** The toy CLIP below is frozen: it was trained to match whole scenes to their captions, and
its patches say little about *where* things are (vanilla CLIP, right). Press **Train** to train only PACL's
small vision embedder **e_v** on top of it, from random weights, with PACL's loss on pairs of a scene and a
short caption that names one thing in it (*"a striped red star"*, *"a dotted background"*). It never sees a
mask: the masks of the held-out check scenes are used only to measure it. Every few dozen steps the page shows
the loss, the patch accuracy and mIoU on those check scenes, and redraws one scene's mask and one word's
heatmap with the head so far. One training runs at a time on this server; others wait their turn.
"""
TRAIN_CONCURRENCY_ID = "toy-training"  # one live training per server, whatever the page's other limits


def _train_tab(live: tr.LiveConfig) -> dict:
    """The tab's components (built inside the page's Tabs); `live`: the server's live-training settings."""
    gr.Markdown(TRAIN_INTRO)
    with gr.Row():
        preview = gr.Image(tr.scene_preview(0), label="The scene", type="numpy", height=150, width=150,
                           interactive=False, show_label=False, scale=0, min_width=150)
        scene = gr.Slider(0, live.check - 1, value=0, step=1, label="Check scene to watch",
                          info="one of the held-out scenes the head is measured on")
        word = gr.Dropdown(list(tr.CLASSES), value=tr.scene_word(0), label="Word to watch",
                           info="its heatmap is redrawn as training goes")
        steps = gr.Slider(tr.MIN_STEPS, tr.MAX_STEPS, value=live.steps, step=10, label="Training steps",
                          info=f"batches of {tr.ToyTrainConfig.pacl_batch} scene–caption pairs")
        with gr.Column(scale=0, min_width=160):
            train_btn = gr.Button("Train", variant="primary", elem_id="train-button")
            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-button")
    status = gr.Markdown("", elem_id="train-status")
    with gr.Row():
        pacl_mask = gr.Image(label="PACL mask (training)", type="numpy", height=230, elem_id="train-pacl-mask")
        pacl_heat = gr.Image(label="PACL heatmap (training)", type="numpy", height=230)
        vanilla_mask = gr.Image(label="vanilla CLIP mask (fixed)", type="numpy", height=230)
        vanilla_heat = gr.Image(label="vanilla CLIP heatmap (fixed)", type="numpy", height=230)
    with gr.Row():
        loss = gr.Image(label="loss", type="numpy", height=260, show_label=False, elem_id="train-loss")
        checks = gr.Image(label="check scenes", type="numpy", height=260, show_label=False)
    files = gr.File(label="Download your trained head (safetensors + JSON)", file_count="multiple",
                    interactive=False, elem_id="train-files")
    return {"scene": scene, "word": word, "steps": steps, "train": train_btn, "stop": stop_btn, "status": status,
            "preview": preview, "views": [pacl_mask, pacl_heat, vanilla_mask, vanilla_heat], "loss": loss,
            "checks": checks, "files": files}


def _guarded_stream(fn):
    """`_guarded` for a generator handler: problems become a visible gr.Error, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            yield from fn(*args)
        except gr.Error:
            raise
        except PACLError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:
            log.exception("demo handler %s failed", fn.__name__)
            raise gr.Error(f"something went wrong ({type(e).__name__}); please try again") from None

    return wrapper


def cached_copy(path: Path, component) -> Path:
    """Where Gradio keeps its copy of a file the app returned through `component` (a hash of the file's bytes
    names its folder in the component's cache)."""
    from gradio import processing_utils
    from gradio_client import utils as client_utils

    name = client_utils.strip_invalid_filename_characters(Path(path).name)
    try:
        return Path(component.GRADIO_CACHE) / processing_utils.hash_file(path) / name
    except OSError:  # the file is gone already
        return Path(component.GRADIO_CACHE) / "missing" / name


def _wire_training(demo: gr.Blocks, parts: dict, registry: ModelRegistry, trainings: tr.Trainings,
                   model_box: gr.Dropdown) -> None:
    """The tab's events: Train (queued, one at a time per server), Stop, the scene picker, a closed tab."""
    @_guarded_stream
    def run(scene, word, steps, request: gr.Request):
        session = session_of(request)
        for view in tr.train(registry, trainings, session, scene, word, steps):
            model_update = gr.Dropdown(choices=trainings.labels_for(registry, session)) if view.done else gr.skip()
            pictures = (view.pacl_mask, view.pacl_heat, view.vanilla_mask, view.vanilla_heat, view.loss_plot,
                        view.checks_plot)
            yield (view.status, *[h.display_file(p) for p in pictures],
                   view.files if view.done else gr.skip(), model_update)

    def stop(request: gr.Request):
        if not trainings.stop(session_of(request)):
            gr.Info("No training of yours is running.")

    def closed(request: gr.Request):
        session = session_of(request)
        cached = [cached_copy(path, parts["files"]) for path in trainings.files(session)]
        trainings.close(registry, session)
        h.held_results.forget_session(session)
        for path in cached:  # Gradio's copies, which it would otherwise serve until its cache is cleaned
            path.unlink(missing_ok=True)

    outputs = [parts["status"], *parts["views"], parts["loss"], parts["checks"], parts["files"], model_box]
    parts["train"].click(run, [parts["scene"], parts["word"], parts["steps"]], outputs, api_name="train",
                         preprocess=False, concurrency_limit=1, concurrency_id=TRAIN_CONCURRENCY_ID)
    parts["stop"].click(stop, None, None, api_name="stop_training", queue=False)
    parts["scene"].release(_guarded(lambda k: (tr.scene_preview(k), tr.scene_word(k))), parts["scene"],
                           [parts["preview"], parts["word"]], api_visibility="private", queue=False)
    demo.unload(closed)


def launch_options() -> dict:
    """What demo.launch() needs besides host and port (Gradio 6 takes theme and css here), and the guard that
    answers payloads Gradio would fail on in one sentence (demo/guard.py)."""
    return {"theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="sky"), "css": CSS,
            "max_file_size": MAX_FILE_SIZE, "app_kwargs": {"middleware": [Middleware(PayloadGuard)]}}
