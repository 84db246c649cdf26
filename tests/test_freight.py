"""Freight through training: a step refuses other code than its freight's commit (real `chexops`
processes), steps add their facts and never change one, the training pipeline's steps all run the
image its first step builds from the commit, and that build step's script (its commit checks, its
content address, its registry look-ups) run for real: busybox's sh and wget, as in the BuildKit
image, against a real Distribution registry with htpasswd credentials; only BuildKit itself is a
stand-in that pushes a tiny image through the same registry API."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from chexops.core.freight import Freight, FreightMismatch, running_commit
from chexops.core.processes import ServerProcess, free_port
from chexops.train.tracking_run import freight_of
from support import ROOT, chexops, environment, make_rows, run_cli, write_chexpert

TRAINING = ROOT / "workflows" / "training.yaml"
HEAD = running_commit()
needs_git = pytest.mark.skipif(HEAD is None, reason="the tests run from a git checkout (its HEAD is the commit)")


def templates() -> dict[str, dict]:
    return {t["name"]: t for t in yaml.safe_load(TRAINING.read_text())["spec"]["templates"]}


# --- a step refuses other code -----------------------------------------------------------------


def test_a_step_in_an_image_of_another_commit_refuses_naming_both():
    """The image says it is commit B, the freight says A: `chexops evaluate` stops before anything (exit 2)."""
    wanted, baked = "a" * 40, "b" * 40
    done = run_cli(
        "evaluate",
        "--run",
        "0" * 32,
        env={"CHEXOPS_IMAGE_COMMIT": baked, "CHEXOPS_FREIGHT": Freight(commit=wanted).to_json()},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"this step runs commit {baked}, but its freight names commit {wanted}" in done.stderr
    assert "Traceback" not in done.stderr
    # the image of the freight's commit runs
    same = run_cli(
        "freight",
        "show",
        "--json",
        env={"CHEXOPS_IMAGE_COMMIT": wanted, "CHEXOPS_FREIGHT": Freight(commit=wanted).to_json()},
    )
    assert same.returncode == 0 and json.loads(same.stdout)["commit"] == wanted, same.stderr[-2000:]


@needs_git
def test_a_step_in_a_checkout_of_another_commit_refuses_naming_both():
    """No image commit: the checkout's HEAD is what runs; a freight of another commit is refused."""
    other = "c" * 40
    done = run_cli(
        "evaluate",
        "--run",
        "0" * 32,
        env={"CHEXOPS_IMAGE_COMMIT": None, "CHEXOPS_FREIGHT": Freight(commit=other).to_json()},
    )
    assert done.returncode == 2 and f"runs commit {HEAD}, but its freight names commit {other}" in done.stderr
    assert "Traceback" not in done.stderr
    created = run_cli("freight", "create", "--commit", other, env={"CHEXOPS_IMAGE_COMMIT": None})
    assert created.returncode == 2 and HEAD in created.stderr and other in created.stderr


@needs_git
def test_prepare_adds_the_data_version_and_a_changed_fact_is_refused(tmp_path):
    write_chexpert(tmp_path / "source", make_rows(n_patients=3))
    freight = Freight(commit=HEAD)

    def prepare(carried: Freight, outputs: Path) -> tuple[int, str, str]:
        return chexops(
            "data", "prepare", "--source", str(tmp_path / "source"), "--out", str(tmp_path / "prepared"),
            "--size", "16", "--workers", "1", "--json",
            CHEXOPS_FREIGHT=carried.to_json(), CHEXOPS_OUTPUTS=str(outputs), CHEXOPS_IMAGE_COMMIT=None,
        )  # fmt: skip

    code, out, err = prepare(freight, tmp_path / "first")
    assert code == 0, err[-2000:]
    version = json.loads(out.strip().splitlines()[-1])["data_version"]
    carried = Freight.parse((tmp_path / "first" / "freight").read_text())
    assert carried == freight.add(data_version=version) and carried.data_version

    stale = freight.add(data_version="0" * 12)  # the run prepared other data than is there now
    code, _, err = prepare(stale, tmp_path / "second")
    assert code == 2 and f"data_version is {'0' * 12} in the freight, the step found {version}" in err
    assert not (tmp_path / "second" / "freight").exists()


def test_training_refuses_prepared_data_other_than_its_freights():
    fingerprint = {"data_version": "d" * 12, "prepared_data_version": "e" * 12}
    with environment(CHEXOPS_FREIGHT=Freight(commit="a" * 40, data_version="f" * 12).to_json()):
        with pytest.raises(FreightMismatch, match=f"prepared data version {'e' * 12}.*data version {'f' * 12}"):
            freight_of(fingerprint)
    with environment(CHEXOPS_FREIGHT=Freight(commit="a" * 40, data_version="e" * 12).to_json()):
        assert freight_of(fingerprint).tags()["freight.data_version"] == "e" * 12


# --- every step runs the built image and carries the freight ------------------------------------


def test_every_training_step_runs_the_image_built_from_the_commit_and_carries_the_freight():
    spec = yaml.safe_load(TRAINING.read_text())["spec"]
    by_name = templates()
    main = {t["name"]: t for t in by_name["main"]["dag"]["tasks"]}
    assert main["build"]["template"] == "build-training-image" and "depends" not in main["build"]
    build = by_name["build-training-image"]
    image_output = next(p for p in build["outputs"]["parameters"] if p["name"] == "image")
    assert image_output["globalName"] == "training-image"
    assert {a["git"]["revision"] for a in build["inputs"]["artifacts"]} == {"{{inputs.parameters.commit}}"}
    assert main["freight"]["depends"] == "build" and by_name["freight"]["container"]["args"][:2] == [
        "freight",
        "create",
    ]

    built = "{{tasks.build.outputs.parameters.image}}"
    chexops_steps = 0
    for name, template in by_name.items():
        if "container" not in template:
            continue
        image = template["container"]["image"]
        if name in ("build-training-image", "image"):  # BuildKit itself (the training and the serving image)
            assert image.startswith("moby/buildkit:") and "@sha256:" in image
            continue
        chexops_steps += 1
        env = {e["name"]: e.get("value") for e in template["container"].get("env", [])}
        if name == spec["onExit"]:
            assert image == "{{workflow.outputs.parameters.training-image}}"
            continue
        assert image == "{{inputs.parameters.training-image}}", name
        if name != "freight":
            assert env["CHEXOPS_FREIGHT"] == "{{inputs.parameters.freight}}", name
    assert chexops_steps >= 10

    # Each task hands on the freight of a task it depends on, and the image the build made.
    done = {"build", "freight"}
    for name, task in main.items():
        args = {p["name"]: p["value"] for p in (task.get("arguments") or {}).get("parameters", [])}
        if "training-image" in args:
            assert args["training-image"] == built, name
        if name not in done and "freight" in args:
            source = args["freight"].removeprefix("{{tasks.").split(".", 1)[0]
            assert source in task["depends"] or source in done and task["depends"] in done, (name, source)
        done.add(name)
    gate = {t["name"]: t for t in by_name["gate"]["dag"]["tasks"]}
    for task in gate.values():
        args = {p["name"]: p["value"] for p in task["arguments"]["parameters"]}
        assert args["training-image"] == "{{inputs.parameters.training-image}}"
        assert args["freight"] == "{{inputs.parameters.freight}}"
    final = next(p for p in by_name["main"]["outputs"]["parameters"] if p["name"] == "freight")
    assert final["valueFrom"]["parameter"] == "{{tasks.promote-staging.outputs.parameters.freight}}"


def test_the_placeholder_image_is_gone_and_the_commit_is_required():
    for path in (ROOT / "workflows" / "training.yaml", ROOT / "workflows" / "cron.yaml"):
        assert "chexops-train:0.1.0" not in path.read_text() and "2f1d0c3e5a8b" not in path.read_text(), path
    spec = yaml.safe_load(TRAINING.read_text())["spec"]
    commit = next(p for p in spec["arguments"]["parameters"] if p["name"] == "commit")
    assert "value" not in commit  # no default: `main` or any branch name would not be one commit
    cron = yaml.safe_load((ROOT / "workflows" / "cron.yaml").read_text())["spec"]["workflowSpec"]
    tasks = {t["name"]: t for t in cron["templates"][0]["dag"]["tasks"]}
    resolved = "{{tasks.resolve.outputs.parameters.commit}}"
    for name in ("build", "pipeline"):
        assert {p["name"]: p["value"] for p in tasks[name]["arguments"]["parameters"]}["commit"] == resolved


# --- the build step's script, run for real ------------------------------------------------------

FAKE_BUILDCTL = '''#!{python}
"""buildctl-daemonless.sh's stand-in: records its arguments and pushes a tiny image (one config blob, no
layers) as the --output name through the registry API, with the credentials BuildKit would use."""
import hashlib, json, os, sys, urllib.request

args = sys.argv[1:]
opts = [args[i + 1] for i, a in enumerate(args) if a == "--opt"]
name = dict(kv.split("=", 1) for kv in args[args.index("--output") + 1].split(","))["name"]
with open(os.environ["BUILD_LOG"], "a") as log:
    log.write(json.dumps({{"opts": opts, "name": name, "flags": os.environ["BUILDKITD_FLAGS"]}}) + "\\n")
host, rest = name.split("/", 1)
repo, tag = rest.rsplit(":", 1)
auth = json.load(open(os.path.join(os.environ["DOCKER_CONFIG"], "config.json")))["auths"][host]["auth"]
headers = {{"Authorization": "Basic " + auth}}
config = json.dumps({{"opts": opts}}).encode()
digest = "sha256:" + hashlib.sha256(config).hexdigest()
upload = urllib.request.urlopen(urllib.request.Request(
    f"http://{{host}}/v2/{{repo}}/blobs/uploads/", method="POST", headers=headers))
location = upload.headers["Location"]
location = location if location.startswith("http") else f"http://{{host}}{{location}}"
urllib.request.urlopen(urllib.request.Request(
    location + ("&" if "?" in location else "?") + "digest=" + digest, data=config, method="PUT",
    headers={{**headers, "Content-Type": "application/octet-stream"}}))
manifest = json.dumps({{
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": len(config)}},
    "layers": [],
}}).encode()
pushed = urllib.request.urlopen(urllib.request.Request(
    f"http://{{host}}/v2/{{repo}}/manifests/{{tag}}", data=manifest, method="PUT",
    headers={{**headers, "Content-Type": "application/vnd.oci.image.manifest.v1+json"}}))
with open(args[args.index("--metadata-file") + 1], "w") as out:
    json.dump({{"containerimage.digest": pushed.headers["Docker-Content-Digest"]}}, out)
'''


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real Distribution registry on localhost that requires htpasswd credentials to push and read."""
    for tool in ("docker-registry", "htpasswd", "busybox", "git"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (tests/install-tools.sh installs it)")
    root = tmp_path_factory.mktemp("registry")
    user, password = "chexops-push", secrets.token_urlsafe(16)  # made per run: no credential in git
    (root / "htpasswd").write_text(
        subprocess.run(["htpasswd", "-nbB", user, password], capture_output=True, text=True, check=True).stdout
    )
    port = free_port()
    (root / "config.yml").write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
                "http": {"addr": f"127.0.0.1:{port}"},
                "auth": {"htpasswd": {"realm": "chexops-registry", "path": str(root / "htpasswd")}},
            }
        )
    )
    with ServerProcess(["docker-registry", "serve", root / "config.yml"], root / "registry.log", name="registry"):
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/v2/", timeout=2)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for credentials
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"the registry did not start: {(root / 'registry.log').read_text()[-2000:]}")
        yield {"host": f"127.0.0.1:{port}", "user": user, "password": password}


def docker_config(directory: Path, host: str, user: str, password: str) -> Path:
    """A dockerconfigjson as `kubectl create secret docker-registry` writes it (one line)."""
    import base64

    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (directory / "config.json").write_text(
        json.dumps({"auths": {host: {"username": user, "password": password, "auth": auth}}}, separators=(",", ":"))
    )
    return directory


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


class BuildStep:
    """The build template's own script and environment (from training.yaml), run by busybox sh with
    busybox's applets first on PATH (as in the BuildKit image) and the stand-in buildctl."""

    def __init__(self, tmp: Path, registry: dict):
        template = templates()["build-training-image"]
        self.script = template["container"]["args"][0]
        self.env = {e["name"]: e["value"] for e in template["container"]["env"] if "value" in e}
        self.tmp, self.registry = tmp, registry
        self.bin = tmp / "bin"
        self.bin.mkdir()
        subprocess.run(["busybox", "--install", "-s", str(self.bin)], check=True)
        fake = self.bin / "buildctl-daemonless.sh"
        fake.write_text(FAKE_BUILDCTL.format(python=sys.executable))
        fake.chmod(0o755)
        self.log = tmp / "builds.jsonl"
        self.repo_name = f"{registry['host']}/chexops-train"
        self.config = docker_config(tmp / "docker", registry["host"], registry["user"], registry["password"])
        self.runs = 0

    def run(self, source: Path, sha: str, config: Path | None = None) -> tuple[subprocess.CompletedProcess, dict, list]:
        self.runs += 1
        outputs = self.tmp / f"outputs-{self.runs}"
        before = self.log.read_text().splitlines() if self.log.exists() else []
        env = {
            **self.env,
            "COMMIT": sha,
            "IMAGE_REPO": self.repo_name,
            "SOURCE": str(source),
            "DOCKER_CONFIG": str(config or self.config),
            "OUTPUTS": str(outputs),
            "BUILD_LOG": str(self.log),
            "PATH": f"{self.bin}:{Path(shutil.which('git')).parent}",
            "HOME": str(self.tmp),  # /home/user in the BuildKit image
        }
        done = subprocess.run(
            ["busybox", "sh", "-ec", self.script], env=env, capture_output=True, text=True, timeout=120
        )
        after = self.log.read_text().splitlines() if self.log.exists() else []
        out = {p.name: p.read_text() for p in outputs.glob("*") if p.suffix != ".json"} if outputs.is_dir() else {}
        return done, out, [json.loads(line) for line in after[len(before) :]]

    def digest(self, tag: str) -> str:
        import base64

        auth = base64.b64encode(f"{self.registry['user']}:{self.registry['password']}".encode()).decode()
        request = urllib.request.Request(
            f"http://{self.registry['host']}/v2/chexops-train/manifests/{tag}",
            method="HEAD",
            headers={"Authorization": f"Basic {auth}", "Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        return urllib.request.urlopen(request, timeout=10).headers["Docker-Content-Digest"]


@pytest.mark.slow
def test_the_build_step_builds_each_commit_once_and_reuses_an_unchanged_tree(tmp_path, registry):
    source = tmp_path / "src"
    source.mkdir()
    git(source, "init", "-q")
    dockerfile = (ROOT / "training" / "Dockerfile").read_text()
    first = commit(
        source,
        {
            "training/Dockerfile": dockerfile,
            "pyproject.toml": "[project]\nname = 'x'\n",
            "README.md": "x\n",
            "training/chexops/__init__.py": "",
            "configs/a.yaml": "a: 1\n",
            "bentos/bentofile.yaml": "service: x\n",
            "docs/operations.md": "# ops\n",
        },
        "first",
    )
    step = BuildStep(tmp_path, registry)

    done, out, builds = step.run(source, first)
    assert done.returncode == 0, done.stderr[-3000:]
    src = f"src-{out['source-hash']}"
    assert out["reused"] == "none" and len(out["source-hash"]) == 40
    assert [(b["name"], b["opts"][1]) for b in builds] == [
        (f"{step.repo_name}:{src}", "target=code"),
        (f"{step.repo_name}:{first}", "target=release"),
    ]
    assert f"build-arg:BASE={step.repo_name}:{src}@{step.digest(src)}" in builds[1]["opts"]
    assert f"build-arg:CHEXOPS_IMAGE_COMMIT={first}" in builds[1]["opts"]
    image = out["image"]
    assert image == f"{step.repo_name}:{first}@{step.digest(first)}"
    # BuildKit is told the in-cluster registry is plain HTTP (it pulls the code image from there)
    toml = (tmp_path / ".config" / "buildkit" / "buildkitd.toml").read_text()
    assert toml == f'[registry."{registry["host"]}"]\n  http = true\n'
    assert builds[0]["flags"] == f"--oci-worker-no-process-sandbox --config {tmp_path}/.config/buildkit/buildkitd.toml"

    # The same commit again (a retry): found by its tag, nothing built.
    done, out, builds = step.run(source, first)
    assert done.returncode == 0 and (out["reused"], out["image"], builds) == ("commit", image, [])

    # A commit that changes none of what the image copies: only the commit stamp is built, on the same code.
    docs_only = commit(source, {"docs/operations.md": "# ops, revised\n"}, "docs")
    done, out, builds = step.run(source, docs_only)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out["reused"] == "source" and f"src-{out['source-hash']}" == src
    assert [(b["name"], b["opts"][1]) for b in builds] == [(f"{step.repo_name}:{docs_only}", "target=release")]
    assert f"build-arg:BASE={step.repo_name}:{src}@{step.digest(src)}" in builds[0]["opts"]
    assert out["image"] == f"{step.repo_name}:{docs_only}@{step.digest(docs_only)}" != image

    # Code the image copies changed: a new code image.
    code_change = commit(source, {"training/chexops/__init__.py": "VERSION = 2\n"}, "code")
    done, out, builds = step.run(source, code_change)
    assert done.returncode == 0 and out["reused"] == "none" and f"src-{out['source-hash']}" != src
    assert len(builds) == 2

    # Not one exact commit, or not the commit checked out: refused before any build.
    done, out, builds = step.run(source, "main")
    assert done.returncode == 2 and "'main' is not a full 40-hex git SHA" in done.stderr and builds == []
    done, out, builds = step.run(source, first)
    assert done.returncode == 2 and f"the checkout is commit {code_change}, not {first}" in done.stderr

    # Credentials the registry refuses: a clear failure, not a rebuild.
    git(source, "checkout", "-q", first)
    wrong = docker_config(tmp_path / "wrong", registry["host"], registry["user"], "not-the-password")
    done, out, builds = step.run(source, first, config=wrong)
    assert done.returncode != 0 and "answered '401'" in done.stderr and builds == []


def test_a_bento_of_another_version_than_the_freights_is_refused():
    """`chexops bento import|build` name the version their Bento model tag holds; the run's freight
    refuses a Bento of another version (a run tag `run-...` names none)."""
    from chexops.cli.train import _bento_facts

    freight = Freight(commit="a" * 40, model_name="chexops-cxr", model_version="3")
    assert freight.add(**_bento_facts("chexops-cxr:v3")) == freight
    assert _bento_facts("chexops-cxr:run-0123456789ab") == {}
    with pytest.raises(FreightMismatch, match="model_version is 3 in the freight, the step found 12"):
        freight.add(**_bento_facts("chexops-cxr:v12"))
