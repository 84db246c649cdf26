"""GitOps delivery, for real: `chexops promote` on a real git repository with a real `mlflow server`,
`chexops loadtest` (Locust) against a real `bentoml serve`, and (below) the canary analysis on a real
Prometheus scraping real services. One module, so that the servers are started once."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from mlflow_fixtures import mlflow_server, synth_dataset, train_run, write_config
from service_fixtures import API_KEY, start_service
from support import ROOT, chexops, chexops_json

NAME = "chexops-cxr"
# The gate is not under test here: limits a one-epoch tiny model clears (test_registry judges the gate).
GATE = ("--min-mean-auroc", "0.3", "--max-slice-gap", "1.0", "--max-regression", "1.0")
REGISTRY = "registry.platform.svc.cluster.local:5000/chexops-cxr"
DIGEST_A, DIGEST_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
BOOTSTRAP = "sha256:" + "0" * 64
OVERLAYS = "k8s/chexops/overlays"


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlflow-delivery")
    with mlflow_server(base, f"sqlite:///{base / 'mlflow.db'}") as uri:
        yield uri


def own_home(model, name: str):
    """The model's Bento store under a home of this service's own: BentoML keeps its Prometheus
    multiprocess files under BENTOML_HOME and clears them at start, so services sharing one home
    would report (and wipe) each other's series; a pod has its own."""
    from service_fixtures import ServedModel

    home = model.home.parent / f"{model.home.name}-{name}"
    (home / "bentoml").mkdir(parents=True, exist_ok=True)
    if not (home / "bentoml/models").exists():
        (home / "bentoml/models").symlink_to(model.home / "bentoml/models")
    return ServedModel(home, model.tag)


@pytest.fixture(scope="module")
def stable(served_model):
    """The stable service: a good model, track stable (also the load test's target)."""
    svc = start_service(
        own_home(served_model, "stable"), "stable.log", CHEXOPS_ENVIRONMENT="test", CHEXOPS_TRACK="stable"
    )
    yield svc
    svc.stop()


# --- the GitOps repository ---------------------------------------------------------------------------

CONTRACT_BASE = {
    "kustomization.yaml": (
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - deployment.yaml\n"
    ),
    "deployment.yaml": """apiVersion: apps/v1
kind: Deployment
metadata:
  name: chexops
  labels: {app.kubernetes.io/name: chexops}
spec:
  replicas: 2
  selector:
    matchLabels: {app.kubernetes.io/name: chexops}
  template:
    metadata:
      labels: {app.kubernetes.io/name: chexops}
    spec:
      containers:
        - name: chexops
          image: chexops-serving
""",
}
BOOTSTRAP_OVERLAY = f"""apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {{namespace}}
resources:
  - ../../base
# the model served here; `chexops promote` edits these two blocks
images:
  - name: chexops-serving
    newName: {REGISTRY}   # in-cluster registry
    newTag: "v0"          # bootstrap placeholder until the first promotion
    digest: {BOOTSTRAP}
labels:
  - pairs:
      chexops.io/model-version: "0"
    includeTemplates: true  # on pods, never on selectors
"""


def write_contract_overlays(root: Path) -> None:
    """The contract's shape, when the real k8s/ tree is not in this checkout."""
    for name, text in CONTRACT_BASE.items():
        (root / "k8s/chexops/base").mkdir(parents=True, exist_ok=True)
        (root / "k8s/chexops/base" / name).write_text(text)
    for env, namespace, extra in (
        ("staging", "staging", ""),
        ("production", "production", "replicas:\n  - name: chexops\n    count: 2\n"),
    ):
        (root / OVERLAYS / env).mkdir(parents=True, exist_ok=True)
        (root / OVERLAYS / env / "kustomization.yaml").write_text(BOOTSTRAP_OVERLAY.format(namespace=namespace) + extra)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def gitops_repo(tmp_path) -> Path:
    """A clone of a bare 'origin' holding the overlays: the real k8s/ tree when this checkout has it."""
    seed, origin, clone = tmp_path / "seed", tmp_path / "origin.git", tmp_path / "clone"
    seed.mkdir()
    if (ROOT / OVERLAYS).is_dir():
        shutil.copytree(ROOT / "k8s", seed / "k8s")
    else:
        write_contract_overlays(seed)
    git(seed, "init", "-q", "-b", "main")
    git(seed, "add", "-A")
    git(seed, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "bootstrap")
    git(tmp_path, "clone", "-q", "--bare", str(seed), str(origin))
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    return clone


def render(repo: Path, env: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the overlays cannot be rendered")
    out = subprocess.run(
        ["kubectl", "kustomize", str(repo / OVERLAYS / env)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def workload(repo: Path, env: str) -> tuple[str, int, str]:
    """(image, replicas, model-version pod label) of the rendered chexops workload.

    The DICOM gateway (a Deployment beside it) runs the same image: it must move with every promotion.
    """
    workloads = [d for d in render(repo, env) if d["kind"] in ("Deployment", "Rollout")]
    docs = [d for d in workloads if d["metadata"]["name"] == "chexops"]
    assert len(docs) == 1, [(d["kind"], d["metadata"]["name"]) for d in workloads]
    spec = docs[0]["spec"]
    pod = spec["template"]
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "chexops")
    images = {c["image"] for d in workloads for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {container["image"]}, images
    assert "chexops.io/model-version" not in spec["selector"]["matchLabels"]  # never on selectors
    return container["image"], spec.get("replicas", 1), pod["metadata"]["labels"]["chexops.io/model-version"]


def comments(text: str) -> list[str]:
    return [line.split("#", 1)[1].strip() for line in text.splitlines() if "#" in line]


def state(repo: Path, client: MlflowClient) -> tuple[str, str, dict]:
    return (
        git(repo, "rev-parse", "HEAD"),
        git(repo, "status", "--porcelain"),
        dict(client.get_registered_model(NAME).aliases),
    )


def register_version(tmp_path_factory, home: Path, name: str, env: dict) -> str:
    run = train_run(
        write_config(home / f"{name}.yaml", synth_dataset(tmp_path_factory), name=name, train={"epochs": 1}), **env
    ).run_id
    chexops_json("evaluate", "--run", run, "--bootstrap", "20", "--hard-cases", "2", **env)
    return chexops_json("register", "--run", run, *GATE, **env)["version"]


def promote(repo: Path, env: dict, *args: str) -> tuple[int, dict | None, str]:
    code, out, err = chexops("promote", *args, "--repo", str(repo), "--json", **env)
    assert "Traceback" not in err, err[-3000:]
    return code, (json.loads(out.strip().splitlines()[-1]) if out.strip() else None), err


@pytest.mark.slow
def test_promotion_staging_canary_production_and_rollback(tmp_path_factory, mlflow_uri, stable, gitops_repo):
    repo, home = gitops_repo, tmp_path_factory.mktemp("promote-home")
    env = {"CHEXOPS_HOME": str(home), "MLFLOW_TRACKING_URI": mlflow_uri, "CHEXOPS_API_KEY": API_KEY}
    client = MlflowClient(mlflow_uri)
    first, second = (register_version(tmp_path_factory, home, n, env) for n in ("first", "second"))
    assert (first, second) == ("1", "2")
    # A version registered by hand, past the gate: no gate evidence.
    run_id = client.get_model_version(NAME, "1").run_id
    unjudged = client.create_model_version(NAME, f"runs:/{run_id}/checkpoint", run_id).version
    image_a, image_b = f"{REGISTRY}:v1@{DIGEST_A}", f"{REGISTRY}:v2@{DIGEST_B}"
    bootstrap = workload(repo, "staging")
    assert DIGEST_A not in bootstrap[0] and "@sha256:" in bootstrap[0]  # pinned by digest from the start

    comments_before = comments((repo / OVERLAYS / "staging/kustomization.yaml").read_text())
    # Staging without gate evidence: refused, nothing touched.
    before = state(repo, client)
    code, result, err = promote(
        repo, env, "--to", "staging", "--version", unjudged, "--image", f"{REGISTRY}:v3@{DIGEST_B}"
    )
    assert code == 3 and "quality-gate verdicts" in err and result["promoted"] is False
    assert state(repo, client) == before
    # Bad input: exit 2.
    assert promote(repo, env, "--to", "staging", "--version", first, "--image", f"{REGISTRY}:latest")[0] == 2
    assert promote(repo, env, "--to", "staging", "--version", "99", "--image", image_a)[0] == 2

    # Staging: a commit with the gate's numbers, pushed; the render shows the digest; alias moved.
    code, result, err = promote(repo, env, "--to", "staging", "--version", first, "--image", image_a, "--push")
    assert code == 0, err[-3000:]
    assert workload(repo, "staging")[::2] == (image_a, first)
    message = git(repo, "log", "-1", "--format=%B")
    assert (
        "gate min_mean_auroc" in message
        and "Chexops-Environment: staging" in message
        and "Chexops-Previous-Version: none" in message
    )
    assert git(repo, "rev-parse", "HEAD").strip() == git(repo, "rev-parse", "origin/main").strip() == result["commit"]
    text = (repo / OVERLAYS / "staging/kustomization.yaml").read_text()
    assert comments(text) == comments_before and comments_before  # the overlay's comments survive the edit
    assert git(repo, "show", "--stat", "--format=", "HEAD").count("|") == 1  # the overlay and nothing else
    assert client.get_model_version_by_alias(NAME, "staging").version == first
    assert client.get_model_version(NAME, first).tags["staging.image"] == image_a

    # Canary before a load test: refused.
    before = state(repo, client)
    code, _, err = promote(repo, env, "--to", "canary", "--version", first)
    assert code == 3 and "no passing staging load test" in err and state(repo, client) == before

    # The staging load test (Locust against the real service), recorded on the version.
    out = home / "loadtest-pass"
    # (p95 limit raised from the default 1 s: this shared 2-core test machine is slow and busy)
    code, stdout, err = chexops(
        "loadtest",
        "--host",
        stable.url,
        "--users",
        "2",
        "--duration",
        "10s",
        "--max-p95-ms",
        "8000",
        "--out",
        str(out),
        "--record",
        f"models:/{NAME}/{first}",
        "--json",
        **env,
    )
    assert code == 0, err[-3000:]
    passed = json.loads(stdout)
    assert passed["passed"] and passed["requests"] > 0 and passed["failures"] == 0 and passed["p95_ms"] <= 8000
    assert "POST /predict" in passed["endpoints"] and passed["checks"][0]["criterion"] == "requests"
    assert (out / "report.html").stat().st_size > 1000 and (out / "locust_stats.csv").is_file()
    tags = client.get_model_version(NAME, first).tags
    assert tags["loadtest.passed"] == "true" and int(tags["loadtest.requests"]) == passed["requests"]

    assert json.loads(tags["loadtest.versions"]) == passed["versions"] == {first: passed["versions"][first]}

    # Canary: production's overlay (its Argo Rollout runs 10 % → analysis → 50 % → analysis → 100 %).
    code, result, err = promote(repo, env, "--to", "canary", "--version", first, "--push")
    assert code == 0, err[-3000:]
    assert workload(repo, "production")[::2] == (image_a, first) and result["files"] == [
        f"{OVERLAYS}/production/kustomization.yaml"
    ]
    message = git(repo, "log", "-1", "--format=%B")
    assert "load test (staging" in message and "10 % → analysis → 50 %" in message
    assert "Chexops-Environment: canary" in message
    assert str(client.get_model_version_by_alias(NAME, "canary").version) == first
    # Retried after the push went through (a new pod clones again): found done, not committed twice.
    head = git(repo, "rev-parse", "HEAD")
    code, again, err = promote(repo, env, "--to", "canary", "--version", first, "--push")
    assert code == 0 and again["already_done"] is True and again["commit"] == result["commit"], err[-2000:]
    assert git(repo, "rev-parse", "HEAD") == head

    # Production without a Successful analysis: refused.
    before = state(repo, client)
    code, _, err = promote(
        repo, env, "--to", "production", "--version", first,
        "--analysis-run", "chexops-7c9e-1-0,chexops-7c9e-1-1", "--analysis-phase", "Failed",
    )  # fmt: skip
    assert code == 3 and "not Successful" in err and state(repo, client) == before

    # Production: the verdict, a commit that changes no file (the overlay has named version 1 since the canary).
    rendered = workload(repo, "production")
    code, result, err = promote(
        repo, env, "--to", "production", "--version", first,
        "--analysis-run", "chexops-7c9e-1-0,chexops-7c9e-1-1", "--analysis-phase", "Successful",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert workload(repo, "production") == rendered
    assert git(repo, "show", "--stat", "--format=", "HEAD").strip() == ""  # no file changed
    message = git(repo, "log", "-1", "--format=%B")
    assert "canary analysis chexops-7c9e-1-0,chexops-7c9e-1-1: Successful" in message
    assert "Chexops-Environment: production" in message
    aliases = client.get_registered_model(NAME).aliases
    assert str(aliases["production"]) == first and "canary" not in aliases

    # Version 2 reaches staging; its load test fails (impossible p95): exit 3, recorded, canary refused.
    assert promote(repo, env, "--to", "staging", "--version", second, "--image", image_b)[0] == 0
    assert workload(repo, "staging")[0] == image_b
    code, stdout, err = chexops(
        "loadtest",
        "--host",
        stable.url,
        "--users",
        "2",
        "--duration",
        "5s",
        "--max-p95-ms",
        "1",
        "--out",
        str(home / "loadtest-fail"),
        "--record",
        f"models:/{NAME}/{second}",
        "--json",
        **env,
    )
    assert code == 3 and "the load test failed" in err and "max_p95_ms" in err
    # The staging service still answers version 1: --record's version 2 is expected, and that fails too.
    assert "expect_version" in err and set(json.loads(stdout)["versions"]) == {first}
    assert json.loads(stdout)["passed"] is False
    code, _, err = promote(repo, env, "--to", "canary", "--version", second)
    assert code == 3 and "staging load test failed" in err

    # Rollback staging: version 1 again, in git and in the alias.
    code, result, err = promote(repo, env, "--rollback", "staging")
    assert code == 0, err[-3000:]
    assert (
        workload(repo, "staging")[0] == image_a and client.get_model_version_by_alias(NAME, "staging").version == first
    )
    assert "Chexops-Rollback-Of:" in git(repo, "log", "-1", "--format=%B")
    # Rollback production: the verdict and the canary commit of its version are reverted together, so the
    # overlay names the bootstrap again; the production alias is gone. Nothing of version 1 left to revert
    # in the canary: --if-version says so and changes nothing.
    code, result, err = promote(repo, env, "--rollback", "production")
    assert code == 0, err[-3000:]
    assert workload(repo, "production")[0] == bootstrap[0] and len(result["reverted"].split()) == 2
    assert "production" not in client.get_registered_model(NAME).aliases
    head = git(repo, "rev-parse", "HEAD")
    code, result, err = promote(repo, env, "--rollback", "canary", "--if-version", first)
    assert code == 0 and result["rolled_back"] is False and git(repo, "rev-parse", "HEAD") == head, err[-2000:]
    # A dirty overlay is a user error; rolling back twice goes further back (staging: to none).
    (repo / OVERLAYS / "staging/kustomization.yaml").write_text("# edited by hand\n")
    assert promote(repo, env, "--rollback", "staging")[0] == 2
    git(repo, "checkout", "--", ".")
    assert promote(repo, env, "--rollback", "staging")[0] == 0
    assert workload(repo, "staging")[0] == bootstrap[0] and "staging" not in client.get_registered_model(NAME).aliases


# --- the canary analysis on a real Prometheus ----------------------------------------------------------

ANALYSIS = ROOT / "k8s/analysis/chexops-canary.yaml"
DASHBOARDS = ROOT / "k8s/monitoring/dashboards"
RULES = ROOT / "k8s/monitoring/rules"
CANARY_VERSION = "2"
FAULTS = "error_rate=0.5,delay_ms=2000"
# Short windows for a ~20 s test (the template's defaults are minutes). Three services, three Locusts
# and Prometheus share two busy cores here (small generated images keep the decoding cheap), so a good
# canary's p95 may still differ from stable's by half a second: a 1 s latency margin, 2 s injected.
TEST_ARGS = {
    "window": "30s",
    "feedback-window": "60s",
    "min-feedback": "3",
    "max-p95-increase-seconds": "1.0",
    "min-requests": "5",
}


@pytest.fixture(scope="module")
def canaries(served_model, stable):
    """Two canary services of model version 2 beside the stable one (version 1): one good, one faulty."""
    from service_fixtures import add_model

    model = add_model(served_model.home, CANARY_VERSION)
    common = {"CHEXOPS_ENVIRONMENT": "test", "CHEXOPS_TRACK": "canary"}
    # Started from this (the main) thread: a server dies with the thread that started it (PR_SET_PDEATHSIG).
    services = {
        "good": start_service(own_home(model, "good"), "canary-good.log", **common),
        "faulty": start_service(
            own_home(model, "faulty"), "canary-faulty.log", CHEXOPS_FAULT_INJECTION=FAULTS, **common
        ),
    }
    yield services
    for svc in services.values():
        svc.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, stable, canaries):
    """Debian's Prometheus on loopback (1 s scrapes, the rules loaded): namespace prod-good holds the stable
    service and the good canary, prod-faulty the same stable service and the faulty canary."""
    from chexops.core.processes import ServerProcess, free_port

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus (Debian package) is not installed: run tests/install-tools.sh")
    base = tmp_path_factory.mktemp("prometheus")
    host = lambda svc: svc.url.removeprefix("http://")  # noqa: E731
    jobs = [
        {
            "job_name": f"chexops-{name}",
            "metrics_path": "/metrics",
            "static_configs": [
                {"targets": [host(stable)], "labels": {"namespace": f"prod-{name}", "pod": "chexops-stable"}},
                {
                    "targets": [host(canaries[name])],
                    "labels": {"namespace": f"prod-{name}", "pod": f"chexops-canary-{name}"},
                },
            ],
        }
        for name in ("good", "faulty")
    ]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(p) for p in sorted(RULES.glob("*.yaml")) if not p.name.endswith(".test.yaml")],
        "scrape_configs": jobs,
    }
    (base / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        binary,
        f"--config.file={base / 'prometheus.yml'}",
        f"--storage.tsdb.path={base / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    with ServerProcess(
        argv,
        base / "prometheus.log",
        url=f"http://127.0.0.1:{port}",
        ready_path="/-/ready",
        timeout=60,
        name="prometheus",
    ) as server:
        yield server.url


@pytest.fixture(scope="module")
def traffic(tmp_path_factory, stable, canaries, prometheus):
    """Locust (`chexops loadtest`) against the three services at once, plus an unreadable upload each."""
    import sys
    import time

    import httpx
    from PIL import Image

    out = tmp_path_factory.mktemp("traffic")
    (out / "images").mkdir()
    for i in range(3):
        Image.effect_noise((256, 256), 40 + 10 * i).save(out / "images" / f"noise{i}.png")
    targets = {"stable": stable, **canaries}
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chexops",
                "loadtest",
                "--host",
                svc.url,
                "--users",
                "2",
                "--duration",
                "20s",
                "--max-p95-ms",
                "60000",
                "--max-error-ratio",
                "1",
                "--images",
                str(out / "images"),
                "--out",
                str(out / name),
                "--json",
            ],
            cwd=ROOT,
            env={**svc.env, "CHEXOPS_API_KEY": API_KEY},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, svc in targets.items()
    }
    for svc in targets.values():
        for _ in range(1):
            httpx.post(
                f"{svc.url}/predict", files={"image": ("x.png", b"not an image")}, headers=svc.headers, timeout=30
            )
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr[-3000:]
        results[name] = json.loads(stdout)
    time.sleep(3)  # two more scrapes and rule evaluations
    targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=30).json()["data"]["activeTargets"]
    assert len(targets) == 4 and all(t["health"] == "up" for t in targets), [
        (t["scrapeUrl"], t["health"], t["lastError"]) for t in targets
    ]
    return results


def query(prometheus: str, promql: str) -> list[float]:
    import httpx

    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=30).json()
    assert body["status"] == "success", body
    data = body["data"]
    if data["resultType"] == "scalar":
        return [float(data["result"][1])]
    return [float(s["value"][1]) for s in data["result"]]


def run_analysis(prometheus: str, **args: str) -> dict[str, tuple[str, list[float]]]:
    """Each metric of the AnalysisTemplate, measured once as the Argo Rollouts controller does: its
    args substituted (`{{args.x}}`), its query sent to Prometheus, its conditions applied."""
    import re

    from chexops.pipelines.argo_expr import evaluate_analysis

    template = yaml.safe_load(ANALYSIS.read_text())
    values = {a["name"]: a.get("value") for a in template["spec"]["args"]}
    values.update(args)
    phases = {}
    for metric in template["spec"]["metrics"]:
        text = json.dumps(metric)
        missing = set(re.findall(r"\{\{args\.([\w-]+)\}\}", text)) - {k for k, v in values.items() if v is not None}
        assert not missing, f"{metric['name']} uses args without a value: {missing}"
        resolved = json.loads(re.sub(r"\{\{args\.([\w-]+)\}\}", lambda m: str(values[m.group(1)]), text))
        assert resolved["provider"]["prometheus"]["address"] == values["prometheus-address"]
        result = query(prometheus, resolved["provider"]["prometheus"]["query"])
        if evaluate_analysis(resolved["failureCondition"], result):
            phases[metric["name"]] = ("Failed", result)
        elif evaluate_analysis(resolved["successCondition"], result):
            phases[metric["name"]] = ("Successful", result)
        else:
            phases[metric["name"]] = ("Inconclusive", result)
    return phases


@pytest.mark.slow
def test_canary_analysis_passes_the_good_canary_and_fails_the_faulty_one(prometheus, traffic, canaries):
    assert traffic["stable"]["passed"] and traffic["good"]["passed"] and traffic["faulty"]["failures"] > 0
    assert "FAULT INJECTION IS ON" in canaries["faulty"].logs() and "FAULT INJECTION" not in canaries["good"].logs()
    args = {"prometheus-address": prometheus, "canary-version": CANARY_VERSION, **TEST_ARGS}

    good = run_analysis(prometheus, namespace="prod-good", **args)
    assert set(good) == {"error-ratio", "latency-p95", "input-rejections", "feedback-disagreement"}
    assert all(phase == "Successful" for phase, _ in good.values()), good

    faulty = run_analysis(prometheus, namespace="prod-faulty", **args)
    assert faulty["error-ratio"][0] == "Failed" and faulty["error-ratio"][1][0] > 0.2, faulty
    assert faulty["latency-p95"][0] == "Failed" and faulty["latency-p95"][1][0] > 1.0, faulty

    # No traffic for the named version: no evidence either way (the guards), never Successful.
    silent = run_analysis(prometheus, namespace="prod-good", **{**args, "canary-version": "9"})
    assert all(silent[m][0] == "Inconclusive" for m in ("error-ratio", "latency-p95", "input-rejections")), silent

    # Judged on evidence: fewer canary requests in the window than min-requests is Inconclusive, for the
    # good canary and for the faulty one alike (neither promoted nor failed on too little traffic).
    served = int(
        query(
            prometheus,
            'sum(increase(chexops_http_requests_total{namespace="prod-faulty", track="canary", '
            'route="/predict"}[30s]))',
        )[0]
    )
    scarce = {**args, "min-requests": str(served * 10 + 1000)}
    for namespace in ("prod-good", "prod-faulty"):
        few = run_analysis(prometheus, namespace=namespace, **scarce)
        assert all(few[m][0] == "Inconclusive" for m in ("error-ratio", "latency-p95", "input-rejections")), few


@pytest.mark.slow
def test_every_dashboard_panel_returns_data(prometheus, traffic):
    dashboards = sorted(DASHBOARDS.glob("*.json"))
    assert dashboards
    empty = []
    for path in dashboards:
        board = json.loads(path.read_text())
        assert board["uid"] and board["panels"]
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$namespace", "prod-good|prod-faulty")
                values = [v for v in query(prometheus, expr) if v == v]  # NaN != NaN
                if not values:
                    empty.append(f"{path.name}: {panel['title']} [{target['refId']}] {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_fault_injection_is_refused_in_production(monkeypatch):
    from chexops.core.errors import ConfigError
    from chexops.serving.settings import Settings

    monkeypatch.setenv("CHEXOPS_FAULT_INJECTION", FAULTS)
    monkeypatch.setenv("CHEXOPS_ENVIRONMENT", "staging")
    assert str(Settings.from_env().faults) == FAULTS
    monkeypatch.setenv("CHEXOPS_ENVIRONMENT", "production")
    with pytest.raises(ConfigError, match="refused when CHEXOPS_ENVIRONMENT is production"):
        Settings.from_env()
    monkeypatch.setenv("CHEXOPS_ENVIRONMENT", "staging")
    monkeypatch.setenv("CHEXOPS_FAULT_INJECTION", "error_rate=2")
    with pytest.raises(ConfigError, match="error_rate must be within"):
        Settings.from_env()


def test_analysis_template_matches_the_upstream_schema():
    """The AnalysisTemplate against Argo Rollouts 1.8.3's CRD schema (tests/schemas), with unknown fields refused."""
    import schemas

    docs = [d for d in yaml.safe_load_all(ANALYSIS.read_text()) if d]
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [("AnalysisTemplate", "chexops-canary")]
    schemas.check(docs[0])
    names = {a["name"] for a in docs[0]["spec"]["args"]}
    assert {"namespace", "canary-version", "prometheus-address"} <= names
    if shutil.which("kubectl"):  # absent on a user's machine
        out = subprocess.run(["kubectl", "kustomize", str(ANALYSIS.parent)], capture_output=True, text=True, check=True)
        assert yaml.safe_load(out.stdout)["metadata"]["namespace"] == "production"


# --- the delivery template, run here against real services ----------------------------------------------

DELIVERY = ROOT / "workflows/delivery.yaml"


def _deliver(env: dict, staging_url: str, repo: Path, freight: str, uri: str, **extra: str) -> tuple[int, dict, str]:
    params = {
        "version": CANARY_VERSION,
        "freight": freight,
        "training-image": f"{REGISTRY.replace('chexops-cxr', 'chexops-train')}:t@sha256:{'c' * 64}",
        "staging-commit": git(repo, "rev-parse", "HEAD").strip(),
        "staging-url": staging_url,
        "serving-timeout": "6",
        "loadtest-duration": "4s",
        "loadtest-max-p95-ms": "30000",
        "mlflow-tracking-uri": uri,
        "gitops-repo": str(repo),
        "gitops-branch": "main",
        **extra,
    }
    args = [a for k, v in params.items() for a in ("-p", f"{k}={v}")]
    workdir = Path(env["CHEXOPS_HOME"]) / "runs" / str(len(list((Path(env["CHEXOPS_HOME"]) / "runs").glob("*"))))
    code, out, err = chexops(
        "pipeline", "run", str(DELIVERY), "--local", *args, "--workdir", str(workdir), "--json", **env
    )
    assert "Traceback" not in err, err[-3000:]
    lines = out.strip().splitlines()
    return code, (json.loads(lines[-1]) if lines else {}), err


def _node(run: dict, name: str) -> dict:
    return next(n for n in run["nodes"] if n["name"] == f"main.{name}")


@pytest.mark.slow
def test_the_delivery_verifies_the_version_it_judges(tmp_path, stable, canaries, gitops_repo):
    """chexops-deliver, run locally: while staging still serves N-1 the wait fails at its timeout naming
    both versions and nothing is load-tested or promoted; once N serves, the load test's evidence lists only
    N and the canary commit carries the run's freight. A load test answered by another version fails."""
    from datetime import UTC, datetime

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model(NAME)
    for _ in ("1", CANARY_VERSION):
        client.create_model_version(NAME, f"file://{tmp_path}/model", None)
    image_b = f"{REGISTRY}:v2@{DIGEST_B}"
    staged = {"staging.image": image_b, "staging.at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    for key, value in staged.items():  # what `promote --to staging` recorded (tested above)
        client.set_model_version_tag(NAME, CANARY_VERSION, key, value)
    env = {"CHEXOPS_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": uri, "CHEXOPS_API_KEY": API_KEY}
    (tmp_path / "home/runs").mkdir(parents=True)
    freight = chexops_json("freight", "create", "--commit", git(ROOT, "rev-parse", "HEAD").strip(), **env)
    freight_json = json.dumps({k: v for k, v in freight.items() if v is not None})
    repo, before = gitops_repo, git(gitops_repo, "rev-parse", "HEAD")

    # Staging still serves version 1 (stable): the wait fails at its timeout, naming both versions.
    code, run, err = _deliver(env, stable.url, repo, freight_json, uri)
    assert code == 1 and "main.staging-serving (see" in err, err[-3000:]
    waited = json.loads((tmp_path / "home/runs/0/main.staging-serving/outputs/result.json").read_text())
    assert waited["verified"] is False and set(waited["seen"]) == {"1"}, waited
    assert waited["message"].startswith("not serving version 2 after 6 s: saw version 1 x"), waited
    assert git(repo, "rev-parse", "HEAD") == before  # nothing promoted
    assert "loadtest.passed" not in client.get_model_version(NAME, CANARY_VERSION).tags

    # Version 2 serves (the good canary service stands in for staging after its sync): delivered to canary.
    code, run, err = _deliver(env, canaries["good"].url, repo, freight_json, uri)
    assert code == 0, err[-3000:]
    assert _node(run, "staging-synced")["phase"] == "Skipped"  # Argo CD exists only in the cluster
    served = _node(run, "staging-serving")["result"]
    assert served["verified"] and set(served["seen"]) == {"2"}, served
    load = _node(run, "loadtest")["result"]
    assert load["passed"] and load["versions"] == {"2": load["versions"]["2"]} and load["versions"]["2"] > 0, load
    assert load["expected_version"] == "2"
    tags = client.get_model_version(NAME, CANARY_VERSION).tags
    assert json.loads(tags["loadtest.versions"]) == load["versions"]
    # The canary commit: production's overlay names version 2 and the image, with the freight in the
    # commit's trailers and on the pods; the Kubernetes waits are cluster-only, production is not reached.
    assert workload(repo, "production")[::2] == (image_b, CANARY_VERSION)
    message = git(repo, "log", "-1", "--format=%B")
    assert f"Chexops-Freight-Commit: {freight['commit']}" in message and "Chexops-Environment: canary" in message
    rollout = next(d for d in render(repo, "production") if d["kind"] == "Rollout")
    pod_freight = json.loads(rollout["spec"]["template"]["metadata"]["annotations"]["chexops.io/freight"])
    assert pod_freight["commit"] == freight["commit"] and pod_freight["model_version"] == CANARY_VERSION
    assert pod_freight["bento_image"] == image_b
    assert {_node(run, n)["phase"] for n in ("production-synced", "rollout")} == {"Skipped"}
    assert str(client.get_model_version_by_alias(NAME, "canary").version) == CANARY_VERSION

    # A load test whose answers come from another version fails (exit 3), naming the versions.
    code, out, err = chexops(
        "loadtest", "--host", stable.url, "--users", "1", "--duration", "3s", "--max-p95-ms", "30000",
        "--expect-version", CANARY_VERSION, "--out", str(tmp_path / "lt"), "--json", **env,
    )  # fmt: skip
    result = json.loads(out)
    assert code == 3 and not result["passed"] and set(result["versions"]) == {"1"}, err[-2000:]
    assert [c for c in result["checks"] if c["criterion"] == "expect_version"][0]["passed"] is False


def test_a_step_refuses_a_freight_of_another_commit(tmp_path):
    """The root of every command checks $CHEXOPS_FREIGHT against the code running (the image's baked
    commit, else the checkout's HEAD): another commit exits 2, naming both."""
    head = git(ROOT, "rev-parse", "HEAD").strip()
    other = "f" * 40
    code, _, err = chexops("freight", "show", CHEXOPS_FREIGHT=json.dumps({"commit": other}), CHEXOPS_IMAGE_COMMIT=None)
    assert code == 2 and head in err and other in err, err
    code, out, err = chexops("freight", "show", "--json", CHEXOPS_FREIGHT=json.dumps({"commit": head}))
    assert code == 0 and json.loads(out)["commit"] == head, err
    # The image's commit wins over the checkout (an image is not a checkout).
    code, _, err = chexops("freight", "show", CHEXOPS_FREIGHT=json.dumps({"commit": head}), CHEXOPS_IMAGE_COMMIT=other)
    assert code == 2 and f"this step runs commit {other}" in err, err
