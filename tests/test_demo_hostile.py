"""The demo under hostile and careless visitors (issue 30), through the HTTP API of a live server with gradio_client:
every bad input is one line and no traceback, heavy requests are bounded and do not block light ones, every
client gets its archive, and one session never sees another's trained heads."""

import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from demo import build_demo, ui
from demo.models import TOY_LABEL, default_registry
from pacl_core.methods import METHODS
from tests.helpers import serving

pytestmark = pytest.mark.slow
SLOT = 3  # outputs per method slot
SCENE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "toy_01.png"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from demo.training import Trainings
    from pacl_core.toy.live import LiveConfig

    trainings = Trainings(LiveConfig(pool=32, check=4, every=5))
    registry = default_registry(tmp_path_factory.mktemp("no-checkpoints"))
    demo = build_demo(model="toy", registry=registry, trainings=trainings)
    with serving(demo) as url:
        yield demo, url, trainings, registry


@pytest.fixture
def quiet(site, capfd, caplog):
    """After the test: nothing the visitors sent left a traceback in the server's output or log."""
    yield
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and not any(r.exc_info for r in caplog.records)


def segment(client, image, words="circle, ring", methods=("vanilla",), model=TOY_LABEL, threshold=0.0,
            resolution="model default", shifts="1", refine="none"):
    image = handle_file(str(image)) if isinstance(image, (str, Path)) else image
    return client.predict(image, words, list(methods) if isinstance(methods, tuple) else methods, model, threshold,
                          resolution, shifts, refine, api_name="/segment")


@pytest.mark.parametrize("width, height, message", [
    (1, 5000, "too small"), (5000, 1, "too small"), (1, 300, "too small"), (5, 1024, "too small"),
    (40, 1024, "too thin"),
])
def test_thin_images_get_one_line_quickly(site, quiet, tmp_path, width, height, message):
    path = tmp_path / f"strip_{width}x{height}.png"
    Image.new("RGB", (width, height), (200, 40, 40)).save(path)
    start = time.perf_counter()
    with pytest.raises(AppError, match=message) as err:
        segment(Client(site[1], verbose=False), path)
    assert time.perf_counter() - start < 30
    assert str(err.value).startswith(path.name) and "gradio" not in str(err.value)  # the visitor's name


def test_the_thinnest_accepted_image_is_segmented(site, quiet, tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (16 * 40, 40), (30, 200, 30)).save(path)
    out = segment(Client(site[1], verbose=False), path, methods=("vanilla", "pacl"))
    for m in ("vanilla", "pacl"):
        with Image.open(out[METHODS.index(m) * SLOT + 1]) as im:
            assert max(im.size) <= 2048 + 400  # the legend beside a picture of at most 2048 px


def test_huge_image_is_called_too_large(site, quiet, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(path)
    with pytest.raises(AppError, match="huge.png: the image is too large"):
        segment(Client(site[1], verbose=False), path)


@pytest.mark.parametrize("field, value, message", [
    ("words", 12345, "the vocabulary must be text"),
    ("model", [TOY_LABEL], "the model must be one of the names in the Model list"),
    ("methods", 5, "the methods must be a list"),
    ("threshold", "x", "background threshold must be a number"),
    ("resolution", [1], "input resolution"),
    ("shifts", "9", "shifted passes '9'"),
    ("words", ", ".join(f"w{i}" for i in range(500)), "at most 50 words"),
])
def test_wrongly_typed_inputs_get_one_line(site, quiet, field, value, message):
    with pytest.raises(AppError, match=message):
        segment(Client(site[1], verbose=False), SCENE, **{field: value})


@pytest.mark.parametrize("image, message", [
    ({"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, "was never uploaded"),
    ({"path": "/tmp/gradio/../../etc/passwd", "meta": {"_type": "gradio.FileData"}}, "was never uploaded"),
    ("a string", "must be a file uploaded"),
])
def test_payloads_gradio_would_fail_on_are_answered_in_one_line(site, quiet, image, message):
    data = [image, "circle", ["vanilla"], TOY_LABEL, 0.0, "model default", "1", "none"]
    answer = requests.post(f"{site[1]}gradio_api/call/segment", json={"data": data}, timeout=30)
    assert answer.status_code == 422 and message in answer.json()["detail"]
    short = requests.post(f"{site[1]}gradio_api/call/segment", json={"data": [None]}, timeout=30)
    assert short.status_code == 422 and "takes 8 input values, got 1" in short.json()["detail"]


def test_a_request_over_the_budget_is_refused_at_once_naming_its_cost(site, quiet):
    start = time.perf_counter()
    with pytest.raises(AppError, match=r"would take about \d+ s here .* choose fewer shifted passes"):
        segment(Client(site[1], verbose=False), SCENE, methods=tuple(METHODS), resolution="672", shifts="4",
                refine="pamr")
    assert time.perf_counter() - start < 10


def test_a_normal_request_is_served_while_a_heavy_one_runs(site, quiet, monkeypatch):
    from demo import budget

    url = site[1]
    # the server's cost unit, fixed here (it is timed on first use, and a busy machine makes that vary)
    monkeypatch.setitem(budget._units, "toy", (0.005, 0.0, 1.0))
    monkeypatch.setattr(budget, "_factors", {})
    heavy = Client(url, verbose=False).submit(
        handle_file(str(SCENE)), "circle, ring", ["vanilla", "pacl"], TOY_LABEL, 0.0, "448", "2", "none",
        api_name="/segment")

    deadline = time.time() + 60
    while not budget.heavy_lane.busy() and time.time() < deadline:
        time.sleep(0.05)
    assert budget.heavy_lane.busy(), "the heavy request runs in the heavy lane"
    with pytest.raises(AppError, match="another visitor's heavy request is running"):
        segment(Client(url, verbose=False), SCENE, methods=("vanilla", "pacl"), resolution="448", shifts="2")
    out = segment(Client(url, verbose=False), SCENE, methods=("vanilla", "pacl"))
    assert not heavy.done(), "the normal request did not wait for the heavy one"
    assert "could not run" not in out[METHODS.index("pacl") * SLOT]
    assert "2×2 shifted passes" in heavy.result()[METHODS.index("pacl") * SLOT]


def test_every_client_of_a_burst_gets_its_archive(site, quiet):
    def visit(_):
        client = Client(site[1], verbose=False)
        segment(client, SCENE, methods=("vanilla", "pacl"))
        return client.predict(api_name="/download")

    with ThreadPoolExecutor(max_workers=12) as pool:
        archives = list(pool.map(visit, range(12)))
    assert all(a is not None and "summary.csv" in zipfile.ZipFile(a).namelist() for a in archives)


def test_a_sessions_trained_head_is_its_own_and_its_files_go_with_it(site, quiet):
    demo, url, trainings, registry = site
    alice, bob = Client(url, verbose=False), Client(url, verbose=False)
    job = alice.submit(1, "star", 10, api_name="/train")
    job.result()
    label = next(c[0] for c in job.outputs()[-1][-1]["choices"] if c[0].startswith("Your PACL head"))
    out = segment(alice, SCENE, "background, star", ["pacl"], model=label)
    assert "could not run" not in out[METHODS.index("pacl") * SLOT]
    with pytest.raises(AppError, match="unknown model") as err:
        segment(bob, SCENE, "background, star", ["pacl"], model=label)
    assert label not in str(err.value).split("pick one of")[1]
    with pytest.raises(AppError) as err:
        segment(bob, SCENE, "star", ["pacl"], model="no such model")
    assert "Your PACL head" not in str(err.value)
    session = alice.session_hash
    files_box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "train-files")
    files = trainings.files(session)
    cached = [ui.cached_copy(f, files_box) for f in files]
    assert len(files) == 2 and all(c.is_file() for c in cached)
    assert requests.get(f"{url}gradio_api/file={cached[0]}", timeout=30).status_code == 200
    alice.close()  # the session ends: Gradio calls the page's unload
    deadline = time.time() + 60
    while trainings.files(session) and time.time() < deadline:
        time.sleep(0.2)
    assert not trainings.files(session) and label not in registry.labels
    assert not any(f.exists() for f in files) and not any(c.exists() for c in cached)
    assert requests.get(f"{url}gradio_api/file={cached[0]}", timeout=30).status_code != 200


def test_the_server_still_serves_afterwards(site, quiet):
    client = Client(site[1], verbose=False)
    out = segment(client, SCENE, methods=("vanilla", "pacl"))
    assert out[-1]["value"] == "circle"
    assert threading.active_count() < 200
