"""The demo as a live server on a free loopback port, called over HTTP with gradio_client; stopped afterwards."""

import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from demo import build_demo
from demo import handlers as h
from demo.models import default_registry
from demo.ui import QUEUE_SIZE
from pacl_core.methods import METHODS
from tests.helpers import demo_model, serving

pytestmark = pytest.mark.slow  # a live demo server (python -m pytest -m "not slow" skips it)
SLOT = 3  # outputs per method slot: status, overlay, heatmap sheet


@pytest.fixture(scope="module")
def model_and_registry(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    return (*demo_model(folder), default_registry(folder))


@pytest.fixture(scope="module")
def server(model_and_registry):
    request, label, registry = model_and_registry
    demo = build_demo(model=request, registry=registry)
    with serving(demo) as url:
        yield demo, url, label


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    img = np.zeros((90, 120, 3), np.uint8)
    img[:45] = (50, 100, 230)
    img[45:] = (50, 170, 60)
    img[20:70, 40:80] = (230, 50, 40)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(img).save(path)
    return path


def size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def segment(client, label, image, words="sky, grass", methods=("vanilla",), threshold=0.0, resolution="model default",
            shifts="1", refine="none"):
    image = handle_file(str(image)) if image is not None else None
    return client.predict(image, words, list(methods), label, threshold, resolution, shifts, refine,
                          api_name="/segment")


def test_shifted_passes_and_refinement_over_http(client, server, photo):
    out = segment(client, server[2], photo, "sky, grass", ["pacl"], shifts="2", refine="affinity")
    status = out[METHODS.index("pacl") * SLOT]
    assert "2×2 shifted passes" in status and "affinity refinement" in status and "could not run" not in status


def test_queue_is_bounded(server):
    demo, _, _ = server
    assert demo._queue.max_size == QUEUE_SIZE


@pytest.mark.parametrize("method", METHODS)
def test_each_method_over_http(client, server, photo, method):
    out = segment(client, server[2], photo, "sky, grass, red square", [method])
    assert len(out) == SLOT * len(METHODS) + 3
    i = METHODS.index(method) * SLOT
    status, overlay, sheet = out[i: i + SLOT]  # two image files per method, whatever the number of words
    assert h.method_title(method) in status and "could not run" not in status
    width, height = size(overlay)  # the 120 x 90 photo enlarged 4x (to a short side of at least 320 px)
    assert height == 360 and width > 480 and Path(overlay).suffix == ".jpeg"  # the legend beside it
    strip = int(48 * 1.4)  # 3 words: 2 x 2 cells, each a caption over the heatmap at a 384 px longer side
    assert size(sheet) == (2 * 384 + 4, 2 * (strip + 288) + 4) and Path(sheet).suffix == ".jpeg"
    table, download, word = out[-3:]
    assert table["headers"] == h.TABLE_HEADERS and len(table["data"]) == 3
    assert download is None and word["value"] == "sky" and word["choices"][2][0] == "red square"
    archive = client.predict(api_name="/download")  # the page asks for it right after showing the results
    with zipfile.ZipFile(archive) as zf:
        assert f"01-{method}/overlay.png" in zf.namelist() and "summary.csv" in zf.namelist()
    assert client.predict(api_name="/download") is None  # packaged once, then released
    others = [out[j * SLOT + 1] for j in range(len(METHODS)) if METHODS[j] != method]
    assert all(o is None for o in others)


def test_explain_endpoint(client, server, photo):
    s_img, a_img, summary, table, vs_img, va_img = client.predict(
        handle_file(str(photo)), "sky, grass", "grass", server[2], "model default", 0.0, api_name="/explain")
    assert size(s_img["value"]) == size(a_img["value"]) == size(vs_img["value"]) == (480, 360)  # enlarged 4x
    assert s_img["label"].startswith("PACL: s(x, “grass”)") and a_img["label"].startswith("PACL: a(x, “grass”)")
    assert vs_img["label"].startswith("vanilla CLIP: s(x, “grass”)") and va_img["label"].startswith("vanilla CLIP: a(")
    assert table["headers"] == h.LESSON_HEADERS
    assert "“grass”" in summary and [r[0] for r in table["data"]] == ["sky", "grass"]


@pytest.mark.parametrize("kind, message", [
    ("no image", "no image yet"),
    ("not an image", "not an image"),
    ("empty vocabulary", "no words given"),
    ("too many words", "at most 50 words"),
    ("no method", "no method selected"),
])
def test_bad_inputs_show_a_message_and_the_server_keeps_running(client, server, photo, tmp_path, kind, message):
    image, words, methods = photo, "sky", ["vanilla"]
    if kind == "no image":
        image = None
    elif kind == "not an image":
        image = tmp_path / "fake.png"
        image.write_text("hello, I am text")
    elif kind == "empty vocabulary":
        words = " ,, "
    elif kind == "too many words":
        words = ", ".join(f"thing{i}" for i in range(80))
    else:
        methods = []
    with pytest.raises(AppError, match=message) as err:
        segment(client, server[2], image, words, methods)
    assert "Traceback" not in str(err.value)
    out = segment(client, server[2], photo, "sky")  # still serving
    assert out[-1]["value"] == "sky"


def test_several_users_at_once(server, photo):
    url, label = server[1], server[2]
    clients = [Client(url, verbose=False) for _ in range(3)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        jobs = [pool.submit(segment, clients[i % 3], label, photo, ["sky", "sky, grass", "grass, red"][i % 3],
                            ["vanilla", "pacl"]) for i in range(6)]
        outs = [j.result(timeout=180) for j in jobs]
    assert [o[-1]["value"] for o in outs] == ["sky", "sky", "grass"] * 2
    assert all(len(o[-3]["data"]) >= 2 for o in outs)


def test_method_ticks_follow_the_model(server, model_and_registry):
    """With a PACL head the page opens on vanilla + PACL; without one on vanilla + SC-CLIP, saying why."""
    from demo.models import ModelChoice, ModelRegistry
    from demo.ui import make_method_defaults

    def ticks(demo):
        box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "methods")
        return box.value, box.info

    assert ticks(server[0]) == (["vanilla", "pacl"], "")
    headless = ModelRegistry([ModelChoice("tiny, no head", "PACL-Tiny-Test:none")])
    value, info = ticks(build_demo(model="PACL-Tiny-Test:none", registry=headless))
    assert value == ["vanilla", "scclip"] and "no trained PACL head" in info
    switched, shifts, refine = make_method_defaults(model_and_registry[2])(model_and_registry[1])
    assert switched.value == ["vanilla", "pacl"] and (shifts.value, refine.value) == ("2", "affinity")  # toy's view
    switched, shifts, refine = make_method_defaults(headless)("tiny, no head")
    assert switched.value == ["vanilla", "scclip"] and "no trained PACL head" in switched.info
    assert (shifts.value, refine.value) == ("1", "method default")


# ---- "Train PACL yourself" over HTTP -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_server(tmp_path_factory):
    from demo.training import Trainings
    from pacl_core.toy.live import LiveConfig

    trainings = Trainings(LiveConfig(pool=32, check=4, every=5))
    registry = default_registry(tmp_path_factory.mktemp("no-checkpoints"))
    with serving(build_demo(model="toy", registry=registry, trainings=trainings)) as url:
        yield url, trainings


@pytest.fixture(scope="module")
def toy_scene(tmp_path_factory):
    from pacl_core.toy.live import check_scene

    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(check_scene(1)).save(path)
    return path


def test_train_over_http_then_segment_with_the_trained_head(train_server, toy_scene):
    client = Client(train_server[0], verbose=False)
    job = client.submit(1, "star", 10, api_name="/train")
    job.result()
    outputs = job.outputs()  # every snapshot, streamed: step 0, step 5, step 10
    assert len(outputs) == 3 and "Step 5 / 10" in outputs[1][0]
    status, files, model = outputs[-1][0], outputs[-1][-2], outputs[-1][-1]
    assert "Done in" in status and sorted(Path(f).suffix for f in files) == [".json", ".safetensors"]
    labels = [c[0] for c in model["choices"]]
    label = next(c for c in labels if c.startswith("Your PACL head 1 (10 steps"))
    out = segment(client, label, toy_scene, "background, star", ["pacl"])  # the same session picks it
    assert "could not run" not in out[METHODS.index("pacl") * SLOT]


def test_one_training_at_a_time_the_next_sees_its_place_and_stop_frees_it(train_server):
    url, trainings = train_server
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    long_run = first.submit(0, "background", 1000, api_name="/train")
    deadline = time.time() + 120
    while not trainings.running() and time.time() < deadline:
        time.sleep(0.1)
    waiting = second.submit(0, "background", 10, api_name="/train")
    rank = None
    while rank is None and time.time() < deadline:
        status = waiting.status()
        rank = status.rank if status.code.name == "IN_QUEUE" else None
        time.sleep(0.1)
    assert rank == 0, "the second training waits, first in line"
    assert len(trainings.running()) == 1 and not long_run.done()
    first.predict(api_name="/stop_training")
    assert "Done in" in waiting.result()[0]
    assert "Stopped at step" in long_run.outputs()[-1][0]
