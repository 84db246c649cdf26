"""Drift on a real service: in-distribution clinic traffic scores low, inverted or rescaled images score high;
the input statistics are on /metrics; the alert rule passes promtool (check and unit test)."""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from chexops.imaging.drift import ALERT_PSI
from chexops.loop.simulate import SimulateConfig, SimulateSummary, simulate
from clinic_fixtures import DRIFT_WINDOW as WINDOW
from service_fixtures import API_KEY, ROOT

RULES = ROOT / "k8s" / "monitoring" / "rules" / "drift.yaml"
RULES_TEST = ROOT / "k8s" / "monitoring" / "rules" / "drift.test.yaml"
LOW = 0.15  # well below ALERT_PSI: with 40 images the PSI's own noise is up to (10 - 1) / 40 ≈ 0.2 over 10 full bins


@pytest.fixture
def drift_service(clinic):
    return clinic.service


@pytest.fixture(autouse=True)
def _clinic_key(monkeypatch):
    monkeypatch.setenv("CLINIC_KEY", API_KEY)


def samples(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def drift_score(url: str, component: str = "overall") -> float:
    return samples(url)[("chexops_drift_score", (("component", component),))]


def send(url, data, out, shift: str) -> SimulateSummary:
    """WINDOW studies of the clinic (in this process: the command itself is tested in test_simulate.py)."""
    cfg = SimulateConfig(
        url=url,
        csv=data / "valid.csv",
        root=data,
        out=out,
        pattern="steady",
        rate=60,
        duration=1,
        max_requests=WINDOW,
        shift=shift,
        concurrency=4,
    )
    return simulate(cfg, "CLINIC_KEY").summary


@pytest.mark.slow
def test_in_distribution_traffic_scores_low_and_inputs_are_described(drift_service, clinic_data, tmp_path):
    before = samples(drift_service.url)
    summary = send(drift_service.url, clinic_data, tmp_path, "none")
    assert summary.answered == WINDOW
    metrics = samples(drift_service.url)
    assert metrics[("chexops_drift_window_images", ())] == WINDOW
    assert drift_score(drift_service.url, "intensity") < 0.1, metrics
    assert drift_score(drift_service.url) < LOW, metrics
    kinds = {
        labels: v - before.get((name, labels), 0)
        for (name, labels), v in metrics.items()
        if name == "chexops_input_images_total"
    }
    assert kinds == {
        (("format", "jpeg"), ("modality", "unknown"), ("view", "unknown")): WINDOW
    }  # synthetic JPEGs, no DICOM
    for series, per_image in (("chexops_input_intensity_mean_count", 1), ("chexops_input_pixels_sum", 48 * 48)):
        assert metrics[(series, ())] - before.get((series, ()), 0) == WINDOW * per_image


@pytest.mark.slow
@pytest.mark.parametrize("shift", ["invert", "scale:0.4"])
def test_shifted_traffic_scores_high(drift_service, clinic_data, tmp_path, shift):
    send(drift_service.url, clinic_data, tmp_path, shift)
    assert drift_score(drift_service.url, "intensity") > ALERT_PSI
    assert drift_score(drift_service.url) > ALERT_PSI
    send(drift_service.url, clinic_data, tmp_path / "back", "none")  # the clinic recovers: the window forgets
    assert drift_score(drift_service.url) < LOW


def test_alert_rule_is_valid_and_fires_on_sustained_drift():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (tests/install-tools.sh installs the Debian prometheus package)")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, cwd=RULES_TEST.parent
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_the_alert_fires_above_alert_psi():
    """ALERT_PSI is the one home of the significant-drift level: the alert rule (and its text) say the same."""
    rule = next(
        r
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
        if r.get("alert") == "ChexopsInputDrift"
    )
    threshold = re.fullmatch(r'.*chexops_drift_score\{component="overall"\}\) > ([0-9.]+)', rule["expr"].strip())
    assert threshold is not None, rule["expr"]
    assert float(threshold.group(1)) == ALERT_PSI
    assert f"above {ALERT_PSI:g} for" in rule["annotations"]["description"]


def test_the_windows_running_score_is_the_score_of_the_window():
    """The monitor keeps running sums of its window (a score per image would otherwise cost O(window)): after
    more images than the window holds, its score is the PSI of exactly the last `window` images."""
    from chexops.imaging.drift import DriftMonitor, _shares, psi, reference
    from chexops.imaging.preprocessing import PreprocessSpec

    rng = np.random.default_rng(0)
    spec = PreprocessSpec(size=8, channels=1, mean=(0.5,), std=(0.25,))
    labels = ["Edema", "Effusion"]
    ref = reference(rng.normal(0, 1, (50, 1, 8, 8)), rng.uniform(0, 1, (50, 2)), spec, labels)
    monitor = DriftMonitor(ref, spec, labels, window=7, min_images=3, metrics=False)
    seen = []
    for i in range(23):  # three evictions past a full window, and one fresh summation
        x, p = rng.normal(i / 20, 1, (1, 8, 8)), rng.uniform(0, 1, 2) ** (1 + i / 10)
        monitor.observe(x, p, {})
        seen.append((x, p))
        last = seen[-7:]
        grey = [_shares(x * 0.25 + 0.5, ref["intensity"]["edges"]) for x, _ in last]
        intensity = psi(ref["intensity"]["shares"], np.mean(grey, axis=0))
        predictions = np.mean(
            [
                psi(
                    ref["predictions"][label]["shares"],
                    np.mean([_shares(p[k], ref["predictions"][label]["edges"]) for _, p in last], axis=0),
                )
                for k, label in enumerate(labels)
            ]
        )
        if i >= 2:
            assert monitor.last["intensity"] == pytest.approx(round(intensity, 5), abs=1e-5), i
            assert monitor.last["predictions"] == pytest.approx(round(float(predictions), 5), abs=1e-5), i
