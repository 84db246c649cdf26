"""`chexops simulate` against a real `bentoml serve` on loopback: counts, feedback in the store, 429 back-off."""

from __future__ import annotations

import json
import time

import pytest

from chexops.feedback.store import FeedbackStore
from service_fixtures import API_KEY, ROOT
from support import run_cli


def run_simulate(url: str, data, out, *args: str, key: str = API_KEY) -> dict:
    result = run_cli(
        "simulate",
        "--url",
        url,
        "--csv",
        str(data / "valid.csv"),
        "--root",
        str(data),
        "--out",
        str(out),
        "--api-key-env",
        "CLINIC_KEY",
        "--json",
        *args,
        env={"PYTHONPATH": str(ROOT / "training"), "CLINIC_KEY": key},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def agreement_counts(store_url: str) -> tuple[int, int]:
    store = FeedbackStore(store_url)
    try:
        return store.agreement()
    finally:
        store.close()


@pytest.mark.slow
def test_simulate_records_predictions_and_feedback_reaches_the_store(clinic, clinic_data, tmp_path):
    svc = clinic.service
    before = agreement_counts(clinic.store_url)
    summary = run_simulate(
        svc.url,
        clinic_data,
        tmp_path,
        "--pattern",
        "poisson",
        "--rate",
        "15",
        "--duration",
        "2",
        "--max-requests",
        "24",
        "--review-share",
        "0.5",
        "--error-rate",
        "0.1",
        "--seed",
        "1",
    )
    report = json.loads((tmp_path / "simulate.json").read_text())
    records = report["requests"]
    assert summary["sent"] == len(records) == summary["planned"] > 5
    assert summary["answered"] == summary["statuses"]["200"] == len(records)
    assert summary["elapsed_s"] < 2 + 10
    assert all(r["probabilities"] and r["truth"] and r["latency_ms"] > 0 for r in records)
    truth_known = {label for r in records for label, v in r["truth"].items() if v in (0, 1)}
    assert truth_known and set(report["labels"]) >= truth_known
    reviewed = [r["feedback"] for r in records if "feedback" in r]
    # the default judge: the clinician calls it correct when the model's triage is the one the reading gives
    assert all(
        r["feedback"]["correct"] == (r["priority"] == r["feedback"]["clinician_priority"])
        for r in records
        if "feedback" in r
    )
    assert 0 < len(reviewed) < len(records) and summary["feedback_stored"] == len(reviewed)
    after = agreement_counts(clinic.store_url)
    correct, incorrect = after[0] - before[0], after[1] - before[1]
    assert (correct, incorrect) == (sum(f["correct"] for f in reviewed), sum(not f["correct"] for f in reviewed))
    assert summary["agreement_rate"] == pytest.approx(correct / (correct + incorrect), abs=1e-4)
    for plot in ("latency.png", "auroc.png", "agreement.png"):
        assert (tmp_path / plot).stat().st_size > 1000


@pytest.mark.slow
def test_simulate_backs_off_on_429_and_gets_every_study_answered(clinic_b, clinic_data, tmp_path):
    time.sleep(0.5)  # the bucket (burst 3, 10/s) is full again after any earlier traffic
    summary = run_simulate(
        clinic_b.service.url,
        clinic_data,
        tmp_path / "out",
        "--pattern",
        "burst",
        "--burst-size",
        "8",
        "--rate",
        "8",
        "--duration",
        "1",
        "--max-requests",
        "8",
    )
    assert summary["planned"] == summary["sent"] == 8
    assert summary["statuses"] == {"200": 8}  # every 429 was backed off and retried
    assert summary["rate_limited_requests"] >= 5 and summary["backoffs"] >= 5


@pytest.mark.slow
def test_simulate_refuses_bad_settings_and_a_missing_key(clinic_data, tmp_path):
    env = {"CHEXOPS_API_KEY": None, "PYTHONPATH": str(ROOT / "training")}
    base = ["simulate", "--csv", str(clinic_data / "valid.csv"), "--out", str(tmp_path)]
    bad = run_cli(*base, "--url", "http://127.0.0.1:9", "--rate", "0", env=env)
    assert bad.returncode == 2 and "rate" in bad.stderr and "Traceback" not in bad.stderr
    remote = run_cli(*base, "--url", "http://clinic.example:3000", env=env)
    assert remote.returncode == 2 and "CHEXOPS_API_KEY" in remote.stderr


def test_the_clinician_judges_the_triage_or_every_finding():
    from chexops.core.triage import priority
    from chexops.loop.simulate import verdict

    read = {"Edema": 1, "Cardiomegaly": 0, "Atelectasis": 1}
    clinician = priority([{"label": k, "positive": bool(v)} for k, v in read.items()])
    assert clinician == "urgent"
    one_miss = {"Edema": True, "Cardiomegaly": False, "Atelectasis": False}  # urgent all the same
    assert verdict("triage", one_miss, "urgent", read, clinician) is True
    assert verdict("findings", one_miss, "urgent", read, clinician) is False
    assert verdict("triage", {**one_miss, "Edema": False}, "review", read, clinician) is False
    assert verdict("findings", {**one_miss, "Atelectasis": True}, "urgent", read, clinician) is True
