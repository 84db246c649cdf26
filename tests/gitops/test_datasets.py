"""The data path's persistent home: the `datasets` Cinder volume (Terraform, mounted on the storage
node by the Ansible `volumes` role) backs MinIO through a local PersistentVolume, and the training
workflow keeps no data only on the GPU node's local-path volume (lost with every GPU lease): prepare
writes to MinIO, and every step that reads the volume runs after the cache step refills it from there."""

from __future__ import annotations

import re

import pytest
import yaml

from .render import REPO, documents
from .test_buckets import created_buckets

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed (bash tests/infra/install-tools.sh)")

GIB = {"Gi": 1, "Ti": 1024}


def _unquote(value):
    return value.strip('"') if isinstance(value, str) else value


def _gib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Gi|Ti)", quantity).groups()
    return int(number) * GIB[unit]


def datasets_volume() -> tuple[str, int, str]:
    """(mount point, size in GiB, storage node) of Terraform's `datasets` volume."""
    with (REPO / "terraform" / "variables.tf").open() as fh:
        variables = {_unquote(k): v for block in hcl2.load(fh)["variable"] for k, v in block.items()}
    volumes = {_unquote(k): {_unquote(a): _unquote(b) for a, b in v.items()}
               for k, v in variables["volumes"]["default"].items()}
    outputs = (REPO / "terraform" / "modules" / "kvm_cluster" / "outputs.tf").read_text()
    (node,) = re.findall(r'output "storage_node_id" \{[^}]*?node\["([a-z0-9-]+)"\]', outputs)
    return volumes["datasets"]["mount_point"], int(volumes["datasets"]["size_gb"]), node


def minio(argocd_docs) -> dict:
    (app,) = [d for d in argocd_docs if d["kind"] == "Application" and d["metadata"]["name"] == "minio"]
    return app


def test_minio_keeps_its_data_on_the_datasets_volume(renders, argocd_docs):
    mount, size_gb, node = datasets_volume()
    storage = [d for d in argocd_docs if d["kind"] == "Application"
               and d["spec"]["source"].get("path") == "k8s/platform/storage"]
    assert storage, "no Application applies k8s/platform/storage"
    volumes = [d for d in documents(renders[REPO / "k8s" / "platform" / "storage"]) if d["kind"] == "PersistentVolume"]
    app = minio(argocd_docs)
    values = app["spec"]["source"]["helm"]["valuesObject"]["persistence"]
    claim = (app["spec"]["destination"]["namespace"], app["spec"]["source"]["helm"]["releaseName"])
    (pv,) = [v for v in volumes if (v["spec"]["claimRef"]["namespace"], v["spec"]["claimRef"]["name"]) == claim]
    spec = pv["spec"]
    assert spec["storageClassName"] == values["storageClass"], "MinIO's claim would not bind the datasets PV"
    assert _gib(values["size"]) <= _gib(spec["capacity"]["storage"]) <= size_gb
    assert spec["persistentVolumeReclaimPolicy"] == "Retain"
    assert spec["local"]["path"].startswith(mount.rstrip("/") + "/"), (spec["local"]["path"], mount)
    (term,) = spec["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]
    # The role makes the directory (Kubernetes refuses a local volume whose path is missing).
    defaults = yaml.safe_load((REPO / "ansible" / "roles" / "volumes" / "defaults" / "main.yml").read_text())
    assert spec["local"]["path"][len(mount) + 1 :] in defaults["volumes_directories"]["datasets"]


def _needs(tasks: dict[str, dict], name: str) -> set[str]:
    """Every task that `name` runs after (its `depends`, transitively)."""
    direct = set(re.findall(r"[A-Za-z0-9-]+", tasks[name].get("depends", "")))
    return direct.union(*(_needs(tasks, d) for d in direct)) if direct else set()


def _param(arg: str) -> str:
    (name,) = re.fullmatch(r"\{\{inputs\.parameters\.([a-z-]+)\}\}", arg).groups()
    return name


def _option(args: list[str], option: str) -> str:
    return args[args.index(option) + 1]


def test_no_training_data_lives_only_on_the_gpu_nodes_volume():
    spec = yaml.safe_load((REPO / "workflows" / "training.yaml").read_text())["spec"]
    (claim,) = documents((REPO / "workflows" / "pvc.yaml").read_text())
    assert "storageClassName" not in claim["spec"]  # the default class, local-path: on whichever node binds it first
    claimed = {v["name"] for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") ==
               claim["metadata"]["name"]}
    templates = {t["name"]: t for t in spec["templates"]}
    tasks = {t["name"]: t for t in templates["main"]["dag"]["tasks"]}
    defaults = {p["name"]: p.get("value") for p in spec["arguments"]["parameters"]}

    def container(task: str) -> dict:
        return templates.get(tasks[task].get("template"), {}).get("container") or {}

    def runs(*command: str) -> list[str]:
        return [n for n in tasks if container(n).get("args", [])[: len(command)] == list(command)]

    users = {n for n in tasks if any(m["name"] in claimed for m in container(n).get("volumeMounts", []))}
    assert users, "nothing mounts the chexops-data claim: the test would prove nothing"
    for name in users:  # a ReadWriteOnce local-path volume: every user on the node it lives on, the GPU node
        assert templates[tasks[name]["template"]].get("nodeSelector") == {"chexops.io/gpu": "true"}, name

    # Prepare writes the persistent copy: to MinIO (whose data is on the datasets volume), never to the claim.
    (prepare,) = runs("data", "prepare")
    assert prepare not in users
    out = _param(_option(container(prepare)["args"], "--out"))
    task_args = {p["name"]: p["value"] for p in tasks[prepare]["arguments"]["parameters"]}
    home = defaults[_param(task_args[out])]
    assert home.startswith("s3://") and home[5:].split("/")[0] in created_buckets(), home

    # The cache step copies that copy onto the claim, and every other user of the claim runs after it.
    (cache,) = runs("data", "ingest")
    args = container(cache)["args"]
    given = {p["name"]: p["value"] for p in tasks[cache]["arguments"]["parameters"]}
    assert given[_param(_option(args, "--source"))] == task_args[out], "the cache is not filled from prepare's output"
    assert given[_param(_option(args, "--dest"))] == "{{inputs.parameters.data-dir}}"
    assert prepare in _needs(tasks, cache)
    late = sorted(n for n in users - {cache} if cache not in _needs(tasks, n))
    assert not late, f"read the GPU node's volume before the cache step refills it: {late}"


def test_the_in_cluster_ingest_loads_what_training_reads_from_the_swift_containers_credentials():
    def parameters(name: str) -> dict[str, str | None]:
        spec = yaml.safe_load((REPO / "workflows" / name).read_text())["spec"]
        return {p["name"]: p.get("value") for p in spec["arguments"]["parameters"]}, spec

    training, _ = parameters("training.yaml")
    ingest, spec = parameters("ingest.yaml")
    assert ingest["dest"] == training["data-source"]
    (step,) = [t for t in spec["templates"] if (t.get("container") or {}).get("args", [])[:2] == ["data", "ingest"]]
    args = step["container"]["args"]
    assert _option(args, "--dest") == "{{inputs.parameters.dest}}"
    # Profile `swift` of the image's AWS config reads the directory where the Swift Secret is mounted.
    config = (REPO / "training" / "aws-config").read_text()
    profile = re.search(r"(?ms)^\[profile " + _option(args, "--source-profile") + r"\]\n(.*?)(?:^\[|\Z)", config)
    (directory,) = re.findall(r"s3-credentials --dir (\S+)", profile.group(1))
    volumes = {v["name"]: v for v in step["volumes"]}
    (mount,) = [m for m in step["container"]["volumeMounts"] if m["mountPath"] == directory]
    secret = volumes[mount["name"]]["secret"]["secretName"]
    made = yaml.safe_load((REPO / "ansible" / "roles" / "secrets" / "defaults" / "main.yml").read_text())
    assert {(s["name"], s["namespace"]) for s in made["secrets_kubernetes"]} >= {(secret, "argo")}
