"""The clinicians' page (bentos/static/index.html) in a real browser against a real `bentoml serve`.

Debian's chromium (/usr/bin/chromium) driven by Playwright; Playwright never downloads a browser
here. The page is served by the service under test (`service` fixture of tests/service_fixtures.py:
a tiny exported model, real HTTP): a clinician enters the key, uploads a real radiograph, reads the
findings, looks at a heatmap, marks the result incorrect with the right findings ticked and sends it;
the feedback is then read back from the service's own feedback store. And with its PostgreSQL
feedback store stopped: the findings still come, the page says feedback is unavailable; restarted:
feedback works again without restarting the service.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from chexops.core.paths import shared_data
from mlflow_fixtures import postgres_server
from service_fixtures import start_service

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="/usr/bin/chromium is missing (apt-get install chromium): "
        "the page is tested in Debian's chromium, never a downloaded one",
    ),
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, service):
    """A fresh tab (own sessionStorage) that fails the test on a script error or a request that
    leaves the service: the page must load nothing from the network but the service itself."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, base_url=service.url)
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    foreign: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("request", lambda r: None if r.url.startswith((service.url, "data:", "blob:")) else foreign.append(r.url))
    yield tab
    context.close()
    assert not errors, f"script errors on the page: {errors}"
    assert not foreign, f"the page requested resources outside the service: {foreign}"


@pytest.fixture(scope="module")
def radiograph(tmp_path_factory) -> Path:
    """A real chest radiograph from the shared data; a generated PNG where the shared data is absent."""
    real = shared_data() / "real-cxr" / "nih_00000001_000.png"
    if real.is_file():
        return real
    path = tmp_path_factory.mktemp("webpage") / "generated_cxr.png"
    yy, xx = np.mgrid[0:256, 0:256]
    lungs = np.exp(-(((xx - 85) / 45.0) ** 2 + ((yy - 128) / 80.0) ** 2)) + np.exp(
        -(((xx - 171) / 45.0) ** 2 + ((yy - 128) / 80.0) ** 2)
    )
    Image.fromarray((255 * (0.85 - 0.6 * lungs).clip(0, 1)).astype(np.uint8)).save(path)
    return path


def feedback_record(service, request_id: str) -> dict | None:
    """The feedback the service stored for `request_id`, read from its own store."""
    from chexops.feedback.store import FeedbackStore

    url = service.env.get("CHEXOPS_FEEDBACK_URL") or f"sqlite:///{service.home / 'feedback' / 'feedback.db'}"
    store = FeedbackStore(url)
    try:
        return next((row for row in store.export_rows() if row["request_id"] == request_id), None)
    finally:
        store.close()


def analyse(page, key: str, image: Path) -> None:
    page.goto("/")
    page.get_by_label("API key").fill(key)
    page.locator("#file-input").set_input_files(str(image))
    page.locator("#analyse").click()


def wait_for_findings(page) -> None:
    """Until the findings are shown; fails with the page's own error message if one is shown instead."""
    page.locator("[data-testid=finding], [data-testid=error]:visible").first.wait_for()
    error = page.get_by_test_id("error")
    assert not error.is_visible(), f"the page shows an error instead of findings: {error.inner_text()}"


def test_upload_findings_heatmap_and_feedback(page, service, radiograph, tmp_path):
    model = httpx.get(f"{service.url}/model", timeout=10).json()
    analyse(page, service.api_key, radiograph)

    # The findings: one per label of the model, sorted by probability, each with its threshold.
    wait_for_findings(page)
    rows = page.locator("[data-testid=finding]")
    assert rows.count() == len(model["labels"])
    shown = rows.evaluate_all("""els => els.map(e => ({label: e.dataset.label, probability:
    Number(e.dataset.probability),
        threshold: Number(e.dataset.threshold), positive: e.dataset.positive === 'true',
        highlighted: e.classList.contains('positive'), text: e.innerText}))""")
    assert sorted(f["label"] for f in shown) == sorted(model["labels"])
    probabilities = [f["probability"] for f in shown]
    assert probabilities == sorted(probabilities, reverse=True)
    for finding in shown:
        assert finding["threshold"] == pytest.approx(model["thresholds"][finding["label"]])
        assert f"threshold {round(finding['threshold'] * 100)}%" in finding["text"]
        assert finding["positive"] == (finding["probability"] >= finding["threshold"]) == finding["highlighted"]
    positives = {f["label"] for f in shown if f["positive"]}
    assert 0 < len(positives) < len(shown), "the test model is meant to give positive and negative findings"

    # The page shows what the API answers for the same image.
    with open(radiograph, "rb") as fh:
        api = httpx.post(
            f"{service.url}/predict", headers=service.headers, files={"image": ("x", fh.read())}, timeout=30
        ).json()
    assert {f["label"]: f["probability"] for f in shown} == pytest.approx(
        {f["label"]: f["probability"] for f in api["findings"]}
    )
    request_id = page.get_by_test_id("request-id").inner_text().strip()
    assert len(request_id) >= 16 and request_id != api["request_id"]
    assert page.get_by_test_id("priority").get_attribute("data-value") == api["priority"]
    assert model["name"] in page.get_by_test_id("model-info").inner_text()
    assert model["version"] in page.get_by_test_id("model-info").inner_text()

    # The heatmap of the most probable finding: a PNG from /explain, shown and labelled as approximate.
    top = shown[0]["label"]
    with page.expect_response(lambda r: r.url.endswith("/explain")) as explained:
        page.get_by_test_id("heatmap-toggle").first.click()
    assert explained.value.status == 200 and explained.value.headers["content-type"] == "image/png"
    page.wait_for_function("""() => { const img = document.getElementById('heatmap-image');
        return !img.hidden && img.complete && img.naturalWidth > 0; }""")
    assert "approximate localisation, not a diagnosis" in page.get_by_test_id("viewer-caption").inner_text()
    assert top in page.get_by_test_id("viewer-caption").inner_text()
    assert page.get_by_test_id("heatmap-toggle").first.get_attribute("aria-pressed") == "true"
    page.screenshot(path=str(tmp_path / "webpage-findings.png"), full_page=True)

    # Incorrect: nothing is pre-ticked (a form that starts at the model's answer would send it back as the
    # truth). Ticking exactly the predicted positives is the model's own answer: the page refuses to send it.
    page.get_by_test_id("feedback-incorrect").click()
    boxes = page.get_by_test_id("feedback-label")
    assert not any(b.is_checked() for b in boxes.all())
    for label in positives:
        page.get_by_label(label, exact=True).check()
    page.get_by_test_id("feedback-send").click()
    assert "model's own findings" in page.get_by_test_id("feedback-error").inner_text()
    assert feedback_record(service, page.get_by_test_id("request-id").inner_text().strip()) is None
    # One more finding ticked: it differs from the prediction, and is sent.
    extra = next(f["label"] for f in shown if not f["positive"])
    page.get_by_label(extra, exact=True).check()
    page.get_by_label("Note").fill("browser test: one more finding")
    with page.expect_response(lambda r: r.url.endswith("/feedback")) as sent:
        page.get_by_test_id("feedback-send").click()
    assert sent.value.status == 200
    status = page.get_by_test_id("feedback-status")
    status.wait_for()
    assert "feedback was recorded" in status.inner_text()
    assert page.get_by_test_id("feedback-correct").is_disabled()

    # It arrived: the service's store holds it for this request, with the ticked finding.
    record = feedback_record(service, request_id)
    assert record is not None, f"no feedback stored for {request_id}"
    assert record["correct"] is False
    assert record["labels"][extra] == 1
    assert {label for label, value in record["labels"].items() if value == 1} == positives | {extra}
    assert set(record["labels"]) == set(model["labels"])

    # The key lives in this tab's sessionStorage, never in the URL.
    assert service.api_key not in page.url
    assert page.evaluate("sessionStorage.getItem('chexops.apiKey')") == service.api_key


def test_wrong_key_shows_the_401_message(page, service, radiograph):
    with page.expect_response(lambda r: r.url.endswith("/predict")) as answered:
        analyse(page, "not-a-valid-key", radiograph)
    assert answered.value.status == 401
    error = page.get_by_test_id("error")
    error.wait_for()
    assert "API key was not accepted" in error.inner_text()
    assert page.evaluate("document.activeElement.id") == "api-key"
    assert page.get_by_test_id("results").is_hidden()


def test_dicom_and_unsupported_file(page, service, shared, tmp_path):
    dicom = shared / "real-cxr" / "siim_cr_chest_pa.dcm"
    analyse(page, service.api_key, dicom)
    assert "DICOM" in page.locator("#viewer-placeholder").inner_text()  # the browser cannot preview it
    wait_for_findings(page)
    page.get_by_test_id("heatmap-toggle").first.click()  # the heatmap shows the DICOM's pixels
    page.wait_for_function(
        "() => { const i = document.getElementById('heatmap-image'); return !i.hidden && i.naturalWidth > 0; }"
    )

    text = tmp_path / "report.png"  # a name that lies: the type comes from the content
    text.write_bytes(b"not an image at all\n" * 10)
    page.locator("#file-input").set_input_files(str(text))
    page.locator("#analyse").click()
    error = page.get_by_test_id("error")
    error.wait_for()
    assert "not a supported image" in error.inner_text()


def test_drag_and_drop_selects_the_file(page, service, radiograph):
    page.goto("/")
    page.get_by_label("API key").fill(service.api_key)
    data = list(radiograph.read_bytes())
    transfer = page.evaluate_handle(
        """bytes => { const t = new DataTransfer();
        t.items.add(new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'})); return t; }""",
        data,
    )
    page.get_by_test_id("dropzone").dispatch_event("drop", {"dataTransfer": transfer})
    assert "dropped.png" in page.get_by_test_id("file-name").inner_text()
    page.wait_for_function(
        "() => { const i = document.getElementById('preview-image'); return !i.hidden && i.naturalWidth > 0; }"
    )
    assert page.locator("#analyse").is_enabled()


def test_the_feedback_store_down_and_back(browser, served_model, tmp_path):
    """A real PostgreSQL store, stopped under a running service: /predict answers (not stored, no 5xx),
    /feedback is 503 with Retry-After, the page tells the clinician feedback is unavailable; restarted:
    the service reconnects by itself and feedback is stored again."""
    image = shared_data() / "real-cxr" / "nih_00000001_000.png"
    data = image.read_bytes() if image.is_file() else _generated_png(tmp_path)
    with postgres_server() as postgres:
        svc = start_service(served_model, log_name="store-down.log", CHEXOPS_FEEDBACK_URL=postgres.url)
        try:

            def predict():
                return httpx.post(f"{svc.url}/predict", headers=svc.headers, files={"image": ("x", data)}, timeout=30)

            assert predict().json()["feedback_available"] is True
            postgres.stop()
            down = predict()
            assert down.status_code == 200 and down.json()["feedback_available"] is False, down.text
            assert len(down.json()["findings"]) == len(httpx.get(f"{svc.url}/model", timeout=10).json()["labels"])
            refused = httpx.post(
                f"{svc.url}/feedback",
                headers=svc.headers,
                json={"request_id": down.json()["request_id"], "correct": True},
                timeout=30,
            )
            assert (
                refused.status_code == 503
                and refused.headers["retry-after"]
                and "unavailable" in refused.json()["error"]
            )
            assert httpx.get(f"{svc.url}/model", timeout=10).json()["runtime"]["feedback_store"]["available"] is False

            context = browser.new_context(viewport={"width": 1280, "height": 1000}, base_url=svc.url)
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto("/")
            page.get_by_label("API key").fill(svc.api_key)
            page.locator("#file-input").set_input_files({"name": "cxr.png", "mimeType": "image/png", "buffer": data})
            page.locator("#analyse").click()
            wait_for_findings(page)
            notice = page.get_by_test_id("feedback-unavailable")
            notice.wait_for()
            assert "Feedback is unavailable" in notice.inner_text()
            assert page.get_by_test_id("feedback-correct").is_disabled()
            context.close()
            assert not errors, errors

            postgres.start()
            deadline = time.monotonic() + 10  # the store is tried again a second after a failure (RETRY_SECONDS)
            while not (back := predict()).json().get("feedback_available") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert back.status_code == 200 and back.json()["feedback_available"] is True, back.text
            stored = httpx.post(
                f"{svc.url}/feedback",
                headers=svc.headers,
                json={"request_id": back.json()["request_id"], "correct": True},
                timeout=30,
            )
            assert stored.status_code == 200 and stored.json()["created"] is True
            assert "Traceback" not in svc.logs()
        finally:
            svc.stop()


def _generated_png(tmp_path: Path) -> bytes:
    path = tmp_path / "generated.png"
    Image.fromarray((np.random.default_rng(0).random((128, 128)) * 255).astype(np.uint8)).save(path)
    return path.read_bytes()


def test_an_unevaluated_model_is_announced_on_the_page(page, service):
    """The test model was exported without the gate (`evaluated: false` in its metadata): /model says
    so and the page shows the warning banner."""
    assert httpx.get(f"{service.url}/model", timeout=10).json()["evaluated"] is False
    page.goto("/")
    banner = page.get_by_test_id("unevaluated-warning")
    banner.wait_for(state="visible")
    assert "Unevaluated model" in banner.inner_text()


def test_the_page_says_what_the_model_is(page, service):
    """/model says what data the model learnt from, what it is for and that it is not for clinical use (the
    test model's metadata does not say where its data came from); the page shows it in a banner, with how to
    read a score and its threshold."""
    info = httpx.get(f"{service.url}/model", timeout=10).json()
    assert info["clinical_use"] is False and info["training_data"]["kind"] == "unknown"
    assert "not for clinical use" in info["warning"].lower() and info["intended_use"]
    page.goto("/")
    banner = page.get_by_test_id("model-warning")
    banner.wait_for(state="visible")
    assert info["warning"] in banner.inner_text()
    assert "Learnt from: " + info["training_data"]["description"] in banner.inner_text()
    assert "Intended use: " + info["intended_use"] in banner.inner_text()
    page.wait_for_function("() => document.getElementById('probability-note').textContent.length > 0")
    assert "not a calibrated chance" in page.get_by_test_id("probability-note").text_content()
