"""The DICOM gateway (`chexops pacs serve`) between a REAL Orthanc and a REAL `bentoml serve`: one Orthanc on
loopback (temporary storage, JSON config), one service, one gateway for the module. Radiographs are uploaded to
Orthanc and routed to the gateway (`POST /modalities/chexops/store`); the reports are read back from Orthanc."""

from __future__ import annotations

import io
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from chexops.core.processes import ServerProcess, free_port
from chexops.pacs.orthanc import LocalOrthanc
from chexops.pacs.report import read_findings
from service_fixtures import API_KEY, start_service
from support import child_env

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_AET, ORTHANC_AET = "CHEXOPS", "ORTHANC"
NEMA, SIIM = "nema_cr_chest_jpeg2000.dcm", "siim_cr_chest_pa.dcm"  # the NEMA file carries patient identifiers

_tools = pytest.mark.skipif(
    not (shutil.which("Orthanc") and shutil.which("dciodvfy")),
    reason="Orthanc or dciodvfy is not installed (tests/install-tools.sh installs orthanc and dicom3tools)",
)


def needs_tools(test):
    """A test of the servers: slow, and skipped where Orthanc or dciodvfy is missing."""
    return pytest.mark.slow(_tools(test))


def synthetic(modality: str = "CR", body_part: str = "CHEST", study_uid: str | None = None) -> bytes:
    """A tiny uncompressed image (64×64, 12 bits) of its own study: used where the shared files are not needed."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1" if modality == "CR" else "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Patient", "SYN-4711", "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = (
        "20260101",
        "120000",
        "A1",
        "",
        "1",
    )
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = modality, body_part, "PA"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = (np.add.outer(np.arange(64), np.arange(64)) * 32).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Orthanc:
    def __init__(self, root: Path):
        self.gateway_port = free_port()
        self.local = LocalOrthanc(root, GATEWAY_AET, self.gateway_port).__enter__()
        self.server, self.url, self.dicom_port = self.local.server, self.local.url, self.local.dicom_port
        # no keep-alive: Orthanc closes an idle connection after a second, and a request may race that close
        self.http = httpx.Client(base_url=self.url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0))

    def upload(self, data: bytes) -> dict:
        answer = self.http.post("/instances", content=data)
        answer.raise_for_status()
        return answer.json()

    def route(self, instance_id: str) -> None:
        self.http.post("/modalities/chexops/store", json={"Resources": [instance_id]}).raise_for_status()

    def reports(self, study_id: str) -> list[pydicom.Dataset]:
        found = []
        for instance in self.http.get(f"/studies/{study_id}/instances").raise_for_status().json():
            if instance["MainDicomTags"].get("SOPInstanceUID") and self._modality(instance) == "SR":
                found.append(pydicom.dcmread(io.BytesIO(self.http.get(f"/instances/{instance['ID']}/file").content)))
        return found

    def _modality(self, instance: dict) -> str:
        series = self.http.get(f"/instances/{instance['ID']}/series").json()
        return series["MainDicomTags"].get("Modality", "")

    def wait_reports(self, study_id: str, count: int = 1, timeout: float = 30) -> list[pydicom.Dataset]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.reports(study_id)
            if len(found) >= count:
                return found
            time.sleep(0.3)
        raise AssertionError(f"no report in study {study_id} after {timeout} s")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.server.stop()


@pytest.fixture(scope="module")
def pacs_service(served_model):
    holder = {"service": start_service(served_model, log_name="pacs-service.log")}
    yield holder
    holder["service"].stop()


class Gateway:
    def __init__(self, root: Path, orthanc: Orthanc, service_url: str):
        self.state, self.log = root / "state", root / "gateway.log"
        self.metrics_port = free_port()
        self.env = child_env(
            root,
            CHEXOPS_API_KEY=API_KEY,
            CHEXOPS_PACS_RETRY_INITIAL_S="0.2",
            CHEXOPS_PACS_RETRY_MAX_S="1",
            CHEXOPS_PACS_TIMEOUT_S="10",
        )
        self.argv = [
            sys.executable, "-m", "chexops", "pacs", "serve", "--listen", f"127.0.0.1:{orthanc.gateway_port}",
            "--ae-title", GATEWAY_AET, "--send-to", f"{ORTHANC_AET}@127.0.0.1:{orthanc.dicom_port}",
            "--service", service_url, "--state", self.state, "--metrics", f"127.0.0.1:{self.metrics_port}",
            "--orthanc-url", orthanc.url, "--json-log",
        ]  # fmt: skip
        self.server: ServerProcess | None = None

    def start(self) -> "Gateway":
        self.server = ServerProcess(
            self.argv, self.log, url=f"http://127.0.0.1:{self.metrics_port}", ready_path="/metrics",
            env=self.env, cwd=ROOT, name="chexops pacs serve", append=True, timeout=60,
        ).start()  # fmt: skip
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(signal.SIGTERM, timeout=15)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.logs():
                return
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not in the gateway's log:\n{self.logs()[-3000:]}")

    def metric(self, name: str) -> float:
        for attempt in range(3):  # prometheus_client's server now and then drops a connection on a busy machine
            try:
                text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics").text
                break
            except httpx.TransportError:
                if attempt == 2:
                    raise
                time.sleep(0.5)
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, orthanc, pacs_service):
    gw = Gateway(tmp_path_factory.mktemp("gateway"), orthanc, pacs_service["service"].url).start()
    yield gw
    gw.stop()


def predict(service, data: bytes) -> dict:
    answer = httpx.post(f"{service.url}/predict", files={"image": ("x.dcm", data)}, headers=service.headers, timeout=60)
    answer.raise_for_status()
    return answer.json()


def dciodvfy_errors(sr: pydicom.Dataset, tmp_path: Path) -> list[str]:
    path = tmp_path / f"{sr.SOPInstanceUID}.dcm"
    sr.save_as(path)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@needs_tools
@pytest.mark.parametrize("name", [NEMA, SIIM])
def test_a_routed_radiograph_gets_its_report_in_its_study(shared, orthanc, gateway, pacs_service, name, tmp_path):
    data = (shared / "real-cxr" / name).read_bytes()
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    uploaded = orthanc.upload(data)
    orthanc.route(uploaded["ID"])
    [sr] = orthanc.wait_reports(uploaded["ParentStudy"])
    expected = predict(pacs_service["service"], data)
    got = read_findings(sr)
    assert {f["label"]: (f["probability"], f["threshold"], f["positive"]) for f in expected["findings"]} == got
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert (sr.PatientID, str(sr.PatientName)) == (source.PatientID, str(source.PatientName))  # filed with the study
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[
        0
    ].ReferencedSOPInstanceUID == str(source.SOPInstanceUID)
    text = " ".join(str(item.get("TextValue", "")) for item in sr.ContentSequence)
    assert "not a diagnosis" in text and "registry version 1" in text and "0123456789abcdef" in text
    assert expected["priority"] in text
    assert dciodvfy_errors(sr, tmp_path) == []
    flagged = orthanc.http.get(f"/studies/{uploaded['ParentStudy']}/metadata/ChexopsPriority")
    deadline = time.monotonic() + 10
    while flagged.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        flagged = orthanc.http.get(f"/studies/{uploaded['ParentStudy']}/metadata/ChexopsPriority")
    assert flagged.text == expected["priority"]
    assert gateway.metric("chexops_pacs_arrival_to_report_seconds_count") >= 1


@needs_tools
def test_a_ct_image_yields_no_report(orthanc, gateway):
    uploaded = orthanc.upload(synthetic("CT"))
    orthanc.route(uploaded["ID"])
    gateway.wait_log("ignored: not a chest radiograph (modality CT")
    time.sleep(1)
    assert orthanc.reports(uploaded["ParentStudy"]) == []


@needs_tools
def test_sending_twice_yields_one_report(orthanc, gateway):
    uploaded = orthanc.upload(synthetic())
    orthanc.route(uploaded["ID"])
    orthanc.wait_reports(uploaded["ParentStudy"])
    before = gateway.logs().count("received again")
    reports = gateway.metric("chexops_pacs_reports_total")
    orthanc.route(uploaded["ID"])
    deadline = time.monotonic() + 20
    while gateway.logs().count("received again") == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gateway.logs().count("received again") == before + 1
    time.sleep(1)
    assert len(orthanc.reports(uploaded["ParentStudy"])) == 1
    assert gateway.metric("chexops_pacs_reports_total") == reports  # the gateway made no second report


@needs_tools
def test_a_malformed_object_gets_a_failure_status_and_the_gateway_keeps_serving(
    orthanc, gateway, tmp_path, monkeypatch
):
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom import AE, _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the file's bytes as they are, not re-encoded

    cr = "1.2.840.10008.5.1.4.1.1.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = cr, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "malformed.dcm"
    with open(path, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fh, meta)
        # the SOP Class UID, then a Patient's Name that claims 200 bytes and has 4: no SOP Instance UID to read
        fh.write(b"\x08\x00\x16\x00UI\x1a\x00" + cr.encode() + b"\x00" + b"\x10\x00\x10\x00PN\xc8\x00abcd")
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(cr, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", orthanc.gateway_port, ae_title=GATEWAY_AET)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)  # a file is sent as its bytes, not re-encoded
    finally:
        assoc.release()
    assert status.Status == 0xC210
    assert gateway.server.alive()
    uploaded = orthanc.upload(synthetic())
    orthanc.route(uploaded["ID"])
    orthanc.wait_reports(uploaded["ParentStudy"])


@needs_tools
def test_reports_come_once_the_service_is_back_even_across_a_gateway_restart(orthanc, gateway, pacs_service):
    service = pacs_service["service"]
    service.stop()
    uploaded = orthanc.upload(synthetic())
    try:
        orthanc.route(uploaded["ID"])  # acknowledged: the image is in the outbox
        gateway.wait_log("predict failed")
        gateway.stop()
        gateway.start()  # the outbox survives; the service is still down
        assert "1 image(s) in the outbox" in gateway.logs()
    finally:
        pacs_service["service"] = start_service(service_model(service), log_name="pacs-service.log", port=service.port)
    orthanc.wait_reports(uploaded["ParentStudy"], timeout=30)


def service_model(service):
    from service_fixtures import MODEL_TAG, ServedModel

    return ServedModel(service.home, MODEL_TAG)


@needs_tools
def test_feedback_by_study_reaches_the_page_store(shared, orthanc, gateway, pacs_service):
    data = (shared / "real-cxr" / NEMA).read_bytes()
    study_uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)
    uploaded = orthanc.upload(data)
    orthanc.route(uploaded["ID"])
    orthanc.wait_reports(uploaded["ParentStudy"])
    service = pacs_service["service"]
    argv = [sys.executable, "-m", "chexops", "pacs", "feedback", "--study", study_uid, "--correct", "--json",
            "--state", str(gateway.state), "--service", service.url]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, env=gateway.env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    [sent] = json.loads(done.stdout)["sent"]
    with sqlite3.connect(service.home / "feedback" / "feedback.db") as db:
        row = db.execute("select correct from feedback where request_id = ?", (sent["request_id"],)).fetchone()
    assert row == (1,)
    unknown = subprocess.run(
        [*argv[:6], "1.2.3.4", *argv[7:]], capture_output=True, text=True, env=gateway.env, cwd=ROOT, timeout=60
    )
    assert unknown.returncode == 2 and "no image of that study" in unknown.stderr
    assert "Traceback" not in unknown.stderr


@needs_tools
def test_no_identifier_of_the_nema_file_reaches_the_gateways_state_or_logs(shared, orthanc, gateway):
    data = (shared / "real-cxr" / NEMA).read_bytes()
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    uploaded = orthanc.upload(data)
    orthanc.route(uploaded["ID"])
    orthanc.wait_reports(uploaded["ParentStudy"])
    deadline = time.monotonic() + 20
    while any(gateway.state.glob("outbox/*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    identifiers = [
        str(source.PatientName), source.PatientName.family_name, source.PatientID, source.PatientBirthDate,
        source.AccessionNumber, source.StudyInstanceUID, source.SOPInstanceUID, source.SeriesInstanceUID,
    ]  # fmt: skip
    identifiers = [i.encode() for i in identifiers if i and len(i) >= 4]
    stored = [p for p in gateway.state.rglob("*") if p.is_file()] + [gateway.log]
    assert len(stored) >= 3  # the salt, a ledger entry and the log at least
    leaks = [(p.name, i) for p in stored for i in identifiers if i in p.read_bytes()]
    assert leaks == []
    lines = gateway.logs().splitlines()  # --json-log: every line one JSON object
    assert lines and all(json.loads(line)["message"] for line in lines)


# --- fast: the rules and the de-identification, no servers --------------------------------------------


def test_the_chest_rule_takes_cr_and_dx_of_the_chest_only():
    from chexops.pacs.gateway import chest_radiograph

    def ds(**attrs):
        d = pydicom.dcmread(io.BytesIO(synthetic()))
        for k, v in attrs.items():
            setattr(d, k, v)
        return d

    assert chest_radiograph(ds()) is None
    assert chest_radiograph(ds(Modality="DX", BodyPartExamined="")) is None
    assert "modality CT" in chest_radiograph(ds(Modality="CT"))
    assert "body part KNEE" in chest_radiograph(ds(BodyPartExamined="KNEE"))
    no_pixels = ds()
    del no_pixels.PixelData
    assert chest_radiograph(no_pixels) == "no pixel data"


def test_the_outbox_copy_keeps_pixels_and_uids_and_nothing_that_names_the_patient():
    from chexops.pacs.state import deidentify

    source = pydicom.dcmread(io.BytesIO(synthetic()))
    source.InstitutionName, source.OperatorsName = "General Hospital", "Op^Erator"
    source.add_new((0x0011, 0x0010), "LO", "PRIVATE CREATOR")
    copy = deidentify(source)
    buffer = io.BytesIO()
    copy.save_as(buffer, enforce_file_format=True)
    text = buffer.getvalue()
    for value in (b"Synthetic^Patient", b"SYN-4711", b"19700101", b"General Hospital", b"Op^Erator", b"PRIVATE"):
        assert value not in text
    back = pydicom.dcmread(io.BytesIO(text))
    assert back.SOPInstanceUID == source.SOPInstanceUID and back.StudyInstanceUID == source.StudyInstanceUID
    assert np.array_equal(back.pixel_array, source.pixel_array)


def test_the_ledger_names_images_by_a_salted_hash(tmp_path):
    from chexops.pacs.state import State

    one, other = State(tmp_path / "a"), State(tmp_path / "b")
    uid = "1.2.3.4.5"
    assert one.key(uid) == State(tmp_path / "a").key(uid)  # the salt is kept
    assert one.key(uid) != other.key(uid) and uid not in one.key(uid)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"send_to": "ORTHANC"}, "AET@HOST:PORT"),
        ({"send_to": "ORTHANC@host:99999"}, "HOST:PORT"),
        ({"send_to": "A@h:1", "listen": "nowhere"}, "--listen must be HOST:PORT"),
        ({}, "--send-to AET@HOST:PORT"),
        ({"send_to": "A@h:1", "ae_title": "WAY-TOO-LONG-AE-TITLE"}, "ae_title"),
    ],
)
def test_bad_settings_are_clear_errors(given, message):
    from chexops.core.errors import ChexopsError
    from chexops.pacs.settings import PacsSettings

    with pytest.raises(ChexopsError, match=message):
        PacsSettings.load(**given)


def test_the_api_key_comes_from_its_file_before_the_variable(monkeypatch, tmp_path):
    from chexops.core.errors import ConfigError
    from chexops.pacs.settings import PacsSettings

    monkeypatch.setenv("CHEXOPS_API_KEY", "from-the-environment")
    key_file = tmp_path / "api-key"
    key_file.write_text("from-the-file\n")
    assert PacsSettings.load(send_to="A@h:1", api_key_file=key_file).api_key() == "from-the-file"
    assert PacsSettings.load(send_to="A@h:1").api_key() == "from-the-environment"
    key_file.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        PacsSettings.load(send_to="A@h:1", api_key_file=key_file).api_key()
    with pytest.raises(ConfigError, match="cannot read"):
        PacsSettings.load(send_to="A@h:1", api_key_file=tmp_path / "missing").api_key()


def test_the_pacs_demo_says_how_to_install_orthanc_when_it_is_missing(monkeypatch, tmp_path):
    import chexops.demo.pacs as demo_pacs

    monkeypatch.setattr(demo_pacs.shutil, "which", lambda name: None)
    result = demo_pacs.pacs_flow("chexops-cxr:v1", tmp_path)
    assert "apt-get install -y orthanc" in result["skipped"]
    assert "skipped: Orthanc is not installed" in "\n".join(demo_pacs.format_pacs(result))


@needs_tools
def test_the_gateway_dies_with_the_process_that_started_it(tmp_path, orthanc, pacs_service):
    import os

    import psutil

    metrics = free_port()
    gw = Gateway(tmp_path, orthanc, pacs_service["service"].url)
    argv = [str(a) for a in gw.argv]
    argv[argv.index("--listen") + 1] = f"127.0.0.1:{free_port()}"
    argv[argv.index("--metrics") + 1] = f"127.0.0.1:{metrics}"
    starter = subprocess.Popen(  # a parent that starts the gateway with no guard of its own, then is killed
        [sys.executable, "-c", "import subprocess, sys, time; p = subprocess.Popen(sys.argv[1:]); "
         "print(p.pid, flush=True); time.sleep(120)", *argv],
        stdout=subprocess.PIPE, text=True, env=gw.env, cwd=ROOT,
    )  # fmt: skip
    child = int(starter.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{metrics}/metrics").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        starter.kill()
        starter.wait(10)
        gone = time.monotonic() + 20
        while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < gone, "the gateway outlived its parent"
            time.sleep(0.2)
    finally:
        if psutil.pid_exists(child):
            os.kill(child, signal.SIGKILL)
