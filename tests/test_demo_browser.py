"""The demo in a real headless browser (Debian's Chromium via Playwright): pick an example, run it, see results.

Set PACL_SCREENSHOT=path/to/file.png to also keep the page's screenshot (docs/screenshot.png is made this way), and
PACL_PATCH_SCREENSHOT=path/to/file.png the "Point at a patch" tab's (docs/patch.png).
"""

import os
import re
import shutil
from pathlib import Path

import pytest

from demo import build_demo
from demo.models import default_registry
from demo.ui import load_examples
from tests.helpers import demo_model, serving

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
PHOTOS = {"chelsea.jpg", "coffee.jpg", "astronaut.jpg"}

pytestmark = [pytest.mark.slow,  # a real browser on a live server (python -m pytest -m "not slow" skips it)
              pytest.mark.skipif(not Path(CHROMIUM).is_file() and shutil.which("chromium") is None,
                                 reason="Debian's chromium is not installed (.ci/run installs it)")]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    request, _ = demo_model(folder)
    with serving(build_demo(model=request, registry=default_registry(folder))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or CHROMIUM, args=BROWSER_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(browser, url):
    page = browser.new_page(viewport={"width": 1480, "height": 1000})
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#run-button", timeout=60_000)
    yield page
    page.close()


TOY_EXAMPLES = [row for row in load_examples() if Path(row[0]).name not in PHOTOS]


def example_row() -> int:
    """The first toy-world example: the demo starts on the toy model, which lists its scenes first."""
    return 0


def test_pick_an_example_run_it_and_see_the_results(page, tmp_path):
    row = example_row()
    words = TOY_EXAMPLES[row][1]
    page.click(f"[data-testid='dataset-cell-{row}-0']")
    vocab = page.get_by_label("Vocabulary (comma-separated)")
    page.wait_for_function("w => document.querySelector('textarea').value === w", arg=words, timeout=10_000)
    assert vocab.input_value() == words
    page.locator("#input-image img").first.wait_for(state="visible", timeout=30_000)  # the example's image is in
    page.click("#run-button")
    for method in ("vanilla", "pacl"):  # both method columns show their overlay and their heatmap sheet
        column = page.locator(f"#col-{method}")
        column.locator("img").nth(1).wait_for(state="visible", timeout=60_000)
        assert column.locator("img").count() == 2  # two files per method, whatever the number of words
    page.wait_for_function("() => [...document.querySelectorAll('.method-col img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
    first_word = words.split(",")[0].strip()
    page.get_by_role("gridcell", name=first_word).first.wait_for(timeout=30_000)
    page.get_by_text(re.compile(r"pacl-results-.*\.zip")).first.wait_for(timeout=30_000)  # the download
    assert page.locator("[data-testid='toast-body']").count() == 0  # no error or warning
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000
    if os.environ.get("PACL_SCREENSHOT"):
        shutil.copy(shot, os.environ["PACL_SCREENSHOT"])


def test_teaching_view_explains_the_first_word(page):
    page.get_by_role("tab", name="How PACL sees this word").click()
    first_word = TOY_EXAMPLES[example_row()][1].split(",")[0].strip()
    label = page.get_by_text(f"s(x, “{first_word}”): patch–word cosine")
    label.first.wait_for(state="visible", timeout=60_000)
    page.get_by_text("CLS cosine =").first.wait_for(state="visible", timeout=10_000)
    assert page.get_by_text(f"a(x, “{first_word}”): attention over patches").count() >= 1
    page.get_by_role("tab", name="Compare methods").click()


def test_empty_vocabulary_shows_a_visible_message(page):
    page.get_by_label("Vocabulary (comma-separated)").fill(" , ")
    page.click("#run-button")
    toast = page.locator("[data-testid='toast-body']", has_text="no words given")
    toast.first.wait_for(state="visible", timeout=30_000)
    assert page.locator("#run-button").is_enabled()  # the page is still usable


def test_toy_model_lists_its_scenes_first_and_says_photos_need_real_weights(page):
    first = page.locator("[data-testid='dataset-cell-0-0']").first
    assert "toy_01" in (first.inner_html() or "")  # the first example is a toy scene
    assert page.get_by_text("these need real CLIP weights").count() >= 1


def test_point_at_a_patch(page, tmp_path):
    """Click a point of the picture: its patch is outlined and the page says what it matches, from the kept pass."""
    words = TOY_EXAMPLES[example_row()][1]
    page.click(f"[data-testid='dataset-cell-{example_row()}-0']")
    page.wait_for_function("w => document.querySelector('textarea').value === w", arg=words, timeout=10_000)
    page.locator("#input-image img").first.wait_for(state="visible", timeout=30_000)
    page.get_by_role("tab", name="Point at a patch").click()
    status = page.locator("#patch-status")
    status.get_by_text("new backbone pass").wait_for(timeout=60_000)  # opening the tab: the centre patch
    picture = page.locator("#patch-picture img").first
    picture.wait_for(state="visible", timeout=30_000)
    box = picture.bounding_box()
    page.mouse.click(box["x"] + 0.8 * box["width"], box["y"] + 0.3 * box["height"])
    status.get_by_text("kept pass").wait_for(timeout=30_000)  # the click read the kept pass
    x, y = (float(page.locator(f"#patch-{a} input").input_value()) for a in "xy")
    assert x > 48 and y < 48  # right of the centre, above it
    assert f"row {int(y // 8) + 1}, column {int(x // 8) + 1} of 12×12" in status.inner_text()  # 8 px patches
    for element in ("#patch-bars img", "#patch-coherence img", "#patch-large img"):
        page.locator(element).first.wait_for(state="visible", timeout=30_000)
    toasts = page.locator("[data-testid='toast-body']").all_inner_texts()
    assert all("no words given" in t for t in toasts), toasts  # no message but the one an earlier test left
    shot = tmp_path / "patch.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("PACL_PATCH_SCREENSHOT"):
        shutil.copy(shot, os.environ["PACL_PATCH_SCREENSHOT"])
    page.locator("#patch-x input").fill("500")
    page.click("#patch-button")
    page.locator("[data-testid='toast-body']", has_text="outside").first.wait_for(state="visible", timeout=30_000)
    page.get_by_role("tab", name="Compare methods").click()


# ---- "Train PACL yourself" -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_site(browser, tmp_path_factory):
    from demo.training import Trainings
    from pacl_core.toy.live import LiveConfig

    trainings = Trainings(LiveConfig(steps=20, pool=32, check=4, every=5))
    registry = default_registry(tmp_path_factory.mktemp("no-checkpoints"))
    with serving(build_demo(model="toy", registry=registry, trainings=trainings)) as url:
        yield browser, url, trainings, registry


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1480, "height": 1000})
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#run-button", timeout=60_000)
    page.get_by_role("tab", name="Train PACL yourself").click()
    page.locator("#train-button").wait_for(state="visible", timeout=10_000)
    return page


def test_train_watch_it_learn_then_segment_with_the_head(train_site):
    browser, url, _, _ = train_site
    page = _open(browser, url)
    page.click("#train-button")
    page.locator("#train-status", has_text="Done in").wait_for(timeout=120_000)
    assert page.locator("#train-pacl-mask img").count() == 1
    page.locator("#train-files", has_text=".safetensors").wait_for(timeout=10_000)
    assert page.locator("#train-files", has_text=".json").count() == 1
    page.get_by_role("tab", name="Compare methods").click()
    row = example_row()
    page.click(f"[data-testid='dataset-cell-{row}-0']")
    page.locator("#input-image img").first.wait_for(state="visible", timeout=30_000)
    page.get_by_label("Model").click()
    page.get_by_role("option", name=re.compile(r"^Your PACL head 1 ")).click()
    page.click("#run-button")
    column = page.locator("#col-pacl")
    column.locator("img").nth(1).wait_for(state="visible", timeout=60_000)
    assert page.locator("[data-testid='toast-body']").count() == 0
    page.close()


def test_closing_the_tab_stops_its_training(train_site):
    import time

    browser, url, trainings, registry = train_site
    page = _open(browser, url)
    steps = page.get_by_label("Training steps").first
    steps.fill("1000")
    steps.press("Enter")
    page.click("#train-button")
    page.locator("#train-status", has_text="Step").wait_for(timeout=120_000)
    assert len(trainings.running()) == 1
    page.close()
    deadline = time.time() + 60
    while trainings.running() and time.time() < deadline:
        time.sleep(0.2)
    assert trainings.running() == [], "the closed tab's run stopped"
    assert not any(label.startswith("Your PACL head") for label in registry.labels), "and its heads are gone"


@pytest.mark.slow
def test_a_thin_upload_gets_a_visible_one_line_message(page, tmp_path):
    from PIL import Image

    thin = tmp_path / "thin strip.png"
    Image.new("RGB", (300, 1), (200, 40, 40)).save(thin)
    page.locator("#input-image input[type=file]").set_input_files(str(thin))
    page.get_by_label("Vocabulary (comma-separated)").fill("circle, ring")
    page.locator("#input-image img").first.wait_for(state="visible", timeout=30_000)
    page.click("#run-button")
    toast = page.locator("[data-testid='toast-body']", has_text="thin strip.png: the 300×1 image is too small")
    toast.first.wait_for(state="visible", timeout=30_000)
    assert page.locator("#run-button").is_enabled()
