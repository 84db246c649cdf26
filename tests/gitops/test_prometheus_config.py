"""The Prometheus configuration the platform's Application gives the chart (serverFiles and
server.global, as the chart writes them into prometheus.yml), with the rules of k8s/monitoring
where the chart mounts them, checked by the real Prometheus (Debian's `prometheus`, `promtool`).

Debian builds Prometheus without Kubernetes service discovery, so the test swaps each
`kubernetes_sd_configs` for a file_sd file that lists what Kubernetes discovery yields for pods
(their `__meta_kubernetes_*` labels); the relabelling, which decides what is scraped and which
labels every series gets, then runs unchanged in a real Prometheus."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from chexops.core.processes import ServerProcess, free_port

from .render import REPO

pytestmark = pytest.mark.slow


def _pod(namespace: str, name: str, track: str, port: int, app: str = "chexops", scrape: str = "true") -> dict:
    """A pod as Kubernetes pod discovery describes it (the labels it sets, per container port)."""
    return {
        "targets": [f"127.0.0.1:{port}"],
        "labels": {
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_pod_name": name,
            "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
            "__meta_kubernetes_pod_label_chexops_io_track": track,
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape": scrape,
            "__meta_kubernetes_pod_annotation_prometheus_io_port": str(port),
            "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
        },
    }


@pytest.fixture
def cluster_config(argocd_docs, tmp_path):
    """prometheus.yml as the chart writes it from the Application's values, rule paths under tmp_path."""
    (app,) = [d for d in argocd_docs if d["kind"] == "Application" and d["metadata"]["name"] == "prometheus"]
    values = app["spec"]["source"]["helm"]["valuesObject"]
    config = dict(values["serverFiles"]["prometheus.yml"])
    config["global"] = values["server"]["global"]
    # Where the chart and the extra ConfigMap mount put the rule files.
    (mount,) = values["server"]["extraConfigmapMounts"]
    rules = tmp_path / mount["mountPath"].lstrip("/")
    rules.mkdir(parents=True)
    # The ConfigMap's keys: the files k8s/monitoring/kustomization.yaml puts into it.
    monitoring = REPO / "k8s" / "monitoring"
    generators = yaml.safe_load((monitoring / "kustomization.yaml").read_text())["configMapGenerator"]
    for name in next(g for g in generators if g["name"] == mount["configMap"])["files"]:
        shutil.copy(monitoring / name, rules / Path(name).name)
    (tmp_path / "etc" / "config").mkdir(parents=True)
    for name in ("recording_rules.yml", "alerting_rules.yml"):
        (tmp_path / "etc" / "config" / name).write_text("{}\n")  # the chart's empty defaults
    config["rule_files"] = [str(tmp_path / f.lstrip("/")) for f in config["rule_files"]]
    assert any(str(rules) in f for f in config["rule_files"]), "the mounted chexops rules are not loaded"
    return config


def test_the_chexops_job_keeps_the_clinic_pods_with_their_labels(cluster_config, tmp_path):
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    config = cluster_config
    # The clinic endpoint's pods (two tracks, two environments), and two that must be left out.
    pods = [
        _pod("production", "chexops-abc", "stable", free_port()),
        _pod("production", "chexops-canary-def", "canary", free_port()),
        _pod("staging", "chexops-ghi", "stable", free_port()),
        _pod("production", "other-jkl", "stable", free_port(), app="other"),
        _pod("production", "chexops-off", "stable", free_port(), scrape="false"),
    ]
    sd_file, path = tmp_path / "pods.yaml", tmp_path / "prometheus.yml"
    sd_file.write_text(yaml.safe_dump(pods))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (sd,) = jobs["chexops"].pop("kubernetes_sd_configs")
    assert sd["role"] == "pod" and set(sd["namespaces"]["names"]) == {"staging", "production"}
    jobs["chexops"]["file_sd_configs"] = [{"files": [str(sd_file)]}]
    for job in jobs.values():  # the other discovery-based jobs: nothing to discover here
        if "kubernetes_sd_configs" in job:
            job.pop("kubernetes_sd_configs")
            job["static_configs"] = []
    path.write_text(yaml.safe_dump(config))

    check = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr

    port = free_port()
    argv = [
        prometheus,
        f"--config.file={path}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with ServerProcess(
        argv,
        tmp_path / "prometheus.log",
        url=f"http://127.0.0.1:{port}",
        ready_path="/-/ready",
        timeout=60,
        name="prometheus",
    ):
        deadline, active = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=2)
                if answer.status_code != 200:  # "Service Unavailable" while it starts
                    time.sleep(0.3)
                    continue
                targets = answer.json()["data"]
                active = [t for t in targets["activeTargets"] if t["labels"]["job"] == "chexops"]
                if len(active) >= 3:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        rules = httpx.get(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5).json()["data"]["groups"]
    kept = {t["labels"]["pod"]: t for t in active}
    assert set(kept) == {"chexops-abc", "chexops-canary-def", "chexops-ghi"}, (tmp_path / "prometheus.log").read_text()[
        -2000:
    ]
    for pod in pods[:3]:
        target = kept[pod["labels"]["__meta_kubernetes_pod_name"]]
        assert target["labels"]["namespace"] == pod["labels"]["__meta_kubernetes_namespace"]
        assert target["labels"]["track"] == pod["labels"]["__meta_kubernetes_pod_label_chexops_io_track"]
        assert (
            target["scrapeUrl"]
            == f"http://127.0.0.1:{pod['labels']['__meta_kubernetes_pod_annotation_prometheus_io_port']}/metrics"
        )
    assert rules, "no rule group loaded from k8s/monitoring/rules"
