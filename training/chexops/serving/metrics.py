"""The service's own Prometheus series, next to BentoML's on /metrics.

prometheus_client is imported when `ServiceMetrics` is built (in the service's __init__), never at
module import: BentoML sets PROMETHEUS_MULTIPROC_DIR in its workers after importing the service
module, and prometheus_client picks its storage when first imported.

- chexops_predictions_total{priority}
- chexops_findings_positive_total{finding}: positive findings, by label
- chexops_finding_probability{finding}: histogram of each label's probability
- chexops_feedback_total{verdict="correct"|"incorrect"}
- chexops_feedback_agreement_ratio: correct / all feedback in the store (since it was created)
- chexops_model_info{name,version,precision,run_id} 1
- chexops_stage_seconds{stage="decode"|"preprocess"|"inference"}
- chexops_rejected_requests_total{reason}: 4xx answers by cause (auth, rate, upload, ...)
- chexops_http_requests_total{route,code}, chexops_http_request_duration_seconds{route}: the clinical
  routes (/predict, /explain, /feedback) as clients see them (what the canary analysis compares)
- chexops_batch_size: images per ONNX Runtime run (1 each without adaptive batching)
- chexops_injected_faults_total{kind}: CHEXOPS_FAULT_INJECTION at work (tests only)

Every series carries `environment`, `track` (stable|canary) and `model_version` (CHEXOPS_ENVIRONMENT,
CHEXOPS_TRACK, the served model), so stable and canary pods behind one Service are told apart.
One server's series only (`own_metrics_dir`): BentoML gives every server on one BENTOML_HOME the same
`prometheus_multiproc_dir`, so a second server (a `make demo` beside `make serve`) mixed its workers'
series into the first's /metrics, and cleaned the directory under it at its start.

Feedback is counted under `predicted_version`, the version that made the prediction it judges
(with a shared store, a canary's prediction may be judged through a stable pod).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
CONST = ("environment", "track", "model_version")
ROUTES = ("/predict", "/explain", "/feedback")
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)


class _WithConst:
    """A metric whose `labels()` adds the service's constant labels."""

    def __init__(self, metric, const: dict[str, str]):
        self.metric, self.const = metric, const

    def labels(self, **labels: str):
        return self.metric.labels(**self.const, **labels)


class ServiceMetrics:
    def __init__(
        self,
        model_name: str,
        version: str,
        precision: str,
        run_id: str,
        environment: str = "development",
        track: str = "stable",
    ):
        import prometheus_client as prom

        const = {"environment": environment, "track": track, "model_version": version}

        def make(kind, name: str, doc: str, labels: tuple[str, ...] = (), **kw):
            return _WithConst(kind(name, doc, [*CONST, *labels], **kw), const)

        self.predictions = make(
            prom.Counter, "chexops_predictions", "Predictions answered, by triage priority", ("priority",)
        )
        self.positive = make(
            prom.Counter, "chexops_findings_positive", "Positive findings predicted, by label", ("finding",)
        )
        self.probability = make(
            prom.Histogram,
            "chexops_finding_probability",
            "Predicted probability, by label",
            ("finding",),
            buckets=BUCKETS,
        )
        self.feedback = make(
            prom.Counter,
            "chexops_feedback",
            "Feedback received, by verdict and the version that predicted",
            ("verdict", "predicted_version"),
        )
        self.agreement = make(
            prom.Gauge,
            "chexops_feedback_agreement_ratio",
            "Share of feedback saying the prediction was correct",
            multiprocess_mode="mostrecent",
        )
        self.info = make(
            prom.Gauge,
            "chexops_model_info",
            "The model this service runs",
            ("name", "version", "precision", "run_id"),
            multiprocess_mode="max",
        )
        self.stage = make(
            prom.Histogram,
            "chexops_stage_seconds",
            "Time per request stage",
            ("stage",),
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.rejected = make(prom.Counter, "chexops_rejected_requests", "Requests answered 4xx, by cause", ("reason",))
        self.requests = make(
            prom.Counter,
            "chexops_http_requests",
            "Clinical requests answered, by route and status code",
            ("route", "code"),
        )
        self.latency = make(
            prom.Histogram,
            "chexops_http_request_duration_seconds",
            "Clinical request latency, by route",
            ("route",),
            buckets=LATENCY_BUCKETS,
        )
        self.batch = make(
            prom.Histogram,
            "chexops_batch_size",
            "Images per ONNX Runtime run (1 each without adaptive batching)",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
        )
        self.injected = make(
            prom.Counter, "chexops_injected_faults", "Faults injected by CHEXOPS_FAULT_INJECTION", ("kind",)
        )
        self.info.labels(name=model_name, version=version, precision=precision, run_id=run_id).set(1)
        self.version = version

    def observe_prediction(self, findings: list[dict], priority: str, timings_ms: dict[str, float]) -> None:
        self.predictions.labels(priority=priority).inc()
        for f in findings:
            self.probability.labels(finding=f["label"]).observe(f["probability"])
            if f["positive"]:
                self.positive.labels(finding=f["label"]).inc()
        for stage in ("decode", "preprocess", "inference"):
            self.stage.labels(stage=stage).observe(timings_ms[f"{stage}_ms"] / 1000)

    def observe_feedback(self, correct: bool, counts: tuple[int, int], predicted_version: str | None = None) -> None:
        self.feedback.labels(
            verdict="correct" if correct else "incorrect", predicted_version=predicted_version or self.version
        ).inc()
        self.set_agreement(counts)

    def set_agreement(self, counts: tuple[int, int]) -> None:
        total = sum(counts)
        if total:
            self.agreement.labels().set(counts[0] / total)


class HttpMetrics:
    """ASGI middleware: status code and latency of each clinical request (outside the fault injection,
    so injected errors and delays are seen as a client sees them)."""

    def __init__(self, app, owner):
        self.app, self.owner = app, owner

    async def __call__(self, scope, receive, send):
        path = scope.get("path")
        if scope["type"] != "http" or path not in ROUTES:
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            backend = getattr(self.owner.state, "backend", None)
            if backend is not None:
                backend.metrics.requests.labels(route=path, code=str(status)).inc()
                backend.metrics.latency.labels(route=path).observe(time.perf_counter() - started)


METRICS_DIRS = "chexops-metrics"  # beside BentoML's prometheus_multiproc_dir: BentoML never cleans it


def own_metrics_dir() -> Path | None:
    """In a BentoML worker: point PROMETHEUS_MULTIPROC_DIR at a directory of this server's own (one per
    `bentoml serve` process, the workers' parent, shared by its workers), removed when the worker exits; the
    directories of servers no longer running are removed at start. Outside a worker (no such variable): None."""
    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not shared:
        return None
    root = Path(shared).resolve().parent / METRICS_DIRS
    if Path(shared).resolve().parent.name == METRICS_DIRS:
        return Path(shared)  # already ours (the module imported twice)
    server = os.getppid()
    mine = root / f"server-{server}"
    root.mkdir(parents=True, exist_ok=True)
    for other in root.glob("server-*"):  # a server that is gone (a restart has another pid): its files go
        if other != mine and not _running(other.name.removeprefix("server-")):
            shutil.rmtree(other, ignore_errors=True)
    mine.mkdir(exist_ok=True)  # the workers of one server share it
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(mine)
    atexit.register(shutil.rmtree, mine, True)
    log.debug("Prometheus multiprocess files in %s", mine)
    return mine


def _running(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
