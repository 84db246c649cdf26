"""The DICOM gateway: a C-STORE SCP whose images go through the outbox to /predict, and whose reports go back
to the PACS by C-STORE.

- An image is acknowledged (status 0x0000) only once its de-identified copy is fsynced in the outbox; a
  malformed one gets 0xC210 (cannot understand), an image that is not a chest radiograph is acknowledged and
  ignored with a log line, and one already received (the same SOP Instance UID) is acknowledged and not queued
  again: one report per image.
- The worker takes the outbox oldest first: /predict, /model (what the model is), C-FIND of the study's patient
  and study attributes at the PACS (the gateway keeps none of them), the SR, C-STORE, the urgent flag. What
  fails (service or PACS down) is tried again with exponential backoff; the outbox survives a restart.
- Logs name images by their salted hash only (`state.State.key`).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

import httpx
import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import ComprehensiveSRStorage, StudyRootQueryRetrieveInformationModelFind, Verification

from chexops.imaging.decode import ImageLimits
from chexops.pacs.flags import StudyFlag
from chexops.pacs.report import build_report
from chexops.pacs.settings import PacsSettings
from chexops.pacs.state import State, deidentify

log = logging.getLogger("chexops.pacs")

SUCCESS, CANNOT_UNDERSTAND, OUT_OF_RESOURCES = 0x0000, 0xC210, 0xA700
CHEST_PARTS = frozenset({"", "CHEST", "THORAX", "LUNG", "CHEST_TO_PELVIS"})  # BodyPartExamined (absent: allowed)
CHEST_VIEWS = frozenset({"", "PA", "AP", "LL", "RL", "LATERAL", "LAT", "AP SUPINE", "PA-LAT"})
STUDY_ATTRIBUTES = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
    "ReferringPhysicianName", "StudyID",
)  # fmt: skip


class Retry(Exception):
    """A step failed for a reason that may pass (a server down, busy or not answering)."""


class Rejected(Exception):
    """The service refused the image for good (a 4xx): no report will come of it."""


def chest_radiograph(ds: Dataset, modalities: frozenset[str] = ImageLimits().modalities) -> str | None:
    """None when `ds` is a chest radiograph the service reads (its modalities, chest body part and view);
    otherwise why not."""
    modality = str(ds.get("Modality", "")).upper()
    if modality not in modalities:
        return f"modality {modality or 'missing'} (reads {', '.join(sorted(modalities))})"
    part = str(ds.get("BodyPartExamined", "")).upper().strip()
    if part not in CHEST_PARTS:
        return f"body part {part}"
    view = str(ds.get("ViewPosition", "")).upper().strip()
    if view not in CHEST_VIEWS:
        return f"view {view}"
    if "PixelData" not in ds:
        return "no pixel data"
    return None


class Metrics:
    """chexops_pacs_* Prometheus series in a registry of their own (served by `serve(metrics=...)`)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.received = Counter(
            "chexops_pacs_received", "C-STORE requests by outcome", ["outcome"], registry=self.registry
        )
        self.reports = Counter(
            "chexops_pacs_reports", "reports stored back, by priority", ["priority"], registry=self.registry
        )
        self.retries = Counter(
            "chexops_pacs_retries", "failed attempts to be retried, by step", ["step"], registry=self.registry
        )
        self.outbox = Gauge("chexops_pacs_outbox_items", "images waiting for their report", registry=self.registry)
        self.arrival_to_report = Histogram(
            "chexops_pacs_arrival_to_report_seconds",
            "from the image's arrival to its report's C-STORE at the PACS",
            buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600),
            registry=self.registry,
        )


@dataclass
class Gateway:
    settings: PacsSettings
    api_key: str
    flag: StudyFlag | None = None

    def __post_init__(self):
        self.state = State(self.settings.state)
        self.metrics = Metrics()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.http = httpx.Client(base_url=self.settings.service.rstrip("/"), timeout=self.settings.timeout_s)
        self._models: dict[str, dict[str, Any]] = {}
        self._enqueue_lock = threading.Lock()
        self.ae = AE(ae_title=self.settings.ae_title)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        self.ae.add_requested_context(ComprehensiveSRStorage)
        self.ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = self.settings.timeout_s
        self.server = None
        self.worker: threading.Thread | None = None

    # --- receiving -------------------------------------------------------------------------------------

    def on_store(self, event) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            uid = str(ds.SOPInstanceUID)
            why_not = chest_radiograph(ds)
        except Exception as exc:  # noqa: BLE001 - a malformed object fails in many ways; answered, never a crash
            self.metrics.received.labels("malformed").inc()
            log.warning("C-STORE refused: the object cannot be read (%s)", type(exc).__name__)
            return CANNOT_UNDERSTAND
        key = self.state.key(uid)
        if why_not is not None:
            self.metrics.received.labels("ignored").inc()
            log.info("image %s ignored: not a chest radiograph (%s)", key, why_not)
            return SUCCESS
        try:
            with self._enqueue_lock:
                if self.state.known(key):
                    self.metrics.received.labels("duplicate").inc()
                    log.info("image %s received again: already queued or reported", key)
                    return SUCCESS
                buffer = io.BytesIO()
                deidentify(ds).save_as(buffer, enforce_file_format=True)
                self.state.enqueue(key, buffer.getvalue())
        except OSError as exc:
            log.error("image %s not stored in the outbox (%s): refused, the sender will retry", key, exc)
            return OUT_OF_RESOURCES
        except Exception as exc:  # noqa: BLE001 - pixel data pydicom cannot write back: the object is malformed
            self.metrics.received.labels("malformed").inc()
            log.warning("C-STORE refused: image %s cannot be written (%s)", key, type(exc).__name__)
            return CANNOT_UNDERSTAND
        self.metrics.received.labels("queued").inc()
        self.metrics.outbox.set(self.state.pending())
        log.info("image %s queued", key)
        self.wake.set()
        return SUCCESS

    # --- the worker ------------------------------------------------------------------------------------

    def run_worker(self) -> None:
        while not self.stopping.is_set():
            for key, record in self.state.due():
                if self.stopping.is_set():
                    return
                self.process(key, record)
            self.metrics.outbox.set(self.state.pending())
            self.wake.wait(0.5)
            self.wake.clear()

    def process(self, key: str, record: dict[str, Any]) -> None:
        step, steps = "predict", {}
        started = clock = time.time()

        def lap(name: str) -> None:
            nonlocal clock
            steps[name] = round((time.time() - clock) * 1000, 1)
            clock = time.time()

        try:
            image_bytes = self.state.image(key)
            if "answer" not in record:
                record["answer"] = self.predict(image_bytes)
                self.state.save(key, record)
                lap("predict")
            answer = record["answer"]
            image = pydicom.dcmread(io.BytesIO(image_bytes), stop_before_pixels=True)
            if not record.get("stored"):
                step = "model"
                model = self.model(answer["model"]["version"])
                step = "find"
                assoc = self._associate()  # one association for the query and the report
                try:
                    study = self.find_study(assoc, str(image.StudyInstanceUID))
                    lap("find")
                    step = "store"
                    report = build_report(image, study, answer, model)
                    lap("build")
                    self.store(assoc, report)
                    lap("store")
                finally:
                    assoc.release()
                record["stored"] = time.time()
                self.state.save(key, record)
            if self.flag is not None and not record.get("flagged"):
                step = "flag"
                self.flag.flag(str(image.StudyInstanceUID), answer["priority"])
                record["flagged"] = True
                lap("flag")
        except Rejected as exc:
            log.warning("image %s: the service refused it (%s); no report", key, exc)
            self.state.finish(key, {"rejected": str(exc)[:300], "arrived": record["arrived"]})
            return
        except Exception as exc:  # noqa: BLE001 - whatever failed, the item stays and is tried again
            record["attempts"] = attempts = record.get("attempts", 0) + 1
            delay = min(self.settings.retry_max_s, self.settings.retry_initial_s * 2 ** (attempts - 1))
            record["next"] = time.time() + delay
            record["last_error"] = f"{step}: {type(exc).__name__}"
            self.state.save(key, record)
            self.metrics.retries.labels(step).inc()
            log.warning("image %s: %s failed (%s: %s); attempt %d, next in %.1f s", key, step, type(exc).__name__,
                        str(exc)[:200], attempts, delay)  # fmt: skip
            return
        elapsed = record["stored"] - record["arrived"]
        self.state.finish(
            key,
            {
                "study": self.state.key(str(image.StudyInstanceUID)),
                "request_id": answer["request_id"],
                "priority": answer["priority"],
                "model_version": answer["model"]["version"],
                "arrived": record["arrived"],
                "reported": record["stored"],
                "waited_ms": round((started - record["arrived"]) * 1000, 1),  # in the outbox before this attempt
                "steps_ms": steps,
            },
        )
        self.metrics.reports.labels(answer["priority"]).inc()
        self.metrics.arrival_to_report.observe(elapsed)
        log.info("image %s reported: priority %s, %.2f s after arrival", key, answer["priority"], elapsed)

    def predict(self, dicom: bytes) -> dict[str, Any]:
        try:
            response = self.http.post(
                "/predict",
                files={"image": ("image.dcm", dicom, "application/dicom")},
                headers={"Authorization": f"Bearer {self.api_key}"},
            )
        except httpx.HTTPError as exc:
            raise Retry(f"the service cannot be reached ({type(exc).__name__})") from None
        if response.status_code in (401, 403, 408, 429) or response.status_code >= 500:
            raise Retry(f"the service answered {response.status_code}")
        if response.status_code >= 400:
            raise Rejected(f"{response.status_code}: {response.json().get('error', '')}")
        return response.json()

    def model(self, version: str) -> dict[str, Any]:
        if version not in self._models:
            try:
                described = self.http.get("/model").raise_for_status().json()
            except httpx.HTTPError as exc:
                raise Retry(f"/model failed ({type(exc).__name__})") from None
            if described.get("version") != version:  # a rollout between the two calls: say only what is known
                described = {"run_id": None}
            self._models[version] = described
        return self._models[version]

    def _associate(self):
        aet, host, port = self.settings.destination
        assoc = self.ae.associate(host, port, ae_title=aet)
        if not assoc.is_established:
            raise Retry(f"no association with the PACS {aet}")
        return assoc

    def find_study(self, assoc, study_uid: str) -> Dataset:
        """The study's patient and study attributes as the PACS has them (C-FIND, study level)."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        for keyword in STUDY_ATTRIBUTES:
            setattr(query, keyword, "")
        matches = [
            identifier
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            if status and status.Status in (0xFF00, 0xFF01) and identifier is not None
        ]
        if len(matches) != 1:
            raise Retry(f"the PACS has {len(matches)} studies with the image's Study Instance UID")
        return matches[0]

    def store(self, assoc, report: Dataset) -> None:
        status = assoc.send_c_store(report)
        if not status or status.Status not in (0x0000, 0xB000, 0xB007, 0xB006):
            raise Retry(f"the PACS answered the report's C-STORE with {getattr(status, 'Status', 'nothing')}")

    # --- running ---------------------------------------------------------------------------------------

    def start(self) -> "Gateway":
        self.server = self.ae.start_server(
            self.settings.listen_address, block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)]
        )
        self.worker = threading.Thread(target=self.run_worker, name="chexops-pacs-worker", daemon=True)
        self.worker.start()
        log.info(
            "DICOM gateway %s listening on %s; reports to %s; %d image(s) in the outbox",
            self.settings.ae_title, self.settings.listen, self.settings.send_to, self.state.pending(),
        )  # fmt: skip
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self.server is not None:
            self.server.shutdown()
        if self.worker is not None:
            self.worker.join(timeout=self.settings.timeout_s)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}  # fmt: skip
        return json.dumps(entry)


def serve(settings: PacsSettings, flag: StudyFlag | None = None) -> None:
    """Run the gateway until SIGTERM/SIGINT, or until the process that started it is gone."""
    import signal

    from chexops.core.processes import watch_parent

    if settings.json_log:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    # highdicom logs the UIDs it copies, and warns with the patient's name when it looks odd: neither is logged
    for noisy in ("pynetdicom", "httpx", "httpcore", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="highdicom")
    warnings.filterwarnings("ignore", module="pydicom")
    gateway = Gateway(settings, settings.api_key(), flag).start()
    if settings.metrics:
        from prometheus_client import start_http_server

        from chexops.pacs.settings import host_port

        host, port = host_port(settings.metrics, "--metrics")
        start_http_server(port, host, registry=gateway.metrics.registry)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    watch_parent()
    while not done.wait(1):
        pass
    log.info("stopping the DICOM gateway")
    gateway.stop()
