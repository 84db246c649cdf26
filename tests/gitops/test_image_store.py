"""The image store as the cluster wires it: each environment's pods (the Rollout's, the nightly prune's)
and the retraining's export resolve CHEXOPS_IMAGE_STORE to their own prefix of MinIO's bucket chexops-images, as
Kubernetes expands `$(VAR)` from earlier variables and fieldRefs; the S3 keys come from Secret chexops-images-s3,
which the Ansible role makes in every namespace that reads it; the bucket exists and is backed up; and the network
policies, evaluated as the API documents them (a pod's egress and the peer's ingress must both allow), let exactly
those pods reach MinIO's port 9000."""

from __future__ import annotations

import re

import yaml

from .render import OVERLAYS, REPO, documents, render

MINIO = {"namespace": "platform", "labels": {"app.kubernetes.io/name": "minio"}, "port": 9000}


def _resolved(env: list[dict], namespace: str) -> dict[str, object]:
    """name → value, `$(NAME)` expanded from earlier entries and metadata.namespace fieldRefs resolved (Kubernetes'
    dependent environment variables); a secretKeyRef stays (secret, key)."""
    out: dict[str, object] = {}
    for item in env:
        source = item.get("valueFrom", {})
        if "secretKeyRef" in source:
            out[item["name"]] = (source["secretKeyRef"]["name"], source["secretKeyRef"]["key"])
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            out[item["name"]] = namespace
        elif "value" in item:
            out[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: str(out.get(m.group(1), m.group(0))), item["value"])
    return out


def _pod_specs(docs: list[dict]) -> dict[str, tuple[dict, dict]]:
    """workload name → (its pod spec, its pod labels), for the Rollout and the CronJob."""
    found = {}
    for d in docs:
        if d["kind"] == "Rollout":
            found[d["metadata"]["name"]] = (d["spec"]["template"]["spec"], d["spec"]["template"]["metadata"]["labels"])
        if d["kind"] == "CronJob":
            template = d["spec"]["jobTemplate"]["spec"]["template"]
            found[d["metadata"]["name"]] = (template["spec"], template["metadata"]["labels"])
    return found


def _expects_s3(values: dict, prefix: str) -> None:
    assert values["CHEXOPS_IMAGE_STORE"] == f"s3://chexops-images/{prefix}"
    assert values["AWS_ENDPOINT_URL"] == "http://minio.platform.svc.cluster.local:9000"
    assert values["AWS_ACCESS_KEY_ID"] == ("chexops-images-s3", "AWS_ACCESS_KEY_ID")
    assert values["AWS_SECRET_ACCESS_KEY"] == ("chexops-images-s3", "AWS_SECRET_ACCESS_KEY")


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and value in expression["values"]:
            return False
    return True


def _peer_allows(peer: dict, own_namespace: str, namespace: str, labels: dict) -> bool:
    """A `from`/`to` peer of a policy in `own_namespace` against a pod: without a namespaceSelector, the policy's
    own namespace only."""
    if "ipBlock" in peer:
        return False
    ns_selector, pod_selector = peer.get("namespaceSelector"), peer.get("podSelector", {})
    if ns_selector is None:
        ns_ok = namespace == own_namespace
    else:
        ns_ok = _selects(ns_selector, {"kubernetes.io/metadata.name": namespace})
    return ns_ok and _selects(pod_selector, labels)


def _allowed(policies: list[dict], direction: str, pod_ns: str, pod: dict, peer_ns: str, peer: dict, port: int):
    """Whether `pod` (in pod_ns) may send to / receive from `peer` on `port` by the policies of pod_ns."""
    mine = [
        p
        for p in policies
        if p["metadata"].get("namespace", pod_ns) == pod_ns
        and direction.capitalize() in p["spec"].get("policyTypes", [])
        and _selects(p["spec"]["podSelector"], pod)
    ]
    if not mine:
        return True  # no policy selects the pod in that direction: all allowed
    for policy in mine:
        for rule in policy["spec"].get(direction, []):
            peers = rule.get("to" if direction == "egress" else "from")
            ports = [p.get("port") for p in rule.get("ports", [])]
            if (peers is None or any(_peer_allows(x, pod_ns, peer_ns, peer) for x in peers)) and (
                not ports or port in ports
            ):
                return True
    return False


def _policies() -> list[dict]:
    found = []
    for env in ("staging", "production"):
        found += [
            {**d, "metadata": {**d["metadata"], "namespace": env}}
            for d in documents(render(OVERLAYS / env))
            if d["kind"] == "NetworkPolicy"
        ]
    found += [
        {**d, "metadata": {**d["metadata"], "namespace": "platform"}}
        for d in yaml.safe_load_all((REPO / "k8s" / "platform" / "network" / "networkpolicies.yaml").read_text())
    ]
    return found


def test_each_environment_keeps_its_images_under_its_own_prefix(env_docs):
    for env, docs in env_docs.items():
        workloads = _pod_specs(docs)
        for name in ("chexops", "chexops-feedback-prune"):
            spec, _ = workloads[name]
            (container,) = [c for c in spec["containers"]]
            _expects_s3(_resolved(container["env"], env), env)
        prune = workloads["chexops-feedback-prune"][0]["containers"][0]["command"]
        assert prune[prune.index("prune") :] == [
            "prune", "--unlabelled-days", "30", "--exported-days", "30", "--labelled-days", "365",
        ]  # fmt: skip


def test_the_retraining_exports_productions_images():
    cron = yaml.safe_load((REPO / "workflows" / "cron.yaml").read_text())
    templates = cron["spec"]["workflowSpec"]["templates"]
    steps = [t for t in templates if (t.get("container") or {}).get("args", [])[:2] == ["feedback", "export"]]
    (export,) = steps
    _expects_s3(_resolved(export["container"]["env"], "argo"), "production")


def test_the_secret_bucket_and_backup_exist_where_they_are_read():
    defaults = yaml.safe_load((REPO / "ansible" / "roles" / "secrets" / "defaults" / "main.yml").read_text())
    secrets = {s["namespace"]: s for s in defaults["secrets_kubernetes"] if s["name"] == "chexops-images-s3"}
    assert set(secrets) == {"staging", "production", "argo"}
    assert all(set(s["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} for s in secrets.values())
    minio = yaml.safe_load((REPO / "argocd" / "platform" / "minio.yaml").read_text())
    assert "chexops-images" in [b["name"] for b in minio["spec"]["source"]["helm"]["valuesObject"]["buckets"]]
    backup = yaml.safe_load((REPO / "k8s" / "platform" / "backup" / "cronjob.yaml").read_text())
    (upload,) = backup["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    buckets = [upload["args"][i + 1] for i, a in enumerate(upload["args"]) if a == "--bucket"]
    assert "chexops-images" in buckets and "mlflow" in buckets


def test_only_the_clinic_pods_and_their_prune_reach_minio(env_docs):
    policies = _policies()
    for env, docs in env_docs.items():
        for name, (_, labels) in _pod_specs(docs).items():
            out = _allowed(policies, "egress", env, labels, "platform", MINIO["labels"], 9000)
            into = _allowed(policies, "ingress", "platform", MINIO["labels"], env, labels, 9000)
            assert out and into, (env, name, out, into)
            postgres = {"app.kubernetes.io/name": "postgresql"}
            assert _allowed(policies, "egress", env, labels, "platform", postgres, 5432), (env, name)
            assert _allowed(policies, "ingress", "platform", postgres, env, labels, 5432), (env, name)
        stranger = {"app.kubernetes.io/name": "pacs-gateway"}
        assert not _allowed(policies, "ingress", "platform", MINIO["labels"], env, stranger, 9000)
        assert not _allowed(policies, "egress", env, stranger, "platform", MINIO["labels"], 9000)
