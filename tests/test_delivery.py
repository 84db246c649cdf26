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

from chexops.delivery import gitops
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
        ("canary", "production", "nameSuffix: -canary\nreplicas:\n  - name: chexops\n    count: 0\n"),
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
    """(image, replicas, model-version pod label) of the rendered chexops workload."""
    docs = [d for d in render(repo, env) if d["kind"] in ("Deployment", "Rollout")]
    assert len(docs) == 1, [d["kind"] for d in docs]
    spec = docs[0]["spec"]
    pod = spec["template"]
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "chexops")
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
    stable_count = gitops.stable_replicas(repo)  # production's replicas: the canary slice follows from it

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

    # Canary at 10 % (with the contract's 2 stable replicas: 1 canary beside them), then 50 % (as many as stable).
    code, result, err = promote(repo, env, "--to", "canary", "--version", first, "--weight", "10")
    assert code == 0, err[-3000:]
    slice10 = max(1, round(stable_count * 10 / 90))
    assert workload(repo, "canary") == (image_a, slice10, first) and result["replicas"] == slice10
    assert "load test (staging" in git(repo, "log", "-1", "--format=%B")
    assert client.get_model_version_by_alias(NAME, "canary").version == first
    assert promote(repo, env, "--to", "canary", "--version", first, "--weight", "50")[0] == 0
    assert workload(repo, "canary") == (image_a, stable_count, first)

    # Production without a Successful analysis: refused.
    before = state(repo, client)
    code, _, err = promote(
        repo,
        env,
        "--to",
        "production",
        "--version",
        first,
        "--analysis-run",
        "chexops-canary-x",
        "--analysis-phase",
        "Failed",
    )
    assert code == 3 and "not Successful" in err and state(repo, client) == before

    # Production: the canary slice retired in the same commit.
    code, result, err = promote(
        repo,
        env,
        "--to",
        "production",
        "--version",
        first,
        "--analysis-run",
        "chexops-canary-x",
        "--analysis-phase",
        "Successful",
    )
    assert code == 0, err[-3000:]
    assert workload(repo, "production") == (image_a, stable_count, first) and workload(repo, "canary")[1] == 0
    assert sorted(result["files"]) == [
        f"{OVERLAYS}/canary/kustomization.yaml",
        f"{OVERLAYS}/production/kustomization.yaml",
    ]
    assert "canary analysis chexops-canary-x: Successful" in git(repo, "log", "-1", "--format=%B")
    aliases = client.get_registered_model(NAME).aliases
    assert aliases["production"] == first and "canary" not in aliases

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
    # Rollback production: the bootstrap render again, the alias gone, the canary stays retired.
    assert promote(repo, env, "--rollback", "production")[0] == 0
    assert workload(repo, "production")[0] == bootstrap[0] and workload(repo, "canary")[1] == 0
    assert "production" not in client.get_registered_model(NAME).aliases
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
TEST_ARGS = {"window": "30s", "feedback-window": "60s", "min-feedback": "3", "max-p95-increase-seconds": "1.0"}


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
