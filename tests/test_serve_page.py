"""The web page at / of the live app, in headless Chromium (Debian's package, driven by playwright).

Pick a class by name, generate, watch every decoding step arrive, check the images are the API's;
then click a generated image, draw a box on it and inpaint. Screenshots go to the test's tmp folder
(with MASKGIT_UPDATE_DOCS=1 the first also to docs/serve_page.png, the README's picture).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
import requests
from serve_helpers import free_port, local_app, serve_app, train_tiny_models

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As the platform notes say: no sandbox as root, no GPU, and nothing that calls out of the machine.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve_page.png"

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium: scripts/setup.sh installs Debian's package"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory, fashion_mnist_small):
    from jobs.serve.schema import ServeOptions

    images, labels = fashion_mnist_small
    trained = train_tiny_models(tmp_path_factory.mktemp("page"), images, labels, steps=60, class_names=NAMES)
    options = ServeOptions(
        transformer=trained.transformer, tokenizer=trained.tokenizer, model_name="tiny-fashion",
        port=free_port(), max_batch_images=8, max_images_per_request=4, max_steps=8,
    )  # fmt: skip
    return options


@pytest.fixture(scope="module")
def app_url(models):
    with serve_app(models) as url:
        yield url


@contextlib.contextmanager
def _browser_page(url: str):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # a fresh profile
        page = browser.new_page(viewport={"width": 1000, "height": 640})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("console", lambda message: message.type == "error" and problems.append(message.text))
        page.problems = problems
        page.goto(url)
        yield page
        browser.close()


@pytest.fixture(scope="module")
def page(app_url):
    with _browser_page(f"{app_url}/") as page:
        page.wait_for_selector("body[data-ready=true]", timeout=60_000)
        yield page


def _record_steps(page) -> None:
    """Remember every step number the grid shows (a MutationObserver in the page; its records keep the
    value each change replaced, so none is lost when several arrive in one task)."""
    page.evaluate(
        """() => {
            const grid = document.getElementById('grid');
            window.stepsObserver?.disconnect();
            window.stepsReplaced = [];
            window.stepsObserver = new MutationObserver((records) =>
                records.forEach((r) => window.stepsReplaced.push(r.oldValue)));
            window.stepsObserver.observe(
                grid, {attributes: true, attributeOldValue: true, attributeFilter: ['data-steps']});
        }"""
    )


def _steps_seen(page) -> list[str]:
    replaced, last = page.evaluate("[window.stepsReplaced, document.getElementById('grid').dataset.steps]")
    return [*replaced[1:], last]


def test_generate_by_class_name_and_watch_the_steps(page, app_url, tmp_path):
    options = page.locator("#class option").all_inner_texts()
    assert options == NAMES
    assert page.inner_text("#model").startswith("tiny-fashion")
    page.select_option("#class", label="Sneaker")
    page.fill("#count", "3")
    page.fill("#steps", "4")
    page.fill("#seed", "7")
    _record_steps(page)
    page.click("#run")
    page.wait_for_selector("#grid[data-done=true]", timeout=120_000)
    assert _steps_seen(page) == ["1", "2", "3", "4"]  # one event per step, in order
    finals = page.locator("#grid img.final")
    assert finals.count() == 3
    assert page.locator("#grid figcaption").all_inner_texts() == [f"Sneaker · seed {s}" for s in (7, 8, 9)]
    assert page.evaluate("[...document.querySelectorAll('#grid img')].map(i => i.naturalWidth)") == [32] * 3
    # The page shows exactly what the API answers for the same request.
    defaults = requests.get(f"{app_url}/v1/models/tiny-fashion", timeout=30).json()["sampling_defaults"]
    body = {"class_id": 7, "count": 3, "seed": 7, "steps": 4, "cfg_weight": defaults["cfg_weight"],
            "temperature": defaults["temperature"], "order": defaults["order"]}  # fmt: skip
    api = requests.post(f"{app_url}/v1/generate", json=body, timeout=120).json()
    shown = [finals.nth(i).get_attribute("src") for i in range(3)]
    assert shown == [f"data:image/png;base64,{image['png']}" for image in api["images"]]
    page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)
    if os.environ.get("MASKGIT_UPDATE_DOCS") == "1":
        shutil.copy(tmp_path / "generate.png", DOCS_SCREENSHOT)
    assert not page.problems, page.problems


def test_inpaint_a_box_drawn_on_a_generated_image(page, tmp_path):
    if page.locator("#grid img.final").count() == 0:
        pytest.skip("needs the images of the generate test")
    page.locator("#grid img.final").first.click()  # loads it into the inpainting canvas
    assert page.get_attribute("#tab-inpaint", "aria-selected") == "true"
    assert page.inner_text("#run") == "Inpaint"
    canvas = page.locator("#canvas").bounding_box()  # 256 px on screen for a 32 px image
    page.mouse.move(canvas["x"] + 64, canvas["y"] + 64)
    page.mouse.down()
    page.mouse.move(canvas["x"] + 192, canvas["y"] + 160, steps=6)
    page.mouse.up()
    assert page.inner_text("#status") == "box: top 8, left 8, 12×16 px"
    page.select_option("#class", label="Bag")
    page.fill("#count", "2")
    _record_steps(page)
    page.click("#run")
    page.wait_for_selector("#grid[data-done=true]", timeout=120_000)
    assert page.locator("#grid img.final").count() == 2
    assert _steps_seen(page) == ["1", "2", "3", "4"]
    assert page.inner_text("#status").startswith("done: 2 image(s)")
    page.screenshot(path=str(tmp_path / "inpaint.png"), full_page=True)
    assert not page.problems, page.problems


def test_a_refused_request_leaves_no_placeholders(page):
    page.evaluate("document.getElementById('steps').removeAttribute('max')")  # the server refuses it
    page.click("#tab-generate")
    page.fill("#steps", "100")
    page.click("#run")
    page.wait_for_selector("#status.error", timeout=60_000)
    assert "at most 8" in page.inner_text("#status")
    assert page.locator("#grid figure").count() == 0  # no "waiting…" cards left behind
    page.fill("#steps", "4")
    page.problems.clear()  # the browser logs the refused request's 422 as a console error


def test_the_page_asks_for_a_key_when_the_server_needs_one(models, page):
    from jobs.serve.auth import digest
    from jobs.serve.continuous import ContinuousSampler
    from jobs.serve.engine import SamplerEngine
    from jobs.serve.ingress import build_http_app

    engine = SamplerEngine(models.transformer, models.tokenizer, name="tiny-fashion", device="cpu")
    sampler = ContinuousSampler(engine, max_rows=16)
    app = build_http_app(sampler, {**engine.info(), "batching": "continuous"}, models, [digest("sk-page")])
    with local_app(app) as url:
        page = page.context.browser.new_page(viewport={"width": 1000, "height": 640})  # a tab of its own
        page.goto(f"{url}/")
        page.wait_for_selector("#key-form:not([hidden])", timeout=60_000)
        assert "requires an API key" in page.inner_text("#status")
        page.fill("#api-key", "sk-page")
        page.click("#key-form button")
        page.wait_for_selector("body[data-ready=true]", timeout=60_000)
        assert page.locator("#class option").all_inner_texts() == NAMES
        page.fill("#count", "1")
        page.fill("#steps", "2")
        page.click("#run")
        page.wait_for_selector("#grid[data-done=true]", timeout=120_000)
        assert page.locator("#grid img.final").count() == 1
        page.close()
