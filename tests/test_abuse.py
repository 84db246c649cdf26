"""The clinic endpoint under abuse, on a real `bentoml serve` (one server for the module, like a clinic's
with no admission queue: every inference slot counts): slow uploads, forged forwarded addresses, header
floods with the worker's memory measured, pixel bombs, large bodies, contradictory feedback, and two
servers on one CHEXOPS_HOME each reporting its own series on /metrics.
"""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from chexops.feedback.store import RETRY_SECONDS
from service_fixtures import API_KEY, OTHER_KEY, start_service

pytestmark = pytest.mark.slow

THIRD_KEY = "third-clinic-key-5555555555"
FAILURES = 4  # failed authentications a minute per address, in this module's server


@pytest.fixture(scope="module")
def abuse(served_model):
    svc = start_service(
        served_model,
        "abuse.log",
        CHEXOPS_API_KEYS=f"test-clinic:{API_KEY},other-clinic:{OTHER_KEY},third-clinic:{THIRD_KEY}",
        CHEXOPS_MAX_INFLIGHT="2",
        CHEXOPS_MAX_QUEUE="0",  # no queue: a slot held by a slow upload would be a 503 for the clinic
        CHEXOPS_AUTH_FAILURE_LIMIT=str(FAILURES),
        CHEXOPS_MAX_UPLOADS_PER_CLIENT="4",
    )
    yield svc
    svc.stop()


def png(side: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.linspace(0, 255, side * side).reshape(side, side)).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def predict(svc, data: bytes | None = None, key: str = API_KEY, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{svc.url}/predict",
        files={"image": ("x.png", data or png())},
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=30,
    )


def worker(svc) -> psutil.Process:
    """The BentoML worker (the process that holds the model: the largest of the server's family)."""
    family = psutil.Process(svc.process.pid).children(recursive=True)
    return max(family, key=lambda p: p.memory_info().rss)


def slow_upload(svc, key: str, outcome: list) -> None:
    """A multipart upload at 1 byte a second, as an attacker with a valid key sends it; records the answer
    and whether the server closed the connection after it."""
    body_length = 100_000
    with socket.create_connection(("127.0.0.1", svc.port)) as sock:
        sock.sendall(
            (
                f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {body_length}\r\n\r\n"
            ).encode()
        )
        started = time.monotonic()
        sock.settimeout(1.0)
        answer = b""
        while time.monotonic() - started < 30:
            try:
                sock.send(b"-")
                answer = sock.recv(65536)
                break
            except TimeoutError:
                continue
        answered, closed = time.monotonic() - started, False
        sock.settimeout(10.0)  # the close may follow the answer late on a busy machine
        try:
            while answer:
                more = sock.recv(65536)
                if not more:
                    closed = True
                    break
                answer += more
        except ConnectionResetError:
            closed = True  # closed by the server with unread bytes of ours in its buffer: a reset
        except TimeoutError:
            pass
        outcome.append((answered, answer, closed))


def test_slow_uploads_hold_no_inference_slot_and_are_cut(abuse):
    """Two clients sending the body at 1 byte/s (as many as the inference slots, and no queue) while a clinic
    keeps sending: the clinic gets every answer, quickly; each slow upload gets a 408 after the 2 s grace and
    its connection is closed."""
    outcome: list = []
    attackers = [threading.Thread(target=slow_upload, args=(abuse, OTHER_KEY, outcome)) for _ in range(2)]
    for attacker in attackers:
        attacker.start()
    time.sleep(0.3)
    answers = []
    while any(a.is_alive() for a in attackers):
        started = time.monotonic()
        answers.append((predict(abuse).status_code, time.monotonic() - started))
        time.sleep(0.1)
    for attacker in attackers:
        attacker.join()
    assert len(answers) >= 5 and all(code == 200 for code, _ in answers), answers
    assert max(seconds for _, seconds in answers) < 2, answers
    assert len(outcome) == 2
    for seconds, answer, closed in outcome:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"too slowly" in answer and closed
        assert seconds < 6


def test_uploads_at_once_are_capped_per_client(abuse):
    """More bodies in flight from one key than CHEXOPS_MAX_UPLOADS_PER_CLIENT (4): the fifth is a 429 at once;
    another key from the same address is served."""
    socks = []
    try:
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", abuse.port))
            sock.sendall(
                f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OTHER_KEY}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000\r\n\r\n-".encode()
            )
            socks.append(sock)
        time.sleep(0.3)
        refused = predict(abuse, key=OTHER_KEY)
        assert refused.status_code == 429 and "too many uploads" in refused.json()["error"], refused.text
        assert predict(abuse).status_code == 200  # another key from the same address: under its cap of 16
    finally:
        for sock in socks:
            sock.close()


def test_large_headers_are_431_and_a_flood_costs_no_memory(abuse):
    """A 100 kB Authorization header is a 431 with the connection closed; 8 connections sending 40 MB heads
    leave the worker's memory where it was (it grew by 370 MB before the limit)."""
    with socket.create_connection(("127.0.0.1", abuse.port)) as sock:
        sock.sendall(b"GET /model HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 100_000 + b"\r\n\r\n")
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 431") and b"over the limit of 32 KiB" in answer, answer[:200]
    process = worker(abuse)
    before = process.memory_info().rss

    def flood() -> None:
        chunk = b"a" * 1_000_000
        try:
            with socket.create_connection(("127.0.0.1", abuse.port)) as sock:
                sock.sendall(b"GET /model HTTP/1.1\r\nHost: x\r\nX-Big: ")
                for _ in range(40):
                    sock.sendall(chunk)
        except OSError:
            pass  # the server closed it: the point

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    grown = (process.memory_info().rss - before) / 2**20
    assert grown < 40, f"the worker grew by {grown:.0f} MiB under the header flood"
    assert httpx.get(f"{abuse.url}/readyz", timeout=10).status_code == 200


def test_a_pixel_bomb_is_refused_and_the_limit_is_stated(abuse):
    """A 6300×6300 PNG (a few tens of kB) is a 413 naming the limit, 4096² pixels."""
    buffer = io.BytesIO()
    Image.new("L", (6300, 6300)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 200_000
    response = predict(abuse, buffer.getvalue())
    assert response.status_code == 413 and "16,777,216 pixels" in response.json()["error"], response.text


def test_refusals_never_echo_the_input(abuse):
    """A feedback with 300 invented label names (a 20 kB body) is a 422 under 1 kB; a 1.3 MB body is a 413
    before it is parsed."""
    request_id = predict(abuse).json()["request_id"]
    labels = {f"invented-label-{'x' * 40}-{i}": 1 for i in range(300)}
    body = {"request_id": request_id, "correct": False, "labels": labels}
    refused = httpx.post(f"{abuse.url}/feedback", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert refused.status_code == 422 and len(refused.content) < 1024, len(refused.content)
    assert "and 295 more" in refused.json()["error"]
    big = {"request_id": request_id, "correct": False, "note": "n" * 1_300_000}
    refused = httpx.post(f"{abuse.url}/feedback", json=big, headers={"Authorization": f"Bearer {API_KEY}"})
    assert refused.status_code == 413 and len(refused.content) < 200


def test_feedback_means_what_it_says(abuse):
    """ "Incorrect" with the prediction's own labels, or with none, is refused (422); "correct" with labels
    that differ too; "incorrect" with one differing label, or `unusable`, is stored."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    prediction = predict(abuse).json()
    own = {f["label"]: int(f["positive"]) for f in prediction["findings"]}
    base = {"request_id": prediction["request_id"]}
    for body, why in (
        ({**base, "correct": False, "labels": own}, "prediction's own"),
        ({**base, "correct": False}, "prediction's own"),
        ({**base, "correct": True, "unusable": True}, "one or the other"),
    ):
        response = httpx.post(f"{abuse.url}/feedback", json=body, headers=headers, timeout=30)
        assert response.status_code == 422 and why in response.json()["error"], (body, response.text)
    flipped = {**own, "Edema": 1 - own["Edema"]}
    stored = httpx.post(
        f"{abuse.url}/feedback", json={**base, "correct": False, "labels": flipped}, headers=headers, timeout=30
    )
    assert stored.status_code == 200 and stored.json()["feedback"]["labels"] == flipped
    unusable = predict(abuse).json()["request_id"]
    stored = httpx.post(
        f"{abuse.url}/feedback",
        json={"request_id": unusable, "correct": False, "unusable": True},
        headers=headers,
        timeout=30,
    )
    assert stored.status_code == 200 and stored.json()["feedback"]["unusable"] is True


def test_one_openapi_document_where_bentoml_users_look(abuse):
    """/docs.json (and /openapi.json) is one document: the clinic API, health and metrics, no internal /infer;
    /docs renders it with the Swagger UI BentoML ships (served here, no CDN). /schema.json stays BentoML's
    route list for its own clients (test_service.py's SyncHTTPClient reads it)."""
    paths = ("/docs.json", "/openapi.json")
    documents = [httpx.get(f"{abuse.url}{path}", timeout=10) for path in paths]
    assert all(d.status_code == 200 for d in documents) and len({d.text for d in documents}) == 1
    paths = set(documents[0].json()["paths"])
    assert {"/predict", "/explain", "/feedback", "/model", "/livez", "/readyz", "/metrics"} <= paths
    assert "/infer" not in paths
    page = httpx.get(f"{abuse.url}/docs", timeout=10)
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text and 'url: "/docs.json"' in page.text
    for script in re.findall(r'src="(/static_content/[^"]+)"', page.text):
        assert httpx.get(f"{abuse.url}{script}", timeout=10).status_code == 200, script


def series(svc, name: str) -> dict[str, float]:
    text = httpx.get(f"{svc.url}/metrics", timeout=10).text
    lines = [line.rsplit(" ", 1) for line in text.splitlines() if line.startswith(name)]
    return {sample: float(value) for sample, value in lines}


def test_two_servers_on_one_home_report_their_own_series(abuse, served_model):
    """A second server on the same CHEXOPS_HOME (another environment label): each /metrics has its own
    series only, and the first keeps its counts while the second starts, serves and stops."""
    assert predict(abuse).status_code == 200
    before = sum(series(abuse, "chexops_predictions_total").values())
    assert before >= 1
    second = start_service(served_model, "abuse-second.log", CHEXOPS_ENVIRONMENT="second")
    try:
        assert predict(second).status_code == 200
        mine = [s for s in series(abuse, "chexops_") if "environment=" in s]
        theirs = [s for s in series(second, "chexops_") if "environment=" in s]
        assert mine and theirs
        assert not any('environment="second"' in s for s in mine), [s for s in mine if "second" in s][:3]
        assert all('environment="second"' in s for s in theirs), [s for s in theirs if "second" not in s][:3]
        assert sum(series(abuse, "chexops_predictions_total").values()) == before
        assert sum(series(second, "chexops_predictions_total").values()) == 1
    finally:
        second.stop()
    assert predict(abuse).status_code == 200
    assert sum(series(abuse, "chexops_predictions_total").values()) == before + 1


def test_forwarded_addresses_are_not_believed_and_a_known_key_survives_a_neighbour(abuse):
    """With no CHEXOPS_TRUSTED_PROXIES, X-Forwarded-For from 127.0.0.1 is not believed: wrong keys, each with
    another invented address, are throttled as the one address they come from, and the log records the real
    one. While that address is over its failure limit, the clinic's key that already worked from it is
    served; a valid key never used from it is not (a guess is checked only against known keys)."""
    assert predict(abuse).status_code == 200  # the clinic's key works from 127.0.0.1
    codes = [
        predict(abuse, key=f"guessed-key-{i:06d}", **{"X-Forwarded-For": f"203.0.113.{i}"}).status_code
        for i in range(FAILURES + 3)
    ]
    assert codes[:FAILURES] == [401] * FAILURES and set(codes[FAILURES:]) == {429}, codes
    assert "203.0.113." not in abuse.logs()
    assert predict(abuse).status_code == 200
    refused = predict(abuse, key=THIRD_KEY)
    assert refused.status_code == 429 and "failed authentications" in refused.json()["error"]


def test_settings_refuse_a_malformed_proxy_list():
    from chexops.core.errors import ConfigError
    from chexops.serving.settings import Settings

    assert Settings(trusted_proxies=" 10.0.0.0/8, 192.168.1.1 ").trusted_proxies == "10.0.0.0/8,192.168.1.1"
    with pytest.raises(ConfigError, match="CHEXOPS_TRUSTED_PROXIES"):
        Settings(trusted_proxies="ingress.local")


def test_a_model_banner_says_synthetic_and_not_for_clinical_use():
    from chexops.serving.inference import OnnxModel

    def model(**kw) -> dict:
        fields = dict(session=None, labels=[], thresholds={}, spec=None, name="m", version="1", run_id="")
        fields |= dict(data_version="", precision="fp32", head_weight=np.zeros(1))
        return OnnxModel(**fields, **kw).banner()

    synthetic = model(training_data={"kind": "synthetic"}, evaluated=True)
    assert synthetic["warning"].startswith("Demonstration model: synthetic training data, not for clinical use")
    assert synthetic["clinical_use"] is False
    named = model(training_data={"kind": "dataset", "description": "CheXpert v1.0"}, evaluated=True)
    assert named["clinical_use"] is True and named["warning"] == ""
    assert model(training_data={"kind": "dataset"}, evaluated=False)["clinical_use"] is False
    assert json.dumps(model())  # no training_data: unknown, said so
    assert model()["training_data"]["kind"] == "unknown"


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only: CI runs as root; elsewhere the test skips saying so)."""
    import os
    import subprocess

    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_503_for_feedback_never_404(served_model, small_disk):
    """The feedback store on a disk that fills up: predictions are still answered (not kept, said so), and the
    feedback for one the store could not keep, or any feedback the store cannot write, is a 503 with
    Retry-After, never a 404 "no prediction"."""
    svc = start_service(served_model, "full-disk.log", CHEXOPS_FEEDBACK_URL=f"sqlite:///{small_disk / 'feedback.db'}")
    try:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        assert predict(svc).json()["feedback_available"] is True
        with open(small_disk / "filler", "wb") as filler:  # the rest of the disk
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass
        predictions = []
        for _ in range(5):
            prediction = predict(svc, png(256))
            assert prediction.status_code == 200, prediction.text
            predictions.append(prediction.json())
        time.sleep(RETRY_SECONDS + 0.5)  # past the store's quick-failure window: the store is asked again
        answers = []
        for body in predictions:
            own = {f["label"]: int(f["positive"]) for f in body["findings"]}
            feedback = httpx.post(
                f"{svc.url}/feedback",
                json={"request_id": body["request_id"], "correct": True, "labels": own},
                headers=headers,
                timeout=30,
            )
            answers.append((body["feedback_available"], feedback.status_code))
            time.sleep(RETRY_SECONDS + 0.1)
        assert all(code in (200, 503) for _, code in answers), answers
        assert any(code == 503 for _, code in answers), answers
        assert all(code == 503 for stored, code in answers if not stored), answers
        assert not all(stored for stored, _ in answers), answers  # the disk was full for predictions too
    finally:
        svc.stop()
