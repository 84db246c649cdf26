"""`chexops report business` on real simulate runs against two real services (fp32 and int8 variants of a model),
and the reading-room simulation's own logic."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chexops.loop.business import abnormal, agreement_interval, worklist_times
from chexops.loop.simulate import SimulateConfig, simulate
from service_fixtures import API_KEY, ROOT
from support import run_cli


@pytest.fixture(scope="module")
def two_runs(clinic, clinic_b, clinic_data, tmp_path_factory):
    """The same clinic (same CSV and seed) sent to A (fp32) and B (int8), clinicians reviewing half the studies."""
    tmp_path = tmp_path_factory.mktemp("business")
    reports = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLINIC_KEY", API_KEY)  # the tests' own variable, read through simulate's api_key_env
        for key, svc in (("a", clinic.service), ("b", clinic_b.service)):
            cfg = SimulateConfig(
                url=svc.url,
                csv=clinic_data / "valid.csv",
                root=clinic_data,
                out=tmp_path / key,
                pattern="steady",
                rate=5,
                duration=6,
                max_requests=30,
                review_share=0.5,
                error_rate=0.05,
                seed=7,
                concurrency=4,
            )
            reports[key] = simulate(cfg, "CLINIC_KEY")
    return reports, tmp_path


@pytest.mark.slow
def test_business_report_from_two_real_simulate_runs(two_runs):
    reports, tmp = two_runs
    result = run_cli(
        "report",
        "business",
        "--a",
        str(tmp / "a"),
        "--b",
        str(tmp / "b" / "simulate.json"),
        "--out",
        str(tmp / "business"),
        "--replications",
        "40",
        "--bootstrap",
        "200",
        "--json",
        env={"PYTHONPATH": str(ROOT / "training")},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    a_records = [r for r in reports["a"].requests if r.get("priority")]
    assert out["studies"] == len(a_records) == 30
    assert out["abnormal"] == sum(abnormal(r["truth"]) for r in a_records)
    assert out["a"]["model"]["precision"] != out["b"]["model"]["precision"]  # two variants really compared
    # sensitivity of A on a finding, recomputed from the report's own records
    label = max(out["labels"], key=lambda lb: out["a"]["operating_point"][lb]["sensitivity"]["n"])
    pos = [r["positive"][label] for r in a_records if r["truth"].get(label) == 1]
    sens = out["a"]["operating_point"][label]["sensitivity"]
    assert sens["n"] == len(pos) > 0 and sens["estimate"] == pytest.approx(np.mean(pos), abs=1e-4)
    assert sens["low"] <= sens["estimate"] <= sens["high"]
    stored = [r["feedback"]["correct"] for r in a_records if r.get("feedback", {}).get("stored")]
    assert out["a"]["agreement"]["n"] == len(stored) > 0
    assert out["a"]["agreement"]["estimate"] == pytest.approx(np.mean(stored), abs=1e-4)
    t = out["time_to_read_minutes"]
    assert t["fifo"]["low"] <= t["fifo"]["estimate"] <= t["fifo"]["high"] and t["fifo"]["estimate"] > 0
    md = (tmp / "business" / "business.md").read_text()
    assert "first-in first-out" in md and "Agreement with clinicians" in md and "priority by B" in md
    for plot in ("time_to_read.png", "operating_point.png"):
        assert (tmp / "business" / plot).stat().st_size > 1000


@pytest.mark.slow
def test_reports_of_different_clinics_are_refused(two_runs):
    reports, tmp = two_runs
    other = json.loads((tmp / "b" / "simulate.json").read_text())
    for r in other["requests"]:
        r["csv_row"] += 1
    (tmp / "other.json").write_text(json.dumps(other))
    result = run_cli(
        "report",
        "business",
        "--a",
        str(tmp / "a"),
        "--b",
        str(tmp / "other.json"),
        "--out",
        str(tmp / "x"),
        env={"PYTHONPATH": str(ROOT / "training")},
    )
    assert result.returncode == 2 and "same clinic" in result.stderr and "Traceback" not in result.stderr


def test_priority_worklist_reads_urgent_studies_sooner_and_fifo_is_first_come_first_served():
    rng = np.random.default_rng(0)
    n = 400
    arrivals = np.cumsum(rng.exponential(6.0, n))  # 10/h
    reading = rng.gamma(4, 5.0 / 4, n)  # 5 min: utilisation 0.83
    urgent = rng.random(n) < 0.2
    fifo = worklist_times(arrivals, reading, np.zeros(n), readers=1)
    prio = worklist_times(arrivals, reading, np.where(urgent, 0, 2), readers=1)
    assert prio[urgent].mean() < 0.7 * fifo[urgent].mean()
    assert prio.mean() == pytest.approx(fifo.mean(), rel=0.35)  # the work is the same; who waits changes
    assert np.all(np.diff(arrivals + fifo - reading) >= -1e-9)  # FIFO starts studies in arrival order
    assert np.all(fifo >= reading - 1e-9)
    two = worklist_times(arrivals, reading, np.zeros(n), readers=2)
    assert two.mean() < fifo.mean()


def test_agreement_interval_shrinks_as_one_over_root_n():
    small, large = agreement_interval(50, 0.85), agreement_interval(800, 0.85)
    assert small["half_width"] == pytest.approx(small["normal_approx_half_width"], rel=0.25)
    assert small["half_width"] / large["half_width"] == pytest.approx(4, rel=0.25)
