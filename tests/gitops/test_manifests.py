"""The clinic endpoint's manifests (k8s/chexops) and the platform's (k8s/platform, k8s/monitoring),
rendered by `kubectl kustomize` and checked for what cannot run here: schema validity
(kubernetes-validate --strict), security settings, probes, labels, network policies, canary
wiring, and the golden render per environment (refresh: python -m tests.gitops.render --update-golden)."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
import yaml

from schemas import is_custom

from .render import ENVIRONMENTS, GOLDEN, OVERLAYS, REPO, kustomization_dirs, normalise

# k3s v1.33 (ansible/roles/kubernetes/defaults/main.yml); kubernetes-validate ships its schemas.
KUBERNETES_VERSION = "1.33.0"
IMAGE = re.compile(r"^registry\.platform\.svc\.cluster\.local:5000/chexops-cxr:v(\d+)@sha256:[0-9a-f]{64}$")
# The StorageClass of platform state: kubernetes_platform_storage_class of the Ansible kubernetes role.
PLATFORM_STORAGE_CLASS = "chexops-platform"
NAMESPACE = {"staging": "staging", "canary": "production", "production": "production"}
TRACK = {"staging": "stable", "canary": "canary", "production": "stable"}


def _kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def _deployment(docs) -> dict:
    (deployment,) = _kind(docs, "Deployment")
    return deployment


def _container(deployment) -> dict:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "chexops"]
    return container


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_kustomization_renders(renders, directory):
    result = renders[directory]
    if isinstance(result, Exception):
        pytest.fail(str(result))
    assert result.strip(), f"{directory} renders nothing"


def test_core_objects_are_valid_kubernetes(all_docs):
    """kubernetes-validate --strict on every rendered core object (custom resources: test_schemas)."""
    checked, errors = 0, []
    for directory, doc in all_docs:
        if is_custom(doc):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            checked += 1
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            errors.append(f"{directory.relative_to(REPO)} {doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert not errors, "\n".join(errors)
    assert checked >= 20


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_golden_render(renders, env):
    """What each environment runs, without the fields a promotion changes (see render.normalise)."""
    actual = normalise(env, renders[OVERLAYS / env])
    golden = (GOLDEN / f"{env}.yaml").read_text()
    assert actual == golden, (
        f"the {env} render changed: review the diff, then refresh with `python -m tests.gitops.render --update-golden`"
    )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_image_is_pinned_by_tag_and_digest(env_docs, env):
    image = _container(_deployment(env_docs[env]))["image"]
    match = IMAGE.match(image)
    assert match, f"{env}: {image} is not registry/chexops-cxr:vN@sha256:<digest>"
    assert ":latest" not in image
    kustomization = yaml.safe_load((OVERLAYS / env / "kustomization.yaml").read_text())
    (pin,) = kustomization["images"]
    # The pod's model-version label is the version of the image it runs.
    labels = _deployment(env_docs[env])["spec"]["template"]["metadata"]["labels"]
    assert labels["chexops.io/model-version"] == match.group(1) == pin["newTag"].lstrip("v")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_pod_security(env_docs, env):
    deployment = _deployment(env_docs[env])
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc.get("privileged", False) is False
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_writable_paths_are_volumes(env_docs, env):
    """With a read-only root, every place BentoML and chexops write must be a mounted emptyDir."""
    pod = _deployment(env_docs[env])["spec"]["template"]["spec"]
    container = _container(_deployment(env_docs[env]))
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty]
    env_vars = {e["name"]: e.get("value") for e in container["env"]}
    for name in ("BENTOML_HOME", "CHEXOPS_HOME", "TMPDIR", "HOME"):
        path = env_vars[name]
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), (
            f"{name}={path} is not on an emptyDir"
        )
    assert "/tmp" in mounts


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_probes_resources_and_scraping(env_docs, env):
    deployment = _deployment(env_docs[env])
    container = _container(deployment)
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": 3000, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_labels_and_their_env_vars(env_docs, env):
    deployment = _deployment(env_docs[env])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "chexops"
    assert labels["chexops.io/track"] == TRACK[env]
    assert labels["chexops.io/environment"] == NAMESPACE[env]
    assert deployment["metadata"]["namespace"] == NAMESPACE[env]
    # Selectors never carry the version (a promotion would orphan the old ReplicaSet's pods).
    assert "chexops.io/model-version" not in deployment["spec"]["selector"]["matchLabels"]
    env_vars = {e["name"]: e for e in _container(deployment)["env"]}
    assert not any("FAULT" in name for name in env_vars), "fault injection exists for the analysis tests only"
    for var, label in (
        ("CHEXOPS_ENVIRONMENT", "chexops.io/environment"),
        ("CHEXOPS_TRACK", "chexops.io/track"),
        ("CHEXOPS_MODEL_VERSION", "chexops.io/model-version"),
    ):
        path = env_vars[var]["valueFrom"]["fieldRef"]["fieldPath"]
        assert path == f"metadata.labels['{label}']", var


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_secrets_are_the_ones_ansible_creates(env_docs, ansible_secrets, env):
    deployment = _deployment(env_docs[env])
    namespace = deployment["metadata"]["namespace"]
    pod = deployment["spec"]["template"]["spec"]
    refs = [
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in _container(deployment)["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    refs += [
        (v["secret"]["secretName"], i["key"]) for v in pod["volumes"] if "secret" in v for i in v["secret"]["items"]
    ]
    assert {name for name, _ in refs} == {"chexops-api-keys", "chexops-feedback-db"}
    for name, key in refs:
        assert key in ansible_secrets.get((namespace, name), set()), (
            f"no Secret {namespace}/{name} with key {key} in Ansible"
        )
    env_vars = {e["name"] for e in _container(deployment)["env"]}
    assert "CHEXOPS_API_KEYS_FILE" in env_vars and "CHEXOPS_FEEDBACK_URL" in env_vars


def test_canary_is_a_slice_behind_productions_service(env_docs):
    canary, production = env_docs["canary"], env_docs["production"]
    assert [d["kind"] for d in canary] == ["Deployment"], "the canary overlay must add its Deployment only"
    (service,) = _kind(production, "Service")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "chexops"}
    stable, slice_ = _deployment(production), _deployment(canary)
    assert slice_["metadata"]["name"] != stable["metadata"]["name"]
    assert slice_["metadata"]["namespace"] == stable["metadata"]["namespace"] == service["metadata"]["namespace"]
    for deployment in (stable, slice_):
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items(), "the Service must select both tracks"
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # Disjoint Deployment selectors: neither adopts the other's pods.
    assert (
        stable["spec"]["selector"]["matchLabels"]["chexops.io/track"]
        != slice_["spec"]["selector"]["matchLabels"]["chexops.io/track"]
    )
    assert (
        slice_["spec"]["template"]["spec"]["serviceAccountName"]
        == stable["spec"]["template"]["spec"]["serviceAccountName"]
    )
    # The stable Deployment declares the count the canary slice is computed from.
    kustomization = yaml.safe_load((OVERLAYS / "production" / "kustomization.yaml").read_text())
    assert {"name": "chexops", "count": stable["spec"]["replicas"]} in kustomization["replicas"]


@pytest.mark.parametrize("env", ("staging", "production"))
def test_hpa_and_pdb_follow_the_stable_deployment(env_docs, env):
    docs = env_docs[env]
    deployment = _deployment(docs)
    (hpa,) = _kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"] < hpa["spec"]["maxReplicas"]
    (pdb,) = _kind(docs, "PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def _peers(rule_peers):
    return [
        (
            p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name"),
            p.get("podSelector", {}).get("matchLabels"),
        )
        for p in rule_peers
    ]


@pytest.mark.parametrize("env", ("staging", "production"))
def test_network_policies(env_docs, env):
    policies = {p["metadata"]["name"]: p for p in _kind(env_docs[env], "NetworkPolicy")}
    deny = [
        p
        for p in policies.values()
        if p["spec"]["podSelector"] == {}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ]
    assert deny, f"{env}: no default-deny NetworkPolicy"
    pods = _deployment(env_docs[env])["spec"]["template"]["metadata"]["labels"]
    ingress = [
        r
        for p in policies.values()
        for r in p["spec"].get("ingress", [])
        if p["spec"]["podSelector"].get("matchLabels", {}).items() <= pods.items()
    ]
    sources = sorted((peer for r in ingress for peer in _peers(r["from"])), key=str)
    expected = [
        ("kube-system", {"app.kubernetes.io/name": "traefik"}),
        ("platform", {"app.kubernetes.io/name": "prometheus"}),
    ]
    if env == "staging":  # the pipelines' load test (namespace argo) is staging's evidence
        expected.insert(0, ("argo", None))
    assert sources == expected, sources
    assert all(r["ports"] == [{"port": "http", "protocol": "TCP"}] for r in ingress)
    egress = [r for p in policies.values() for r in p["spec"].get("egress", [])]
    ports = sorted((peer[0], port["port"]) for r in egress for peer in _peers(r["to"]) for port in r["ports"])
    assert ports == [("kube-system", 53), ("kube-system", 53), ("platform", 5432)], ports


def test_production_ingress_is_https_to_the_shared_service(env_docs):
    (ingress,) = _kind(env_docs["production"], "Ingress")
    (service,) = _kind(env_docs["production"], "Service")
    assert ingress["spec"]["ingressClassName"] == "traefik"
    annotations = ingress["metadata"]["annotations"]
    assert annotations["traefik.ingress.kubernetes.io/router.entrypoints"] == "websecure"
    assert annotations["traefik.ingress.kubernetes.io/router.tls"] == "true"
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends == [{"name": service["metadata"]["name"], "port": {"name": "http"}}]
    assert not _kind(env_docs["staging"], "Ingress"), "staging is reached in-cluster only (load test, port-forward)"


def test_environment_namespaces_enforce_restricted_pod_security(renders):
    docs = [d for d in yaml.safe_load_all(renders[REPO / "k8s" / "platform" / "namespaces"]) if d]
    levels = {d["metadata"]["name"]: d["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") for d in docs}
    assert levels["staging"] == levels["production"] == "restricted"


def test_persistent_data_is_on_the_platform_storage_class(all_docs):
    """Every claim (and StatefulSet claim template, and EventBus volume) on the class the Ansible
    `kubernetes` role creates on the platform volume (Retain, a path per namespace/claim)."""
    claims = [d["spec"] for _, d in all_docs if d["kind"] == "PersistentVolumeClaim"]
    claims += [
        t["spec"] for _, d in all_docs if d["kind"] == "StatefulSet" for t in d["spec"].get("volumeClaimTemplates", [])
    ]
    claims += [d["spec"]["jetstream"]["persistence"] for _, d in all_docs if d["kind"] == "EventBus"]
    assert len(claims) >= 3
    assert {c["storageClassName"] for c in claims} == {PLATFORM_STORAGE_CLASS}


def test_monitoring_kustomization_carries_every_rules_file_and_dashboard():
    root = REPO / "k8s" / "monitoring"
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    listed = {f for g in kustomization["configMapGenerator"] for f in g.get("files", [])}
    rules = [
        p for p in [*root.glob("rules/*.yaml"), *root.glob("rules/*.yml")] if ".test." not in p.name
    ]  # promtool tests
    present = {str(p.relative_to(root)) for p in [*rules, *root.glob("dashboards/*.json")]}
    assert present and present == listed, f"not listed: {present - listed}; missing: {listed - present}"


def test_every_image_is_pinned(all_docs):
    for directory, doc in all_docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            image = container["image"]
            if directory.name == "base" and image == "chexops-serving":
                continue  # the base's name, replaced by every overlay
            assert not image.endswith(":latest") and (":" in image.rsplit("/", 1)[-1] or "@sha256:" in image), image


def test_the_storage_class_is_the_one_ansible_creates():
    defaults = yaml.safe_load((REPO / "ansible" / "roles" / "kubernetes" / "defaults" / "main.yml").read_text())
    if "kubernetes_platform_storage_class" not in defaults:
        pytest.skip(
            "the Ansible kubernetes role in this tree does not create the platform StorageClass yet (infra's branch)"
        )
    assert defaults["kubernetes_platform_storage_class"] == PLATFORM_STORAGE_CLASS
