"""`chexops simulate`: clinic traffic against a running endpoint, with simulated clinicians.

Held-out images of a CheXpert-layout dataset (CSV + root) are sent to `POST /predict` as clinics
would: a `steady` stream, `poisson` arrivals, or `burst`s (a batch of studies at once, sent as
concurrent requests), at `rate` studies a second on average for `duration` seconds (and at most
`max_requests` studies). The traffic is open-loop: a slow answer does not delay the next arrival.

For each request the run keeps the prediction, latency, status and the ground truth it knows; a
`review_share` of the answered studies is reviewed by a simulated clinician, who reads the ground
truth with a per-label `error_rate` and answers through `POST /feedback` with the labels read and a
`correct` verdict judged by `judge`: `triage` (the default) when the model's priority (urgent /
review / routine, `chexops.core.triage.priority`) is the one the clinician's reading gives,
the decision a worklist acts on; `findings` only when every positive/negative verdict matches, which
a 14-finding model almost never earns, so that its agreement rate says little about a canary.

A 429 is backed off for its `Retry-After` (then retried, at most `max_retries` times); the run ends
by itself at its duration (in-flight requests get `timeout_s` more). It writes `simulate.json` (the
summary and every request) and plots (latency over time, online AUROC per finding over time,
agreement rate) to `out`. `shift` replays the same studies altered (`invert`, `scale:F`): the
drift a monitor should see. The report holds CSV row numbers, never the dataset's patient paths.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.results import Result
from chexops.core.triage import priority

log = logging.getLogger(__name__)

REPORT_FILE = "simulate.json"
PATTERNS = ("steady", "poisson", "burst")


class SimulateConfig(BaseModel):
    """One simulated clinic: where it sends, what, how often, and how its clinicians answer."""

    model_config = ConfigDict(extra="forbid")

    url: str
    csv: Path
    root: Path | None = None
    out: Path
    pattern: Literal["steady", "poisson", "burst"] = "poisson"
    rate: float = Field(2.0, gt=0, le=1000, description="studies per second, on average")
    duration: float = Field(60.0, gt=0, le=7 * 86400, description="seconds of traffic")
    max_requests: int = Field(1000, ge=1, le=1_000_000)
    burst_size: int = Field(8, ge=1, le=1000)
    review_share: float = Field(0.0, ge=0, le=1)
    error_rate: float = Field(0.0, ge=0, le=0.5)
    shift: str = "none"
    judge: Literal["triage", "findings"] = "triage"
    seed: int = 0
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(5, ge=0)
    concurrency: int = Field(16, ge=1, le=256)

    @field_validator("shift")
    @classmethod
    def _shift(cls, value: str) -> str:
        shift_fn(value)
        return value


class Quantiles(Result):
    """Latency percentiles in ms (None: nothing answered)."""

    p50: float | None
    p95: float | None
    p99: float | None


class SimulateSummary(Result):
    """What `chexops simulate` prints: the traffic planned, sent and answered, statuses, back-offs on 429,
    latency, each finding's AUROC over the run (None: one class only), reviews and agreement (None: none
    stored), then the plots and the report file once written."""

    omit_unset = frozenset({"plots", "report"})

    endpoint: str
    model: dict[str, Any]
    pattern: str
    rate_per_s: float
    duration_s: float
    shift: str
    seed: int
    planned: int
    sent: int
    answered: int
    statuses: dict[str, int]
    backoffs: int
    rate_limited_requests: int
    elapsed_s: float
    achieved_rate_per_s: float
    latency_ms: Quantiles
    auroc: dict[str, float | None]
    reviewed: int
    feedback_stored: int
    agreement_rate: float | None
    review_share: float
    error_rate: float
    plots: list[str] | None = None
    report: str | None = None


class SimulateReport(Result):
    """`simulate.json`: the summary, the model's labels and thresholds, the online AUROC series and every request."""

    summary: SimulateSummary
    labels: list[str]
    thresholds: dict[str, Any]
    online_auroc: dict[str, list[Any]]
    requests: list[dict[str, Any]]


def shift_fn(spec: str):
    """`none`, `invert` or `scale:F`: the change applied to each grey image in [0, 1]."""
    if spec == "none":
        return None
    if spec == "invert":
        return lambda g: 1.0 - g
    if spec.startswith("scale:"):
        try:
            factor = float(spec.split(":", 1)[1])
        except ValueError:
            factor = -1.0
        if factor > 0:
            return lambda g: np.clip(g * factor, 0, 1)
    raise ValueError(f"shift must be none, invert or scale:F (F > 0), got {spec!r}")


def verdict(
    judge: str, positive: dict[str, bool], model_priority: str, read: dict[str, int], clinician_priority: str
) -> bool:
    """The simulated clinician's `correct`: the triage decision agrees (`triage`), or every finding read does
    (`findings`)."""
    if judge == "triage":
        return model_priority == clinician_priority
    return findings_agree(positive, read)


def findings_agree(positive: dict[str, bool], read: dict[str, int]) -> bool:
    """Every finding the clinician read (label → 0/1) has the model's verdict."""
    return all(positive[label] == bool(v) for label, v in read.items())


def arrival_times(
    pattern: str, rate: float, duration: float, max_requests: int, burst_size: int, rng: np.random.Generator
) -> list[float]:
    """Seconds from the start at which each study arrives (sorted; a burst shares one time)."""
    if pattern == "steady":
        times = np.arange(0, duration, 1.0 / rate)
    elif pattern == "poisson":
        n = int(rate * duration * 2 + 20)
        times = np.cumsum(rng.exponential(1.0 / rate, n))
        times = times[times < duration]
    else:  # a burst of `burst_size` studies every burst_size / rate seconds: the same mean rate
        starts = np.arange(0, duration, burst_size / rate)
        times = np.repeat(starts, burst_size)
    return [float(t) for t in times[:max_requests]]


def api_key(url: str, env_name: str) -> str:
    """The key from `env_name`, or the development key when the endpoint is on this machine."""
    key = os.environ.get(env_name, "").strip()
    if key:
        return key
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        from chexops.serving.settings import DEV_KEYS

        return DEV_KEYS.split(":", 1)[1]
    raise UserInputError(f"no API key: set {env_name} (the development key is used only for a loopback endpoint).")


def _encode(path: Path, shift) -> tuple[bytes, str]:
    if shift is None:
        return path.read_bytes(), path.name
    from chexops.imaging.decode import to_png
    from chexops.imaging.preprocessing import load_image, to_grey

    return to_png(shift(to_grey(load_image(path))).astype(np.float32)), path.stem + ".png"


class Clinic:
    """The run: its studies, its HTTP client, its records (thread-safe appends)."""

    def __init__(self, cfg: SimulateConfig, key: str):
        import httpx

        from chexops.data.chexpert import image_paths, read_chexpert_csv

        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.shift = shift_fn(cfg.shift)
        self.client = httpx.Client(
            base_url=cfg.url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=cfg.timeout_s,
            limits=httpx.Limits(max_connections=cfg.concurrency),
        )
        self.model = self._model_info()
        self.labels: list[str] = list(self.model["labels"])
        table = read_chexpert_csv(cfg.csv, self.labels)
        self.paths = image_paths(table, cfg.root)
        missing = [p for p in self.paths[:20] if not p.is_file()]
        if missing:
            raise UserInputError(
                f"images of {cfg.csv} are not under {cfg.root or table.path.parent.parent} "
                f"(first missing: {missing[0]}); pass --root."
            )
        self.rows = table.frame["csv_row"].to_numpy()
        self.truth = table.values
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.started = 0.0
        self.deadline = 0.0

    def _model_info(self) -> dict[str, Any]:
        import httpx

        try:
            response = self.client.get("/model")
        except httpx.HTTPError as exc:
            raise ChexopsError(
                f"the endpoint {self.cfg.url} cannot be reached ({type(exc).__name__}: {exc})."
            ) from None
        if response.status_code != 200:
            raise ChexopsError(
                f"{self.cfg.url}/model answered {response.status_code}; is it a chexops endpoint that is ready?"
            )
        return response.json()

    def _post(self, path: str, retries: list[float], **kwargs):
        """POST with back-off on 429 (Retry-After, capped by the time left); None when out of time."""
        import httpx

        for attempt in range(self.cfg.max_retries + 1):
            try:
                response = self.client.post(path, **kwargs)
            except httpx.HTTPError as exc:
                return None, f"{type(exc).__name__}"
            if response.status_code != 429 or attempt == self.cfg.max_retries:
                return response, None
            wait = float(response.headers.get("Retry-After", "1") or 1)
            if time.monotonic() + wait > self.deadline + self.cfg.timeout_s:
                return response, None
            retries.append(wait)
            time.sleep(wait)
        return None, "retries"

    def study(self, index: int, planned: float) -> None:
        k = int(self.order[index])
        truth = {label: (None if math.isnan(v) else int(v)) for label, v in zip(self.labels, self.truth[k])}
        record: dict[str, Any] = {
            "index": index,
            "csv_row": int(self.rows[k]),
            "planned_s": round(planned, 4),
            "sent_s": round(time.monotonic() - self.started, 4),
            "truth": truth,
        }
        data, name = _encode(self.paths[k], self.shift)
        retries: list[float] = []
        t0 = time.perf_counter()
        response, failure = self._post("/predict", retries, files={"image": (name, data)})
        record.update(
            latency_ms=round((time.perf_counter() - t0) * 1000, 2),
            backoffs=len(retries),
            backoff_s=round(sum(retries), 2),
            status=response.status_code if response is not None else 0,
            failure=failure,
        )
        if response is not None and response.status_code == 200:
            body = response.json()
            record.update(
                request_id=body["request_id"],
                priority=body["priority"],
                model_version=body["model"]["version"],
                probabilities={f["label"]: f["probability"] for f in body["findings"]},
                positive={f["label"]: bool(f["positive"]) for f in body["findings"]},
            )
            if self.review_draw[index] < self.cfg.review_share:
                record["feedback"] = self._review(index, record, truth)
        with self.lock:
            self.records.append(record)

    def _review(self, index: int, record: dict[str, Any], truth: dict[str, int | None]) -> dict[str, Any]:
        """The clinician reads the ground truth (each known 0/1 label flipped with `error_rate`) and answers."""
        flips = self.flip_draw[index]
        read = {
            label: (1 - v if flips[j] < self.cfg.error_rate else v)
            for j, (label, v) in enumerate(truth.items())
            if v in (0, 1)
        }
        clinician_priority = priority([{"label": label, "positive": bool(v)} for label, v in read.items()])
        correct = verdict(self.cfg.judge, record["positive"], record["priority"], read, clinician_priority)
        retries: list[float] = []
        response, failure = self._post(
            "/feedback", retries, json={"request_id": record["request_id"], "correct": correct, "labels": read}
        )
        status = response.status_code if response is not None else 0
        return {
            "correct": correct,
            "clinician_priority": clinician_priority,
            "labels": len(read),
            "status": status,
            "stored": status == 200,
            "backoffs": len(retries),
            "failure": failure,
        }

    def run(self) -> SimulateReport:
        cfg = self.cfg
        times = arrival_times(cfg.pattern, cfg.rate, cfg.duration, cfg.max_requests, cfg.burst_size, self.rng)
        cycles = -(-max(len(times), 1) // len(self.paths))  # more studies than images: cycle, each in a new order
        self.order = np.concatenate([self.rng.permutation(len(self.paths)) for _ in range(cycles)])
        self.review_draw = self.rng.random(len(times))
        self.flip_draw = self.rng.random((len(times), len(self.labels)))
        log.info(
            "Simulating %d studies (%s, %.2f/s for %.0f s) against %s (%s v%s)",
            len(times),
            cfg.pattern,
            cfg.rate,
            cfg.duration,
            cfg.url,
            self.model.get("name"),
            self.model.get("version"),
        )
        self.started = time.monotonic()
        self.deadline = self.started + cfg.duration
        with ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="clinic") as pool:
            futures = []
            for index, planned in enumerate(times):
                delay = self.started + planned - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if time.monotonic() > self.deadline:
                    break
                futures.append(pool.submit(self.study, index, planned))
            for future in futures:
                future.result()
        elapsed = time.monotonic() - self.started
        self.client.close()
        records = sorted(self.records, key=lambda r: r["index"])
        return build_report(cfg, self.model, self.labels, records, len(times), elapsed)


# --- the report -------------------------------------------------------------------------------------


def online_auroc(records: list[dict[str, Any]], labels: list[str], points: int = 10) -> dict[str, list]:
    """Cumulative AUROC per label after each tenth of the answered studies (None: one class only)."""
    from sklearn.metrics import roc_auc_score

    answered = [r for r in records if r.get("probabilities")]
    cuts = sorted({max(1, round(len(answered) * (i + 1) / points)) for i in range(points)}) if answered else []
    series: dict[str, list] = {"n": cuts, "t_s": [answered[c - 1]["sent_s"] for c in cuts]}
    for label in labels:
        values = []
        for c in cuts:
            pairs = [
                (r["truth"][label], r["probabilities"][label]) for r in answered[:c] if r["truth"].get(label) in (0, 1)
            ]
            y = [t for t, _ in pairs]
            values.append(round(float(roc_auc_score(y, [p for _, p in pairs])), 4) if len(set(y)) == 2 else None)
        series[label] = values
    return series


def build_report(
    cfg: SimulateConfig,
    model: dict[str, Any],
    labels: list[str],
    records: list[dict[str, Any]],
    planned: int,
    elapsed: float,
) -> SimulateReport:
    ok = [r for r in records if r["status"] == 200]
    latencies = np.array([r["latency_ms"] for r in ok]) if ok else np.array([])
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    reviewed = [r["feedback"] for r in records if "feedback" in r]
    stored = [f for f in reviewed if f["stored"]]
    auroc = online_auroc(records, labels)
    summary = SimulateSummary(
        endpoint=cfg.url,
        model={k: model.get(k) for k in ("name", "version", "run_id", "precision")},
        pattern=cfg.pattern,
        rate_per_s=cfg.rate,
        duration_s=cfg.duration,
        shift=cfg.shift,
        seed=cfg.seed,
        planned=planned,
        sent=len(records),
        answered=len(ok),
        statuses=statuses,
        backoffs=sum(r["backoffs"] for r in records) + sum(f["backoffs"] for f in reviewed),
        rate_limited_requests=sum(1 for r in records if r["backoffs"]),
        elapsed_s=round(elapsed, 2),
        achieved_rate_per_s=round(len(records) / elapsed, 3) if elapsed else 0.0,
        latency_ms=Quantiles(
            **{
                q: round(float(np.percentile(latencies, p)), 2) if len(latencies) else None
                for q, p in (("p50", 50), ("p95", 95), ("p99", 99))
            }
        ),
        auroc={label: auroc[label][-1] if auroc["n"] else None for label in labels},
        reviewed=len(reviewed),
        feedback_stored=len(stored),
        agreement_rate=round(sum(f["correct"] for f in stored) / len(stored), 4) if stored else None,
        review_share=cfg.review_share,
        error_rate=cfg.error_rate,
    )
    return SimulateReport(
        summary=summary, labels=labels, thresholds=model.get("thresholds", {}), online_auroc=auroc, requests=records
    )


def plot_report(report: SimulateReport, out: Path) -> list[str]:
    """latency.png, auroc.png, agreement.png in `out`; returns their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = report.requests
    ok = [r for r in records if r["status"] == 200]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.scatter([r["sent_s"] for r in ok], [r["latency_ms"] for r in ok], s=8, label="200")
    other = [r for r in records if r["status"] != 200]
    if other:
        ax.scatter(
            [r["sent_s"] for r in other], [r["latency_ms"] for r in other], s=12, marker="x", c="red", label="not 200"
        )
    ax.set(xlabel="seconds since start", ylabel="latency (ms)", title="Latency over time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=90)
    plt.close(fig)

    auroc = report.online_auroc
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label in report.labels:
        points = [(t, v) for t, v in zip(auroc["t_s"], auroc[label]) if v is not None]
        if points:
            ax.plot(*zip(*points), marker=".", label=label)
    ax.set(xlabel="seconds since start", ylabel="cumulative AUROC", title="Online AUROC per finding", ylim=(0, 1))
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "auroc.png", dpi=90)
    plt.close(fig)

    reviewed = [(r["sent_s"], r["feedback"]["correct"]) for r in records if r.get("feedback", {}).get("stored")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if reviewed:
        agree = np.cumsum([c for _, c in reviewed]) / np.arange(1, len(reviewed) + 1)
        ax.plot([t for t, _ in reviewed], agree, marker=".")
    ax.set(
        xlabel="seconds since start",
        ylabel="agreement rate (cumulative)",
        title="Agreement with clinicians",
        ylim=(0, 1),
    )
    fig.tight_layout()
    fig.savefig(out / "agreement.png", dpi=90)
    plt.close(fig)
    return ["latency.png", "auroc.png", "agreement.png"]


def simulate(cfg: SimulateConfig, api_key_env: str = "CHEXOPS_API_KEY") -> SimulateReport:
    """Run the clinic, write `simulate.json` and the plots to `cfg.out`; return the report."""
    clinic = Clinic(cfg, api_key(cfg.url, api_key_env))
    report = clinic.run()
    cfg.out.mkdir(parents=True, exist_ok=True)
    report.summary.plots = plot_report(report, cfg.out)
    report.summary.report = str(cfg.out / REPORT_FILE)
    (cfg.out / REPORT_FILE).write_text(json.dumps(report.model_dump(mode="json"), indent=1) + "\n")
    return report


def human(summary: SimulateSummary) -> str:
    lat = summary.latency_ms
    agreement = "n/a" if summary.agreement_rate is None else f"{summary.agreement_rate:.1%}"
    aurocs = [v for v in summary.auroc.values() if v is not None]
    return (
        f"Sent {summary.sent} of {summary.planned} studies ({summary.pattern}, {summary.achieved_rate_per_s}/s) "
        f"to {summary.endpoint} in {summary.elapsed_s} s: {summary.answered} answered, statuses "
        f"{summary.statuses}, {summary.backoffs} back-offs on 429. Latency p50 {lat.p50} ms, p95 {lat.p95} ms. "
        f"Mean online AUROC {np.mean(aurocs) if aurocs else float('nan'):.3f} over {len(aurocs)} findings. "
        f"{summary.feedback_stored} of {summary.reviewed} reviews stored, agreement {agreement}. "
        f"Report: {summary.report}"
    )
