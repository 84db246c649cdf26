"""`chexops report business`: two model versions on the same simulated clinic, judged as a clinic would.

Inputs: two `chexops simulate` reports (`simulate.json`) of the same clinic (same CSV and seed, so the
same studies in the same order), one per model version. Only studies answered in both are compared.

- **Time to read an abnormal study** (a discrete-event simulation of one reading room): studies arrive
  as a Poisson process at `arrivals_per_hour`; each takes a reading time drawn from a gamma
  distribution (shape `reading_shape`) with mean `reading_minutes`; `readers` radiologists take the
  next study from the worklist whenever one is free. The worklist is ordered first-in first-out, or by
  the model's triage priority (urgent, review, routine; ties first-in first-out). The time to read is
  arrival → end of its reading; "abnormal" is a study whose ground truth has a positive finding
  other than No Finding and Support Devices (as triage counts them: `chexops.serving.inference`).
  Each replication draws new arrivals, reading times and a bootstrap resample of the studies; the
  same draws serve every ordering and both models (common random numbers), so differences are sharp.
- **Sensitivity and specificity** per finding at the operating thresholds the service applied (the
  `positive` verdicts in the reports), over studies whose ground truth is 0/1 for that finding.
- **Agreement with clinicians**: the share of stored feedback saying the prediction was correct.

Every figure has a bootstrap 95% interval (percentiles over `bootstrap` resamples of the studies: `chexops.core.stats`).
`agreement_interval` answers the canary's question: how wide is the agreement rate's interval with n
reviewed studies (by simulation)?
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from chexops.core import stats
from chexops.core.errors import UserInputError
from chexops.core.results import Result
from chexops.core.triage import NOT_A_FINDING
from chexops.loop.simulate import REPORT_FILE

log = logging.getLogger(__name__)

RANK = {"urgent": 0, "review": 1, "routine": 2}


class ClinicParameters(BaseModel):
    """The reading room of the discrete-event simulation (documented defaults: a small emergency department)."""

    model_config = ConfigDict(extra="forbid")

    arrivals_per_hour: float = Field(10.0, gt=0, description="studies arriving per hour (Poisson)")
    reading_minutes: float = Field(5.0, gt=0, description="mean reading time of one study")
    reading_shape: float = Field(4.0, gt=0, description="gamma shape of reading times (4: sd = half the mean)")
    readers: int = Field(1, ge=1, description="radiologists reading in parallel")
    replications: int = Field(200, ge=10, le=100_000, description="simulated days, each a bootstrap of the studies")
    bootstrap: int = Field(1000, ge=50, le=100_000, description="resamples for the intervals of the rates")
    seed: int = 0


class TimeToRead(Result):
    """Mean minutes until an abnormal study is read, per worklist order, and their differences: each an
    interval {estimate, low, high} (None: no replication had an abnormal study); the abnormal share and
    the reading room's utilisation."""

    fifo: dict[str, float | None]
    priority_a: dict[str, float | None]
    priority_b: dict[str, float | None]
    priority_a_minus_fifo: dict[str, float | None]
    priority_b_minus_fifo: dict[str, float | None]
    b_minus_a: dict[str, float | None]
    abnormal_share: float
    utilisation: float


class VersionOutcome(Result):
    """One model version on the clinic: its model and endpoint, per finding sensitivity and specificity
    ({estimate, low, high, n} each), agreement with clinicians and latency (from its simulate report)."""

    model: dict[str, Any]
    endpoint: str
    operating_point: dict[str, dict[str, dict[str, Any]]]
    agreement: dict[str, Any]
    latency_ms: dict[str, float | None]


class BusinessReport(Result):
    """Two model versions compared (`business.json`), then the Markdown report once written."""

    omit_unset = frozenset({"report"})

    studies: int
    abnormal: int
    labels: list[str]
    parameters: ClinicParameters
    time_to_read_minutes: TimeToRead
    a: VersionOutcome
    b: VersionOutcome
    report: str | None = None


def load_report(path: Path) -> dict[str, Any]:
    path = Path(path)
    file = path / REPORT_FILE if path.is_dir() else path
    try:
        report = json.loads(file.read_text())
        report["summary"], report["requests"]  # noqa: B018 - the shape of a simulate report
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserInputError(f"{file} is not a `chexops simulate` report ({type(exc).__name__}: {exc}).") from None
    return report


def abnormal(truth: dict[str, int | None]) -> bool:
    return any(v == 1 for label, v in truth.items() if label not in NOT_A_FINDING)


def matched_studies(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """The studies answered in both reports, paired by position in the clinic (and checked to be the same study)."""
    by_index = {r["index"]: r for r in b["requests"]}
    pairs = [(r, by_index[r["index"]]) for r in a["requests"] if r["index"] in by_index]
    same = [(x, y) for x, y in pairs if x["csv_row"] == y["csv_row"]]
    if len(same) < max(1, len(pairs)) * 0.9 or not same:
        raise UserInputError(
            "the two reports are not of the same clinic (their studies differ): run `chexops simulate` "
            "with the same --csv and --seed against each endpoint."
        )
    answered = [(x, y) for x, y in same if x.get("priority") and y.get("priority")]
    if len(answered) < 5:
        raise UserInputError(f"only {len(answered)} studies were answered by both endpoints; at least 5 are needed.")
    return [x for x, _ in answered], [y for _, y in answered]


def worklist_times(arrivals: np.ndarray, reading: np.ndarray, rank: np.ndarray, readers: int) -> np.ndarray:
    """Minutes from arrival to the end of reading for each study, readers always taking the worklist's first
    study (lowest `rank`, then earliest arrival)."""
    n = len(arrivals)
    done = np.empty(n)
    free = [0.0] * readers  # when each reader is next free
    heapq.heapify(free)
    waiting: list[tuple[float, float, int]] = []
    nxt = 0
    for _ in range(n):
        t = heapq.heappop(free)
        if not waiting and nxt < n and arrivals[nxt] > t:
            t = arrivals[nxt]
        while nxt < n and arrivals[nxt] <= t:
            heapq.heappush(waiting, (rank[nxt], arrivals[nxt], nxt))
            nxt += 1
        _, _, i = heapq.heappop(waiting)
        done[i] = t + reading[i]
        heapq.heappush(free, done[i])
    return done - arrivals


def time_to_read(a: list[dict], b: list[dict], params: ClinicParameters) -> TimeToRead:
    """Mean minutes to read abnormal studies: FIFO, priority by A, priority by B, over replications."""
    rng = np.random.default_rng(params.seed)
    is_abnormal = np.array([abnormal(r["truth"]) for r in a])
    rank_a = np.array([RANK[r["priority"]] for r in a])
    rank_b = np.array([RANK[r["priority"]] for r in b])
    n = len(a)
    studies = stats.Groups.rows(n)
    results = {"fifo": [], "priority_a": [], "priority_b": []}
    for _ in range(params.replications):
        pick = studies.resample(rng)
        if not is_abnormal[pick].any():
            continue
        arrivals = np.cumsum(rng.exponential(60.0 / params.arrivals_per_hour, n))
        reading = rng.gamma(params.reading_shape, params.reading_minutes / params.reading_shape, n)
        abn = is_abnormal[pick]
        for key, rank in (("fifo", np.zeros(n)), ("priority_a", rank_a[pick]), ("priority_b", rank_b[pick])):
            results[key].append(float(worklist_times(arrivals, reading, rank, params.readers)[abn].mean()))
    arrays = {k: np.array(v) for k, v in results.items()}
    out: dict[str, Any] = {k: _interval(v) for k, v in arrays.items()}
    for key in ("priority_a", "priority_b"):
        out[f"{key}_minus_fifo"] = _interval(arrays[key] - arrays["fifo"])
    out["b_minus_a"] = _interval(arrays["priority_b"] - arrays["priority_a"])
    out["abnormal_share"] = round(float(is_abnormal.mean()), 4)
    out["utilisation"] = round(params.arrivals_per_hour * params.reading_minutes / 60 / params.readers, 3)
    return TimeToRead(**out)


def _interval(values: np.ndarray) -> dict[str, float | None]:
    """The mean of simulated values and their central 95%."""
    values = values[~np.isnan(values)]
    interval = stats.percentile_interval(values)
    if interval is None:
        return {"estimate": None, "low": None, "high": None}
    return {"estimate": round(float(values.mean()), 4), "low": round(interval[0], 4), "high": round(interval[1], 4)}


def _rate_interval(hits: np.ndarray, rng: np.random.Generator, bootstrap: int) -> dict[str, float | None]:
    """A share (mean of 0/1) with its bootstrap 95% interval; None when there is nothing to count."""
    if not len(hits):
        return {"estimate": None, "low": None, "high": None, "n": 0}
    means = stats.bootstrap(lambda rows: hits[rows].mean(), stats.Groups.rows(len(hits)), bootstrap, rng)
    low, high = stats.percentile_interval(means)
    return {"estimate": round(float(hits.mean()), 4), "low": round(low, 4), "high": round(high, 4), "n": int(len(hits))}


def operating_point(records: list[dict], labels: list[str], rng: np.random.Generator, bootstrap: int) -> dict[str, Any]:
    """Per finding: sensitivity and specificity of the service's verdicts against the ground truth."""
    out = {}
    for label in labels:
        pairs = [(r["truth"].get(label), r["positive"][label]) for r in records if r["truth"].get(label) in (0, 1)]
        pos = np.array([float(p) for t, p in pairs if t == 1])
        neg = np.array([float(not p) for t, p in pairs if t == 0])
        out[label] = {
            "sensitivity": _rate_interval(pos, rng, bootstrap),
            "specificity": _rate_interval(neg, rng, bootstrap),
        }
    flagged = np.array([float(r["priority"] != "routine") for r in records if abnormal(r["truth"])])
    normal = np.array([float(r["priority"] == "routine") for r in records if not abnormal(r["truth"])])
    out["any abnormality (triage)"] = {
        "sensitivity": _rate_interval(flagged, rng, bootstrap),
        "specificity": _rate_interval(normal, rng, bootstrap),
    }
    return out


def agreement(records: list[dict], rng: np.random.Generator, bootstrap: int) -> dict[str, Any]:
    hits = np.array([float(r["feedback"]["correct"]) for r in records if r.get("feedback", {}).get("stored")])
    return _rate_interval(hits, rng, bootstrap)


def agreement_interval(n: int, rate: float, simulations: int = 20000, seed: int = 0) -> dict[str, float]:
    """The 95% interval of the agreement rate measured on `n` reviewed studies when the true rate is `rate`
    (simulated: binomial draws), and its half-width: the noise a canary threshold must allow for."""
    rng = np.random.default_rng(seed)
    low, high = stats.percentile_interval(rng.binomial(n, rate, simulations) / n)
    return {
        "n": n,
        "rate": rate,
        "low": round(float(low), 4),
        "high": round(float(high), 4),
        "half_width": round(float(high - low) / 2, 4),
        "normal_approx_half_width": round(1.96 * math.sqrt(rate * (1 - rate) / n), 4),
    }


def compare(a_report: dict[str, Any], b_report: dict[str, Any], params: ClinicParameters) -> BusinessReport:
    a, b = matched_studies(a_report, b_report)
    labels = [label for label in a_report["labels"] if label in b_report["labels"]]
    rng = np.random.default_rng(params.seed + 1)
    models = {}
    for key, report, records in (("a", a_report, a), ("b", b_report, b)):
        models[key] = VersionOutcome(
            model=report["summary"]["model"],
            endpoint=report["summary"]["endpoint"],
            operating_point=operating_point(records, labels, rng, params.bootstrap),
            agreement=agreement(records, rng, params.bootstrap),
            latency_ms=report["summary"]["latency_ms"],
        )
    return BusinessReport(
        studies=len(a),
        abnormal=int(sum(abnormal(r["truth"]) for r in a)),
        labels=labels,
        parameters=params,
        time_to_read_minutes=time_to_read(a, b, params),
        **models,
    )


# --- the report -------------------------------------------------------------------------------------


def _fmt(i: dict[str, Any], digits: int = 3) -> str:
    if i.get("estimate") is None:
        return "n/a"
    return f"{i['estimate']:.{digits}f} [{i['low']:.{digits}f}, {i['high']:.{digits}f}]"


def _name(m: VersionOutcome) -> str:
    model = m.model
    return f"{model.get('name')} v{model.get('version')} ({model.get('precision')})"


def markdown(result: BusinessReport, plots: list[str]) -> str:
    t, p = result.time_to_read_minutes, result.parameters
    a, b = result.a, result.b
    lines = [
        "# Business evaluation: two model versions on the same simulated clinic",
        "",
        f"- A: {_name(a)} at {a.endpoint}",
        f"- B: {_name(b)} at {b.endpoint}",
        f"- {result.studies} studies answered by both, {result.abnormal} abnormal by the ground truth.",
        f"- Reading room: {p.arrivals_per_hour} studies/h (Poisson), reading {p.reading_minutes} min on average "
        f"(gamma, shape {p.reading_shape}), {p.readers} reader(s): utilisation {t.utilisation}; "
        f"{p.replications} replications. Intervals: bootstrap 95%.",
        "",
        "## Time until an abnormal study is read (minutes)",
        "",
        "| worklist order | mean minutes [95% CI] | change vs first-in first-out |",
        "|---|---|---|",
        f"| first-in first-out | {_fmt(t.fifo, 1)} | |",
        f"| priority by A | {_fmt(t.priority_a, 1)} | {_fmt(t.priority_a_minus_fifo, 1)} |",
        f"| priority by B | {_fmt(t.priority_b, 1)} | {_fmt(t.priority_b_minus_fifo, 1)} |",
        "",
        f"B − A (priority worklists): {_fmt(t.b_minus_a, 1)} minutes.",
        "",
        "## Sensitivity and specificity at the operating thresholds",
        "",
        "| finding | sensitivity A | sensitivity B | specificity A | specificity B |",
        "|---|---|---|---|---|",
    ]
    for label in [*result.labels, "any abnormality (triage)"]:
        oa, ob = a.operating_point[label], b.operating_point[label]
        if oa["sensitivity"]["n"] + oa["specificity"]["n"] == 0:
            continue
        lines.append(
            f"| {label} | {_fmt(oa['sensitivity'])} (n={oa['sensitivity']['n']}) | {_fmt(ob['sensitivity'])} | "
            f"{_fmt(oa['specificity'])} (n={oa['specificity']['n']}) | {_fmt(ob['specificity'])} |"
        )
    lines += [
        "",
        "## Agreement with clinicians",
        "",
        f"- A: {_fmt(a.agreement)} over {a.agreement['n']} reviews",
        f"- B: {_fmt(b.agreement)} over {b.agreement['n']} reviews",
        "",
        *[f"![{name}]({name})" for name in plots],
        "",
    ]
    return "\n".join(lines)


def plot(result: BusinessReport, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = {k: getattr(result.time_to_read_minutes, k) for k in ("fifo", "priority_a", "priority_b")}
    keys = [("fifo", "FIFO"), ("priority_a", "priority A"), ("priority_b", "priority B")]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    est = [t[k]["estimate"] or 0 for k, _ in keys]
    err = [
        [e - (t[k]["low"] or e) for (k, _), e in zip(keys, est)],
        [(t[k]["high"] or e) - e for (k, _), e in zip(keys, est)],
    ]
    ax.bar([name for _, name in keys], est, yerr=err, capsize=6, color=["grey", "tab:blue", "tab:orange"])
    ax.set(ylabel="minutes (95% CI)", title="Time until an abnormal study is read")
    fig.tight_layout()
    fig.savefig(out / "time_to_read.png", dpi=90)
    plt.close(fig)

    labels = [
        label
        for label in [*result.labels, "any abnormality (triage)"]
        if result.a.operating_point[label]["sensitivity"]["n"]
    ]
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.35 * len(labels) + 1.5), sharey=True)
    for ax, metric in zip(axes, ("sensitivity", "specificity")):
        for offset, key, colour in ((-0.15, "a", "tab:blue"), (0.15, "b", "tab:orange")):
            for y, label in enumerate(labels):
                i = getattr(result, key).operating_point[label][metric]
                if i["estimate"] is not None:
                    ax.errorbar(
                        i["estimate"],
                        y + offset,
                        xerr=[[i["estimate"] - i["low"]], [i["high"] - i["estimate"]]],
                        fmt="o",
                        color=colour,
                        label=key.upper() if y == 0 else None,
                        capsize=2,
                    )
        ax.set(xlim=(0, 1), title=metric)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "operating_point.png", dpi=90)
    plt.close(fig)
    return ["time_to_read.png", "operating_point.png"]


def business_report(a_path: Path, b_path: Path, out: Path, params: ClinicParameters) -> BusinessReport:
    """Compare two simulate reports; write business.md, business.json and the plots to `out`."""
    result = compare(load_report(a_path), load_report(b_path), params)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot(result, out)
    (out / "business.md").write_text(markdown(result, plots))
    (out / "business.json").write_text(json.dumps(result.model_dump(mode="json"), indent=1) + "\n")
    result.report = str(out / "business.md")
    return result


def human(result: BusinessReport) -> str:
    t = result.time_to_read_minutes
    return (
        f"{result.studies} studies ({result.abnormal} abnormal). Minutes to read an abnormal study: FIFO "
        f"{_fmt(t.fifo, 1)}, priority A {_fmt(t.priority_a, 1)}, priority B {_fmt(t.priority_b, 1)}. "
        f"Agreement A {_fmt(result.a.agreement)}, B {_fmt(result.b.agreement)}. Report: {result.report}"
    )
