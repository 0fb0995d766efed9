"""The browser demo (app.py): its answers are SpaceGroupPredictor's, in Python and in a browser.

Needs gradio (``pip install -e .[demo]``); the browser test also needs Chromium, its driver and
selenium (``apt-get install chromium chromium-driver``, ``pip install selenium``) and is skipped
without them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e .[demo]")

from physmoe import XRDFeatureExtractor  # noqa: E402
from physmoe.inference import SpaceGroupPredictor  # noqa: E402
from tiny_models import save_tiny_model  # noqa: E402

# Gradio's own use of pandas 3 (gradio/queueing.py) warns; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.*")

ROOT = Path(__file__).resolve().parents[1]
NACL = ROOT / "examples" / "NaCl_rocksalt.cif"
COBALT = 1.78897
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
    "--disable-background-networking --disable-component-update --disable-sync "
    "--disable-dev-shm-usage --window-size=1280,1400"
).split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny seeded model with a calibration temperature and trained BatchNorm statistics."""
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def app():
    """app.py, imported from the repository root."""
    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference(model_dir) -> SpaceGroupPredictor:
    """The package's own predictor, which the app must agree with."""
    return SpaceGroupPredictor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def handler(app, model_dir):
    """What the demo's Predict button calls, from a demo built with the tiny model."""
    demo = app.build_demo(model=str(model_dir))
    assert isinstance(demo, gr.Blocks)
    (function,) = [f for f in demo.fns.values() if f.api_name == "predict"]
    assert [type(c) for c in function.inputs] == [gr.File, gr.Number, gr.Slider]
    return function.fn


def write_pattern(path: Path, header: str = "") -> Path:
    """A seeded two-column pattern: NaCl's lines measured with Co K-alpha, plus noise."""
    rng = np.random.default_rng(0)
    two_theta = np.linspace(10, 110, 2000)
    intensity = 5 + rng.random(two_theta.size)
    for position, height in ((36.9, 30), (42.9, 100), (62.3, 60), (74.6, 15), (78.6, 35)):
        intensity += height * np.exp(-0.5 * ((two_theta - position) / 0.15) ** 2)
    np.savetxt(path, np.column_stack([two_theta, intensity]), header=header)
    return path


def assert_same_answer(answer, expected) -> None:
    """The app's table, crystal systems and summary say what ``expected`` says."""
    table, systems, _, summary = answer
    candidates = expected.candidates
    assert table["rank"].tolist() == [1, 2, 3, 4, 5]
    assert table["no."].tolist() == [c.space_group for c in candidates]
    assert table["space group"].tolist() == [c.symbol for c in candidates]
    assert table["crystal system"].tolist() == [c.crystal_system for c in candidates]
    np.testing.assert_allclose(table["probability"], [c.probability for c in candidates], atol=5e-5)
    assert systems == pytest.approx(expected.crystal_system_probabilities, abs=1e-7)
    best = expected.best
    assert f"Most probable: `{best.symbol}` (no. {best.space_group})" in summary
    assert f"probability {best.probability:.3f}" in summary
    for symbol in expected.indistinguishable:
        assert f"`{symbol}`" in summary
    assert f"(summed probability {expected.indistinguishable_probability:.3f})" in summary
    assert ("uncertain" in summary) == expected.uncertain


def plotted(figure) -> tuple[np.ndarray, np.ndarray]:
    x, y = figure.axes[0].lines[0].get_data()
    return np.asarray(x), np.asarray(y)


def test_cif_answer_is_the_predictors(handler, reference):
    answer = handler(str(NACL), 0, 0.0)
    expected = reference.predict_file(NACL, top_k=5)
    assert_same_answer(answer, expected)
    assert f"simulated at the model's {reference.grid.wavelength:g} Å" in answer[3]
    # The plot is the model input: the CIF's clean pattern on the model grid, maximum 1.
    x, y = plotted(answer[2])
    np.testing.assert_allclose(x, reference.grid.values())
    pattern = reference.pattern_from_cif(NACL).numpy()
    np.testing.assert_allclose(y, pattern / pattern.max(), rtol=1e-5, atol=1e-7)


def test_pattern_file_answer_is_the_predictors(handler, reference, tmp_path):
    path = write_pattern(tmp_path / "nacl_cobalt.xy", header=f"Wavelength: {COBALT} A")
    answer = handler(str(path), 0, 0.0)
    expected = reference.predict_file(path, top_k=5)
    assert_same_answer(answer, expected)
    assert expected.wavelength_note and f"Wavelength: {expected.wavelength_note}" in answer[3]
    # The file converted from Co K-alpha onto the model grid, as the feature extractor does it.
    two_theta, intensity = np.loadtxt(path, unpack=True)
    inputs = XRDFeatureExtractor.from_config(reference.model.config)(
        two_theta, intensity, wavelength=COBALT
    )["input_values"][0]
    x, y = plotted(answer[2])
    np.testing.assert_allclose(x, reference.grid.values())
    np.testing.assert_allclose(y, inputs, rtol=1e-5, atol=1e-7)


def test_given_wavelength_and_min_confidence(handler, reference, tmp_path):
    path = write_pattern(tmp_path / "nacl.xy")  # states no wavelength
    answer = handler(str(path), COBALT, 0.99)
    expected = reference.predict_file(path, wavelength=COBALT, top_k=5, min_confidence=0.99)
    assert expected.uncertain
    assert_same_answer(answer, expected)
    assert "**uncertain**" in answer[3] and "min confidence 0.99" in answer[3]
    assert f"Wavelength: {COBALT:g} Å, as given" in answer[3]
    # Without a wavelength the file is read at the model's, and the note says so.
    expected = reference.predict_file(path, top_k=5)
    answer = handler(str(path), 0, 0.0)
    assert_same_answer(answer, expected)
    assert "assumed the model's" in expected.wavelength_note
    assert expected.wavelength_note in answer[3]


@pytest.mark.parametrize(
    "name, text", [("empty.xy", ""), ("garbage.txt", "hello world\nthis is not a pattern\n")]
)
def test_bad_input_shows_the_packages_message(handler, reference, tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as direct:
        reference.predict_file(path)
    with pytest.raises(gr.Error) as shown:
        handler(str(path), 0, 0.0)
    # The package's text, without the upload folder.
    assert shown.value.message == str(direct.value).replace(f"{tmp_path}{os.sep}", "")
    assert shown.value.message.startswith(f"{name}: ")
    with pytest.raises(gr.Error, match="Upload a pattern file or a CIF"):
        handler(None, 0, 0.0)


def test_model_location(app, monkeypatch, tmp_path):
    monkeypatch.setenv("PHYSMOE_MODEL", "someone/some-model")
    assert app.model_location() == "someone/some-model"
    monkeypatch.delenv("PHYSMOE_MODEL")

    def no_weights():
        raise FileNotFoundError("no pretrained checkpoint")

    monkeypatch.setattr(app, "default_checkpoint", no_weights)
    monkeypatch.setattr(app, "QUICKSTART", tmp_path / "quickstart")
    with pytest.raises(FileNotFoundError, match="no model to serve.*PHYSMOE_MODEL"):
        app.model_location()
    (tmp_path / "quickstart").mkdir()
    (tmp_path / "quickstart" / "config.json").write_text("{}")
    assert app.model_location() == str(tmp_path / "quickstart")


# ---------------------------------------------------------------------------- in a browser


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """Headless Chromium (Debian's) driven by selenium through Debian's chromedriver."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "needs Chromium: apt-get install chromium chromium-driver; pip install selenium"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="needs selenium: pip install selenium"
    )
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # to see every request
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield driver
    driver.quit()


@pytest.fixture
def served(app, model_dir):
    """The demo with the tiny model, on a free localhost port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = app.build_demo(model=str(model_dir))
    demo.launch(
        prevent_thread_lock=True,
        server_name="127.0.0.1",
        server_port=port,
        share=False,
        quiet=True,
        ssr_mode=False,
    )
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_in_a_browser(browser, served, reference, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(served)

    def submit(path: Path) -> None:
        upload = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#file input[type=file]"))
        upload.send_keys(str(path))
        # Uploaded once the server offers it back for download.
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, f"#file a[download='{path.name}']"))
        browser.find_element(By.ID, "predict").click()

    submit(NACL)
    summary = wait.until(
        lambda b: re.search(
            r"Most probable:\s*(\S+)\s*\(no\. (\d+)\)", b.find_element(By.ID, "summary").text
        )
    )
    best = reference.predict_file(NACL).best
    assert (summary.group(1), int(summary.group(2))) == (best.symbol, best.space_group)
    rows = browser.find_element(By.ID, "top5").text
    assert best.symbol in rows and str(round(best.probability, 4)) in rows
    browser.save_screenshot(str(tmp_path / "demo.png"))
    assert (tmp_path / "demo.png").stat().st_size > 10_000

    # A file the package refuses: its message in the page, no traceback.
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("hello world\n")
    browser.find_element(By.CSS_SELECTOR, "#file button[aria-label='Clear']").click()
    submit(garbage)
    with pytest.raises(ValueError) as direct:
        reference.predict_file(garbage)
    message = str(direct.value).replace(f"{tmp_path}{os.sep}", "")
    toast = "[data-testid='toast-body']"  # the error pop-up, once its text is in
    wait.until(lambda b: message in b.find_element(By.CSS_SELECTOR, toast).text)
    assert "Traceback" not in browser.page_source

    # Nothing left this machine: every request went to the app (or stayed inside Chromium).
    urls = set()
    for entry in browser.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        if event["method"] == "Network.requestWillBeSent":
            urls.add(event["params"]["request"]["url"])
    outside = [
        url
        for url in urls
        if urlparse(url).scheme in ("http", "https", "ws", "wss")
        and urlparse(url).hostname != "127.0.0.1"
    ]
    assert urls and not outside
