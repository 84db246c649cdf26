"""The clinic endpoint (bentos/service.py) as clinics use it: a real `bentoml serve` process, real HTTP.

One server serves most tests (module scope); the SIGKILL test starts its own twice. Radiographs: the
team's real samples when present (PNG, DICOM MONOCHROME1/2, JPEG 2000), synthetic PNG/JPEG/DICOM
always. Also: every bad upload is a 4xx with a JSON `error`, auth and rate limits, heatmaps, durable
and idempotent feedback, no patient identifier in the store, the logs or the exported dataset,
metrics, the feedback export read back by the training code, and `bentoml build`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from chexops.core.processes import ServerProcess, free_port
from service_fixtures import API_KEY, EXPORT, OTHER_KEY, ROOT, ServedModel, start_service
from support import child_env, dicom_bytes, dicom_dataset, run_cli

LABEL_COUNT = 14


# --- images -----------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def chest(size: int = 96) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-(((x - 0.3) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(
        -(((x - 0.7) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2)
    )
    return (1 - 0.7 * lungs).clip(0, 1)


def synthetic_dicom(pixels: bool = True, modality: str = "DX") -> bytes:
    return dicom_bytes(dicom_dataset((chest(64) * 4095).astype(np.uint16) if pixels else None, modality))


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    )


def noise_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8))


SYNTHETIC = {
    "png16": lambda: encode(Image.fromarray((chest() * 65535).astype(np.uint16)), "PNG"),
    "jpeg": lambda: encode(Image.fromarray((chest() * 255).astype(np.uint8)), "JPEG", quality=90),
    "rgba-png": lambda: encode(Image.fromarray((chest() * 255).astype(np.uint8)).convert("RGBA"), "PNG"),
    "dicom": synthetic_dicom,
}


# --- helpers ----------------------------------------------------------------------------------------


def post_image(svc, data: bytes, path: str = "/predict", key: str | None = None, **fields: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or svc.api_key}"}
    return httpx.post(
        f"{svc.url}{path}",
        files={"image": ("upload.bin", data, "application/octet-stream")},
        data=fields,
        headers=headers,
        timeout=60,
    )


def check_prediction(body: dict) -> None:
    assert set(body) == {"request_id", "model", "findings", "priority", "timings", "feedback_available"}
    assert body["feedback_available"] is True
    assert body["model"]["name"] == "chexops-cxr" and body["model"]["version"] == "1"
    assert len(body["findings"]) == LABEL_COUNT
    for f in body["findings"]:
        assert set(f) == {"label", "probability", "threshold", "positive"}
        assert 0 <= f["probability"] <= 1 and f["positive"] == (f["probability"] >= f["threshold"])
    assert body["priority"] in ("urgent", "review", "routine")
    assert set(body["timings"]) == {"decode_ms", "preprocess_ms", "inference_ms", "total_ms"}
    assert body["timings"]["total_ms"] >= body["timings"]["inference_ms"] >= 0


def differing(prediction: dict) -> dict[str, int]:
    """Labels that contradict a prediction on two findings (its first positive and first negative flipped)."""
    findings = prediction["findings"]
    positive = next(f["label"] for f in findings if f["positive"])
    negative = next(f["label"] for f in findings if not f["positive"])
    return {positive: 0, negative: 1}


def wait_for_image(home: Path, request_id: str, db: Path | None = None, timeout: float = 20) -> None:
    from chexops.feedback.store import FeedbackStore

    store = FeedbackStore(f"sqlite:///{db or home / 'feedback' / 'feedback.db'}")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (store.prediction(request_id) or {}).get("has_image"):
                return
            time.sleep(0.1)
    finally:
        store.close()
    raise AssertionError(f"the image of {request_id} was not stored")


# --- predictions ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SYNTHETIC))
def test_predict_synthetic_formats(service, kind):
    response = post_image(service, SYNTHETIC[kind]())
    assert response.status_code == 200, response.text
    check_prediction(response.json())


def direct_onnx(onnx_path: Path, data: bytes) -> tuple[np.ndarray, dict[str, float], list[str]]:
    """Probabilities, thresholds and labels for an upload, by a bare ONNX Runtime session on the exported file:
    decode and preprocess as the package does (one place), thresholds and labels from the file's own metadata."""
    import onnxruntime as ort

    from chexops.imaging.decode import decode
    from chexops.imaging.preprocessing import PreprocessSpec, preprocess_array

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    x = preprocess_array(decode(data).grey, PreprocessSpec.from_json(meta["preprocessing"]))
    (probs,) = session.run(["probabilities"], {"image": x[None].astype(np.float32)})
    return probs[0], json.loads(meta["thresholds"]), json.loads(meta["labels"])


@pytest.mark.slow
def test_predict_the_real_radiographs(service, served_model, shared):
    """/predict answers what a bare ONNX Runtime run of the exported file answers for the same image,
    with the file's own (not 0.5) thresholds, for every real sample."""
    files = sorted((shared / "real-cxr").glob("*.png")) + sorted((shared / "real-cxr").glob("*.dcm"))
    assert len(files) >= 5
    results = {}
    for path in files:
        response = post_image(service, path.read_bytes())
        assert response.status_code == 200, f"{path.name}: {response.text}"
        check_prediction(response.json())
        results[path.name] = response.json()
        probs, thresholds, labels = direct_onnx(served_model.home / EXPORT / "model.onnx", path.read_bytes())
        findings = response.json()["findings"]
        assert [f["label"] for f in findings] == labels
        assert len(set(thresholds.values())) == len(labels) and 0.5 not in thresholds.values()
        for f, p in zip(findings, probs):
            assert f["probability"] == pytest.approx(float(p), abs=2e-6), (path.name, f["label"])
            assert f["threshold"] == thresholds[f["label"]]
            assert f["positive"] == bool(p >= thresholds[f["label"]]), (path.name, f["label"])
    # The two SIIM files hold the same stored pixels under MONOCHROME2 and MONOCHROME1: the second is
    # read inverted (chexops.imaging.decode), so the model sees a different image and answers differently.
    p2 = [f["probability"] for f in results["siim_cr_chest_pa.dcm"]["findings"]]
    p1 = [f["probability"] for f in results["siim_cr_chest_pa_monochrome1.dcm"]["findings"]]
    assert p1 != p2


@pytest.mark.slow
def test_bentoml_client_and_the_internal_batch_api(service):
    import bentoml
    from bentoml.exceptions import BentoMLException

    with bentoml.SyncHTTPClient(service.url, token=service.api_key, server_ready_timeout=30) as client:
        assert client.is_ready()
        response = client.client.post("/predict", files={"image": ("x", SYNTHETIC["png16"](), "image/png")})
        assert response.status_code == 200, response.text
        check_prediction(response.json())
        # /infer is the batchable API behind /predict; from outside the service it is refused.
        with pytest.raises(BentoMLException):
            client.infer(images=np.zeros((1, 1, 32, 32), dtype=np.float32))


@pytest.mark.slow
def test_concurrent_requests_are_batched_when_batching_is_on(service, served_model, tmp_path):
    assert httpx.get(f"{service.url}/model", timeout=10).json()["runtime"]["batching"] is False  # the default
    # a home of its own: a second `bentoml serve` on the same BENTOML_HOME would wipe the first one's metrics
    shutil.copytree(served_model.home / "bentoml" / "models", tmp_path / "bentoml" / "models")
    batched = start_service(
        ServedModel(tmp_path, served_model.tag), "batching.log", CHEXOPS_BATCHING="1", CHEXOPS_MAX_INFLIGHT="16"
    )  # admission lets the 16 clients reach the batcher together
    try:
        data = SYNTHETIC["jpeg"]()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda _: post_image(batched, data), range(48)))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        assert len({r.json()["request_id"] for r in responses}) == 48
        metrics = httpx.get(f"{batched.url}/metrics", timeout=10).text
        # BentoML's histogram of the batch sizes its adaptive batcher formed for /infer: some batch held more than one
        # image.
        infer = [
            line
            for line in metrics.splitlines()
            if line.startswith("bentoml_service_adaptive_batch_size") and "infer" in line
        ]
        batches = sum(
            float(line.split()[-1]) for line in infer if line.startswith("bentoml_service_adaptive_batch_size_count")
        )
        of_one = sum(float(line.split()[-1]) for line in infer if "_bucket{" in line and 'le="1.0"' in line)
        assert batches > 0, "no adaptive batching series for /infer:\n" + "\n".join(infer)
        assert of_one < batches, (
            f"all {batches:.0f} batches held one image: nothing was batched under concurrency\n" + "\n".join(infer)
        )
    finally:
        batched.stop()


# --- bad input --------------------------------------------------------------------------------------


def truncated_dicom() -> bytes:
    data = synthetic_dicom()
    return data[: len(data) - 3000]


BAD = {
    "non-image": (lambda: b"%PDF-1.7 not an image" * 10, 415),
    "truncated-png": (lambda: encode(noise_image(), "PNG")[:3000], 400),
    "truncated-jpeg": (lambda: encode(noise_image(), "JPEG")[:3000], 400),
    "decompression-bomb": (lambda: png_header_only(100_000, 100_000), 413),
    "absurd-dimensions-tiny": (lambda: png_header_only(4, 4), 422),
    "absurd-dimensions-long": (lambda: png_header_only(40_000, 20), 413),
    "dicom-without-pixels": (lambda: synthetic_dicom(pixels=False), 422),
    "dicom-truncated-pixels": (truncated_dicom, (400, 422)),
    "dicom-other-modality": (lambda: synthetic_dicom(modality="CT"), 422),
    "empty-file": (lambda: b"", 400),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_uploads_are_4xx_json(service, case):
    make, status = BAD[case]
    started = time.monotonic()
    response = post_image(service, make())
    assert response.status_code in (status if isinstance(status, tuple) else (status,)), response.text
    assert response.headers["content-type"].startswith("application/json")
    assert set(response.json()) >= {"error"} and "Traceback" not in response.text
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_malformed_requests_are_4xx_json(service):
    url, headers = f"{service.url}/predict", service.headers
    cases = [
        httpx.post(url, headers=headers, timeout=30),  # empty body
        httpx.post(
            url, headers=headers, files={"file": ("a.png", SYNTHETIC["png16"](), "image/png")}, timeout=30
        ),  # no image field
        httpx.post(url, headers=headers, data={"image": "not a file"}, timeout=30),
        httpx.post(
            url,
            headers={**headers, "content-type": "multipart/form-data; boundary=xyz"},
            content=b"garbage",
            timeout=30,
        ),
        httpx.post(url, headers=headers, content=SYNTHETIC["png16"](), timeout=30),  # raw bytes, not a form
    ]
    for response in cases:
        assert 400 <= response.status_code < 500, response.text
        assert "error" in response.json() and "Traceback" not in response.text


@pytest.mark.slow
def test_upload_over_the_size_limit_is_413_quickly(service):
    limit = httpx.get(f"{service.url}/model", timeout=10).json()["runtime"]["max_upload_mb"]
    big = png_header_only(64, 64) + b"\0" * int((limit + 1) * 2**20)
    started = time.monotonic()
    response = post_image(service, big)
    assert response.status_code == 413 and "size limit" in response.json()["error"]
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_the_service_keeps_serving_after_bad_input(service):
    for make, _ in BAD.values():
        post_image(service, make())
    assert httpx.get(f"{service.url}/livez", timeout=10).status_code == 200
    assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200
    assert post_image(service, SYNTHETIC["png16"]()).status_code == 200
    assert service.process.poll() is None
    assert "Traceback" not in service.logs()


# --- auth -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_api_keys(service):
    data = SYNTHETIC["png16"]()
    for path in ("/predict", "/explain"):
        assert httpx.post(f"{service.url}{path}", files={"image": ("x", data)}, timeout=30).status_code == 401
        response = httpx.post(
            f"{service.url}{path}",
            files={"image": ("x", data)},
            headers={"Authorization": "Bearer wrong-key-123"},
            timeout=30,
        )
        assert response.status_code == 401 and "not valid" in response.json()["error"]
    assert (
        httpx.post(f"{service.url}/feedback", json={"request_id": "x", "correct": True}, timeout=30).status_code == 401
    )
    assert post_image(service, data, key=OTHER_KEY).status_code == 200  # the second clinic's key
    for path in ("/", "/livez", "/readyz", "/metrics", "/model"):
        assert httpx.get(f"{service.url}{path}", timeout=10).status_code == 200, path


@pytest.mark.slow
def test_the_page_is_served(service):
    response = httpx.get(f"{service.url}/", timeout=10)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    assert "<html" in response.text.lower()


# --- explain ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_explain_answers_a_heatmap_png(service):
    response = post_image(service, SYNTHETIC["png16"](), path="/explain", label="Edema")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-chexops-localisation"] == "approximate"
    image = Image.open(io.BytesIO(response.content))
    assert image.mode == "RGB" and image.width == 96 and image.height > 96  # the image, then the legend band
    colours = np.asarray(image)[:96]
    assert np.abs(colours[..., 0].astype(int) - colours[..., 2].astype(int)).max() > 20  # coloured overlay


@pytest.mark.slow
def test_explain_with_an_unknown_label_lists_the_labels(service):
    response = post_image(service, SYNTHETIC["png16"](), path="/explain", label="Dragons")
    assert response.status_code == 422
    assert "Dragons" in response.json()["error"] and len(response.json()["labels"]) == LABEL_COUNT
    assert post_image(service, SYNTHETIC["png16"](), path="/explain").status_code == 422


# --- feedback ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_feedback_is_stored_idempotent_and_checked(service):
    predicted = post_image(service, SYNTHETIC["jpeg"]()).json()
    request_id = predicted["request_id"]
    url, headers = f"{service.url}/feedback", service.headers
    body = {"request_id": request_id, "correct": False, "labels": differing(predicted), "note": "edema missed"}
    # Another clinic's key cannot give (or overwrite) this clinic's feedback; nothing is stored by trying.
    other = httpx.post(url, json=body, headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=30)
    assert other.status_code == 403 and "another clinic" in other.json()["error"]
    first = httpx.post(url, json=body, headers=headers, timeout=30)
    assert first.status_code == 200 and first.json()["created"] is True
    assert first.json()["feedback"]["clinic"] == "test-clinic"  # recorded with the clinic that gave it
    again = httpx.post(url, json=body, headers=headers, timeout=30)
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["feedback"] == first.json()["feedback"]
    assert httpx.post(url, json={**body, "note": "another reading"}, headers=headers, timeout=30).status_code == 409
    # The same feedback sent several times at once (a double click, a retry racing the first try): one is
    # stored, every answer is the stored record, as for a sequential duplicate.
    racing = post_image(service, SYNTHETIC["jpeg"]()).json()
    racing_id = racing["request_id"]
    assert differing(racing) == body["labels"]  # the same image, the same prediction
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda _: httpx.post(url, json={**body, "request_id": racing_id}, headers=headers, timeout=30), range(6)
            )
        )
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    assert sum(a.json()["created"] for a in answers) == 1
    assert len({json.dumps(a.json()["feedback"], sort_keys=True) for a in answers}) == 1
    assert httpx.post(url, json={**body, "request_id": "0" * 32}, headers=headers, timeout=30).status_code == 404
    for bad in (
        {"request_id": request_id},
        {"request_id": request_id, "correct": "yes"},
        {"request_id": request_id, "correct": True, "labels": {"Dragons": 1}},
        {"request_id": request_id, "correct": True, "labels": {"Edema": 2}},
        {"request_id": request_id, "correct": True, "extra": 1},
    ):
        response = httpx.post(url, json=bad, headers=headers, timeout=30)
        assert response.status_code == 422 and "error" in response.json(), bad
    response = httpx.post(
        url, content=b"{not json", headers={**headers, "content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 400 and "error" in response.json()


@pytest.mark.slow
def test_metrics_have_the_service_series(service):
    request_id = post_image(service, SYNTHETIC["png16"]()).json()["request_id"]
    httpx.post(
        f"{service.url}/feedback", json={"request_id": request_id, "correct": True}, headers=service.headers, timeout=30
    )
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    const = 'environment="development",model_version="1"'
    assert (
        f'chexops_model_info{{{const},name="chexops-cxr",precision="fp32",run_id="0123456789abcdef0123456789abcdef",'
        'track="stable",version="1"} 1.0'
    ) in text
    for series in (
        "chexops_predictions_total{",
        "chexops_finding_probability_bucket{",
        f'chexops_feedback_total{{{const},predicted_version="1",track="stable",verdict="correct"}}',
        "chexops_feedback_agreement_ratio{",
        "chexops_findings_positive_total{",
        "chexops_rejected_requests_total{",
        'chexops_http_requests_total{code="200",' + const + ',route="/predict",track="stable"}',
        "chexops_http_request_duration_seconds_bucket{",
        "chexops_batch_size_bucket{",
        "bentoml_service_request_total",
    ):
        assert series in text, series
    ratio = float(
        next(line for line in text.splitlines() if line.startswith("chexops_feedback_agreement_ratio{")).split()[1]
    )
    assert 0 < ratio <= 1


@pytest.mark.slow
def test_no_torch_in_the_service(service):
    assert httpx.get(f"{service.url}/model", timeout=10).json()["runtime"]["torch_imported"] is False
    code = (
        "import sys; import chexops.serving.app, chexops.serving.inference, chexops.imaging.decode; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.stdout.strip() == "False", result.stderr


# --- de-identification and the export ---------------------------------------------------------------


def identifiers(path: Path) -> list[bytes]:
    ds = pydicom.dcmread(path)
    name = str(ds.PatientName)
    values = {name, *name.split("^"), str(ds.PatientID), str(ds.PatientBirthDate)}
    return [v.encode() for v in values if len(v) >= 3]


@pytest.mark.slow
def test_no_identifier_is_stored_logged_or_exported(service, shared, tmp_path):
    from chexops.data.chexpert import read_chexpert_csv

    dicom = shared / "real-cxr" / "nema_cr_chest_jpeg2000.dcm"
    secret = identifiers(dicom)
    assert len(secret) >= 3
    response = post_image(service, dicom.read_bytes())
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    predicted = {f["label"]: int(f["positive"]) for f in response.json()["findings"]}
    labels = {"Cardiomegaly": predicted["Cardiomegaly"], "Edema": predicted["Edema"]}  # "correct": as predicted
    assert (
        httpx.post(
            f"{service.url}/feedback",
            json={"request_id": request_id, "correct": True, "labels": labels},
            headers=service.headers,
            timeout=30,
        ).status_code
        == 200
    )
    wait_for_image(service.home, request_id)

    out = tmp_path / "export"
    result = run_cli("feedback", "export", "--out", str(out), "--json", home=service.home, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["rows"] >= 1 and Path(summary["csv"]) == out / "CheXpert-v1.0-small" / "train.csv"

    table = read_chexpert_csv(summary["csv"], summary["labels"])  # the training code reads it
    assert len(table) == summary["rows"]
    frame = table.frame
    for path in frame["Path"]:
        assert min(Image.open(out / path).size) >= 16
    # The DICOM's row: its pixels re-encoded as an 8-bit JPEG (1024 px, about the upload's size, not 4x it);
    # the clinician's labels, the rest from the prediction.
    j2k = [i for i, p in enumerate(frame["Path"]) if Image.open(out / p).size == (int(1841 * 1024 / 1955 + 0.5), 1024)]
    assert j2k, "the JPEG 2000 radiograph is not in the export"
    kept = Image.open(out / frame["Path"][j2k[-1]])
    assert kept.format == "JPEG" and kept.mode == "L"
    assert (out / frame["Path"][j2k[-1]]).stat().st_size < dicom.stat().st_size
    row = table.values[j2k[-1]]
    assert row[table.labels.index("Cardiomegaly")] == labels["Cardiomegaly"]
    assert row[table.labels.index("Edema")] == labels["Edema"]
    assert not np.isnan(row).any()

    stored = [p for p in (service.home / "feedback").iterdir() if p.is_file()]
    exported = [p for p in out.rglob("*") if p.is_file()]
    for path in [*stored, *exported, service.log_path]:
        content = path.read_bytes()
        for value in secret:
            assert value not in content, f"{value!r} found in {path}"


@pytest.mark.slow
def test_a_png_upload_is_kept_as_its_pixels_without_its_text_chunks(service):
    from PIL import PngImagePlugin

    from chexops.feedback.store import FeedbackStore
    from chexops.imaging.decode import decode

    info = PngImagePlugin.PngInfo()
    info.add_text("PatientName", "DOE^JANE MRN-123456")
    buffer = io.BytesIO()
    Image.fromarray((chest(128) * 255).astype(np.uint8)).save(buffer, format="PNG", pnginfo=info)
    upload = buffer.getvalue()
    response = post_image(service, upload)
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    wait_for_image(service.home, request_id)
    store = FeedbackStore(f"sqlite:///{service.home / 'feedback' / 'feedback.db'}")
    try:
        kept = store.image(request_id)
        with store._begin() as conn:  # noqa: SLF001 - what the database row holds
            blob, key, size = conn.exec_driver_sql(
                "SELECT image_png, image_key, image_bytes FROM predictions WHERE request_id = ?", (request_id,)
            ).one()
    finally:
        store.close()
    # in the image store (the folder beside the database, the default), not in the database
    assert blob is None and key == f"{request_id[:2]}/{request_id}.png" and size == len(kept)
    assert (service.home / "feedback" / "images" / key).read_bytes() == kept
    assert b"MRN-123456" not in kept and b"PatientName" not in kept
    assert kept.startswith(b"\x89PNG") and len(kept) < len(upload)  # the upload's own compressed pixels
    np.testing.assert_array_equal(decode(kept).grey, decode(upload).grey)


# --- durability and rate limits ---------------------------------------------------------------------


@pytest.mark.slow
def test_acknowledged_feedback_survives_sigkill_and_the_rate_limit(served_model, tmp_path):
    """What this proves: a feedback is committed before its 200 is sent, so a crash of the service
    process (SIGKILL: no shutdown, no checkpoint) right after loses nothing acknowledged, and a new
    service on the same store answers it again. What it cannot prove: surviving a power loss or a
    kernel crash; a process kill leaves the OS page cache intact, so it passes with synchronous=OFF
    too. That part rests on SQLite's WAL journal with synchronous=FULL (fsync at every commit), which
    is checked here on the running service's own store connections (/model runtime.feedback_store).
    The image of the prediction is stored before the feedback is acknowledged (it was written after the
    answer, and a kill right after the feedback lost it): a 2048² upload, scaled down and re-encoded for
    keeping, is in the image store after the kill, whole (it is fsynced before its key is recorded).
    Also: the per-key rate limit, the per-address limit of failed authentications, which a key that already
    worked from that address passes (a clinic behind one NAT with a guesser) and a new key does not."""
    from chexops.feedback.store import FeedbackStore
    from chexops.imaging.decode import decode

    db = tmp_path / "durable.db"
    third = "third-clinic-key-5555555555"
    env = {
        "CHEXOPS_API_KEYS": f"test-clinic:{API_KEY},other-clinic:{OTHER_KEY},third-clinic:{third}",
        "CHEXOPS_FEEDBACK_URL": f"sqlite:///{db}",
        "CHEXOPS_RATE_LIMIT": "6",
        "CHEXOPS_RATE_BURST": "3",
        "CHEXOPS_AUTH_FAILURE_LIMIT": "3",
    }
    first = start_service(served_model, log_name="durable-1.log", **env)
    try:
        store = httpx.get(f"{first.url}/model", timeout=10).json()["runtime"]["feedback_store"]
        assert store == {"kind": "sqlite", "available": True, "journal_mode": "wal", "synchronous": "full"}
        large = encode(Image.fromarray((chest(2048) * 65535).astype(np.uint16)), "PNG")
        predicted = post_image(first, large).json()
        request_id = predicted["request_id"]
        body = {"request_id": request_id, "correct": False, "labels": differing(predicted), "note": "apical"}
        ack = httpx.post(f"{first.url}/feedback", json=body, headers=first.headers, timeout=30)
        assert ack.status_code == 200 and ack.json()["created"] is True
        # The third request is within the burst of 3; the fourth is over the limit.
        assert post_image(first, SYNTHETIC["png16"]()).status_code == 200
        limited = post_image(first, SYNTHETIC["png16"]())
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1 and "error" in limited.json()
        assert post_image(first, SYNTHETIC["png16"](), key=OTHER_KEY).status_code == 200  # per key
        # Failed authentications: 3 per minute per client address, then 429 for every key but those that already
        # worked from this address: a guess, and a valid key never used here, are refused; OTHER_KEY is served.
        for _ in range(3):
            assert post_image(first, SYNTHETIC["png16"](), key="guessed-key-000000").status_code == 401
        for key in ("guessed-key-000001", third):
            refused = post_image(first, SYNTHETIC["png16"](), key=key)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1, refused.text
            assert "failed authentications" in refused.json()["error"]
        assert post_image(first, SYNTHETIC["png16"](), key=OTHER_KEY).status_code == 200
    finally:
        first.stop(signal.SIGKILL)  # no shutdown, no checkpoint: only what was committed survives
    assert first.process.returncode is not None
    store = FeedbackStore(f"sqlite:///{db}")  # its images in the folder beside it
    try:
        kept = store.image(request_id)
    finally:
        store.close()
    assert kept is not None, "the acknowledged feedback's image was lost"
    assert decode(kept).grey.shape == (1024, 1024)  # whole: the 2048² upload as kept (CHEXOPS_FEEDBACK_IMAGE_SIDE)

    second = start_service(served_model, log_name="durable-2.log", **env, CHEXOPS_PRECISION="int8")  # and the int8 file
    try:
        assert httpx.get(f"{second.url}/model", timeout=10).json()["precision"] == "int8-static-qdq"
        again = httpx.post(f"{second.url}/feedback", json=body, headers=second.headers, timeout=30)
        assert again.status_code == 200 and again.json()["created"] is False
        assert again.json()["feedback"] == ack.json()["feedback"]
    finally:
        second.stop()


# --- no orphans -------------------------------------------------------------------------------------


def _family(pid: int) -> list:
    import psutil

    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def _gone(family: list, port: int, timeout: float = 20) -> bool:
    """True once every process of `family` has exited and nothing answers on `port`."""
    import socket

    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        with socket.socket() as s:
            s.settimeout(1)
            answering = s.connect_ex(("127.0.0.1", port)) == 0
        if not alive and not answering:
            return True
        time.sleep(0.2)
    return False


def _chexops_serve(model, port: int, log_name: str) -> subprocess.Popen:
    env = child_env(model.home, CHEXOPS_API_KEYS="test-clinic:test-clinic-key-0123456789")
    argv = [sys.executable, "-m", "chexops", "serve", "--host", "127.0.0.1", "--port", str(port), "--model", model.tag]
    server = ServerProcess(
        argv,
        model.home / log_name,
        url=f"http://127.0.0.1:{port}",
        env=env,
        cwd=ROOT,
        name="chexops serve",
        append=True,
    )
    return server.start().process


@pytest.mark.slow
def test_nothing_keeps_serving_after_chexops_serve_is_killed(served_model):
    """`chexops serve` killed with SIGKILL (its whole process group: itself, BentoML's arbiter, not the
    BentoML worker, which runs in its own session), then, restarted on the same port at once, with
    SIGTERM (the command alone): every process it started exits and the port is free."""
    import os

    import psutil

    port = free_port()
    family: list = []
    try:
        first = _chexops_serve(served_model, port, "orphans-1.log")
        family = _family(first.pid)
        # chexops serve is the arbiter (no `bentoml serve` interpreter in between: docs/benchmarks.md "Start-up")
        assert [p.cmdline()[1:3] for p in family] == [["-m", "chexops"], ["-m", "_bentoml_impl.worker.service"]]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        assert _gone(family, port), [p.cmdline()[:4] for p in family if p.is_running()]

        second = _chexops_serve(served_model, port, "orphans-2.log")  # the same port, at once
        family = _family(second.pid)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
        second.send_signal(signal.SIGTERM)  # the command alone, not its group
        second.wait(10)
        assert _gone(family, port), [p.cmdline()[:4] for p in family if p.is_running()]
    finally:
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


# --- packaging --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bentoml_build_makes_a_bento_with_a_dockerfile(served_model):
    env = child_env(served_model.home, CHEXOPS_MODEL=served_model.tag, COLUMNS="4000")  # no wrapped paths
    build = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", "bentos/bentofile.yaml", ".", "-o", "tag"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:] + build.stdout[-3000:]
    tag = build.stdout.strip().splitlines()[-1].replace("__tag__:", "")
    where = subprocess.run(
        [sys.executable, "-m", "bentoml", "get", tag, "-o", "path"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert where.returncode == 0, where.stderr
    bento = Path("".join(where.stdout.split()))
    assert bento.is_relative_to(served_model.home / "bentoml" / "bentos")
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile and "ENV PYTHONPATH=$PYTHONPATH" in dockerfile
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().split()
    assert "onnxruntime==1.32.0" in requirements and "bentoml==1.4.40" in requirements
    assert not [r for r in requirements if r.startswith("torch")]
    assert (bento / "src" / "bentos" / "service.py").is_file()
    assert (bento / "src" / "training" / "chexops" / "serving" / "app.py").is_file()
    manifest = (bento / "bento.yaml").read_text()
    assert served_model.tag in manifest and "bentos.service:Chexops" in manifest


# --- units (no server) ------------------------------------------------------------------------------


def test_priority_rule():
    from chexops.core.triage import priority

    def f(**positive):
        return [{"label": k.replace("_", " "), "positive": v} for k, v in positive.items()]

    assert priority(f(Pneumothorax=True, Cardiomegaly=False)) == "urgent"
    assert priority(f(Cardiomegaly=True, Edema=False)) == "review"
    assert priority(f(No_Finding=True, Support_Devices=True, Edema=False)) == "routine"
    assert priority(f(Other_Disease=True)) == "review"  # a model with other labels


def test_keys_and_rate_limiter(tmp_path):
    from chexops.core.errors import ConfigError
    from chexops.serving.auth import Authenticator, AuthError, RateLimiter, load_keys

    keyfile = tmp_path / "keys"
    keyfile.write_text("# clinics\nnorth:north-key-123\nsouth:south-key-456\n")
    keys = load_keys("east:east-key-789", str(keyfile))
    assert keys == {"east-key-789": "east", "north-key-123": "north", "south-key-456": "south"}
    for bad in (("", ""), ("nokey", ""), ("a:short", ""), ("", str(tmp_path / "none"))):
        with pytest.raises(ConfigError):
            load_keys(*bad)
    now = [0.0]
    auth = Authenticator(keys, RateLimiter(per_minute=60, burst=2, clock=lambda: now[0]))
    assert auth.clinic("Bearer north-key-123") == "north"
    assert auth.clinic("bearer north-key-123") == "north"
    with pytest.raises(AuthError) as err:
        auth.clinic("Bearer north-key-123")
    assert err.value.status == 429 and err.value.retry_after == 1
    assert auth.clinic("Bearer south-key-456") == "south"
    now[0] = 1.0
    assert auth.clinic("Bearer north-key-123") == "north"
    for header in (None, "", "Basic abc", "Bearer ", "Bearer nope-nope-nope"):
        with pytest.raises(AuthError) as err:
            auth.clinic(header)
        assert err.value.status == 401


def test_store_is_wal_idempotent_and_conflicts(tmp_path):
    import sqlite3

    from chexops.feedback.store import Conflict, FeedbackStore, NotFound

    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    findings = [{"label": "Edema", "probability": 0.7, "threshold": 0.5, "positive": True}]
    store.add_prediction(
        "r1", "north", "m", "1", findings, "urgent", {"width": 10, "PatientName": "X^Y", "filename": "a.dcm"}
    )
    assert store.prediction("r1")["image_info"] == {"width": 10}  # nothing else is kept
    record, created = store.add_feedback("r1", True, None, None)
    assert created and store.add_feedback("r1", True, None, None) == (record, False)
    with pytest.raises(Conflict):
        store.add_feedback("r1", False, None, None)
    with pytest.raises(NotFound):
        store.add_feedback("r2", True, None, None)
    assert store.agreement() == (1, 0)
    store.close()
    conn = sqlite3.connect(tmp_path / "f.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failed_authentication_is_limited_per_address():
    from chexops.serving.auth import Authenticator, AuthError, RateLimiter

    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    auth = Authenticator(
        {"north-key-123": "north"}, RateLimiter(600, 100, clock), RateLimiter(60, 5, clock), RateLimiter(2, 2, clock)
    )
    for _ in range(2):
        with pytest.raises(AuthError) as err:
            auth.clinic("Bearer guess-000000", "10.0.0.1")
        assert err.value.status == 401
    for header in ("Bearer guess-000001", "Bearer north-key-123"):  # blocked before the key is looked at
        with pytest.raises(AuthError) as err:
            auth.clinic(header, "10.0.0.1")
        assert err.value.status == 429 and err.value.retry_after == 30
    assert auth.clinic("Bearer north-key-123", "10.0.0.2") == "north"  # another address is not affected
    now[0] = 31.0
    assert auth.clinic("Bearer north-key-123", "10.0.0.1") == "north"
    # Every request of an address, valid key or not, also takes from that address's own bucket (5 here).
    for _ in range(5):
        auth.clinic("Bearer north-key-123", "10.0.0.3")
    with pytest.raises(AuthError) as err:
        auth.clinic("Bearer north-key-123", "10.0.0.3")
    assert err.value.status == 429 and "address" in str(err.value)


@pytest.mark.slow
def test_serving_off_loopback_needs_configured_keys(tmp_path):
    from chexops.core.errors import ConfigError
    from chexops.serving.auth import is_loopback, require_keys_off_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    require_keys_off_loopback("0.0.0.0", "north:north-key-123", "")
    require_keys_off_loopback("0.0.0.0", "", "/run/secrets/keys")
    require_keys_off_loopback("127.0.0.1", "", "")
    with pytest.raises(ConfigError, match="without API keys"):
        require_keys_off_loopback("0.0.0.0", " ", "")
    result = run_cli(
        "serve", "--host", "0.0.0.0", "--port", str(free_port()), "--model", "chexops-cxr:v1", home=tmp_path, timeout=60
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "without API keys" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_sqlite_store_upgrades_an_old_schema_and_races_between_processes(tmp_path):
    import sqlite3

    from chexops.feedback.store import SCHEMA_VERSION, FeedbackStore, WrongClinic
    from test_feedback_postgres import OLD_SCHEMA, RACER

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for statement in OLD_SCHEMA:
        conn.execute(statement.format(blob="BLOB"))
    conn.commit()
    conn.close()
    store = FeedbackStore(f"sqlite:///{db}")
    assert store.schema_version() == SCHEMA_VERSION
    assert [r["clinic"] for r in store.export_rows()] == ["north"]
    with pytest.raises(WrongClinic):
        store.add_feedback("old-1", True, None, None, "south")
    ids = [f"race-{i}" for i in range(20)]
    for request_id in ids:
        store.add_prediction(request_id, "north", "m", "1", [], "routine", {})
    start = time.time() + 1.5
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, f"sqlite:///{db}", str(start), json.dumps(ids)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**child_env(tmp_path), "PYTHONPATH": ":".join(sys.path)},
        )
        for _ in range(2)
    ]
    results = [racer.communicate(timeout=120) for racer in racers]
    assert all(r.returncode == 0 for r in racers), [err[-2000:] for _, err in results]
    a, b = (json.loads(out.strip().splitlines()[-1]) for out, _ in results)
    assert all(x[1] != y[1] and x[2] == y[2] for x, y in zip(a, b))
    store.close()


def test_feedback_export_blanks_are_masked_by_the_training_reader(tmp_path):
    """Round trip: store → `export_feedback` → the training reader and policy → unknown labels masked
    out of the loss even under the default policy (blank = negative), given labels kept."""
    from chexops.config import PolicyConfig
    from chexops.data.chexpert import apply_policy, read_chexpert_csv
    from chexops.feedback.export import export_feedback
    from chexops.feedback.store import FeedbackStore
    from chexops.imaging.decode import to_png

    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    labels = ["Edema", "Cardiomegaly", "Pneumothorax"]
    findings = [
        {"label": label, "probability": p, "threshold": 0.5, "positive": p >= 0.5}
        for label, p in zip(labels, (0.9, 0.2, 0.1))
    ]
    for request_id in ("a", "b"):
        store.add_prediction(request_id, "north", "m", "1", findings, "urgent", {})
        store.set_image(request_id, to_png(chest(32).astype(np.float32)))
    store.add_feedback("a", False, {"Edema": 0}, None, "north")  # only Edema said: the others are unknown
    store.add_feedback("b", True, None, None, "north")  # correct: every label from the prediction
    summary = export_feedback(store, tmp_path / "out")
    store.close()
    assert summary.rows == 2
    table = read_chexpert_csv(summary.csv, summary.labels)
    targets, mask = apply_policy(table.values, table.labels, table.policy(PolicyConfig()))
    assert PolicyConfig().blank == "negative" and table.blank == "ignore"
    column = {label: table.labels.index(label) for label in labels}
    assert targets[0, column["Edema"]] == 0 and mask[0, column["Edema"]] == 1
    assert mask[0, column["Cardiomegaly"]] == 0 and mask[0, column["Pneumothorax"]] == 0  # unknown: not a negative
    assert mask[0].sum() == 1  # every label nobody gave (the 11 other CheXpert labels too) is masked
    assert (
        targets[1, column["Edema"]] == 1
        and targets[1, column["Cardiomegaly"]] == 0
        and mask[1, column["Cardiomegaly"]] == 1
    )


def test_feedback_export_streams_the_images(tmp_path):
    """The export holds one image at a time, not the whole store: 40 images of 256 KiB (10 MiB) are
    exported with a peak of Python allocations well under their total."""
    import tracemalloc

    from chexops.feedback.export import export_feedback
    from chexops.feedback.store import FeedbackStore

    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    findings = [{"label": "Edema", "probability": 0.9, "threshold": 0.5, "positive": True}]
    rng = np.random.default_rng(0)
    for i in range(40):
        store.add_prediction(f"r{i}", "north", "m", "1", findings, "urgent", {})
        store.set_image(f"r{i}", rng.bytes(256 * 1024))
        store.add_feedback(f"r{i}", True, None, None, "north")
    tracemalloc.start()
    try:
        summary = export_feedback(store, tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        store.close()
    assert summary.rows == 40
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB for 10 MiB of images"  # about 2.5 MiB: 8 rows at a time
