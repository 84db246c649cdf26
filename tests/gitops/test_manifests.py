"""The clinic endpoint's manifests (k8s/chexops) and the platform's (k8s/platform, k8s/monitoring),
rendered by `kubectl kustomize` and checked for what cannot run here: schema validity
(kubernetes-validate --strict), security settings, probes, labels, network policies, the Argo
Rollout's traffic-routed canary, and the golden render per environment
(refresh: python -m tests.gitops.render --update-golden)."""

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
NAMESPACE = {"staging": "staging", "production": "production"}


def _kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def _deployment(docs) -> dict:
    """The clinic endpoint's workload: an Argo Rollout (the pod template and selector of a Deployment)."""
    assert not [d for d in _kind(docs, "Deployment") if d["metadata"]["name"] == "chexops"], (
        "the clinic endpoint runs as an Argo Rollout"
    )
    (rollout,) = _kind(docs, "Rollout")
    return rollout


def _container(deployment) -> dict:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "chexops"]
    return container


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_kustomization_renders(renders, directory):
    result = renders[directory]
    if isinstance(result, Exception):
        pytest.fail(str(result))
    if yaml.safe_load((directory / "kustomization.yaml").read_text()).get("kind") == "Component":
        return  # a component adds configuration to the overlays that use it, and renders no object itself
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
    assert "chexops.io/track" not in labels  # Argo Rollouts sets it: canaryMetadata / stableMetadata
    canary = deployment["spec"]["strategy"]["canary"]
    assert canary["canaryMetadata"]["labels"] == {"chexops.io/track": "canary"}
    assert canary["stableMetadata"]["labels"] == {"chexops.io/track": "stable"}
    assert labels["chexops.io/environment"] == NAMESPACE[env]
    assert deployment["metadata"]["namespace"] == NAMESPACE[env]
    # Selectors never carry the version (a promotion would orphan the old ReplicaSet's pods).
    assert "chexops.io/model-version" not in deployment["spec"]["selector"]["matchLabels"]
    env_vars = {e["name"]: e for e in _container(deployment)["env"]}
    assert not any("FAULT_INJECTION" in name for name in env_vars), "fault injection exists for the analysis tests only"
    for var, label in (
        ("CHEXOPS_ENVIRONMENT", "chexops.io/environment"),
        ("CHEXOPS_TRACK", "chexops.io/track"),
        ("CHEXOPS_MODEL_VERSION", "chexops.io/model-version"),
    ):
        path = env_vars[var]["valueFrom"]["fieldRef"]["fieldPath"]
        assert path == f"metadata.labels['{label}']", var
    # The freight: the pod's annotation (chexops promote writes it), shown by /model.
    assert (
        env_vars["CHEXOPS_FREIGHT"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.annotations['chexops.io/freight']"
    )
    assert "chexops.io/freight" in deployment["spec"]["template"]["metadata"]["annotations"]


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
    assert {name for name, _ in refs} == {"chexops-api-keys", "chexops-feedback-db", "chexops-images-s3"}
    for name, key in refs:
        assert key in ansible_secrets.get((namespace, name), set()), (
            f"no Secret {namespace}/{name} with key {key} in Ansible"
        )
    env_vars = {e["name"] for e in _container(deployment)["env"]}
    assert "CHEXOPS_API_KEYS_FILE" in env_vars and "CHEXOPS_FEEDBACK_URL" in env_vars


def test_the_canary_is_exact_traffic_weights_with_an_analysis_before_each_step(env_docs):
    """Production's Rollout: 10 %, analysis, 50 %, analysis, (100 %), by Traefik weights on two Services
    that Argo Rollouts points at the stable and canary ReplicaSets, so the share does not follow replicas."""
    production = env_docs["production"]
    rollout = _deployment(production)
    canary = rollout["spec"]["strategy"]["canary"]
    steps = canary["steps"]
    assert [next(iter(s)) for s in steps] == ["setWeight", "analysis", "setWeight", "analysis"]
    assert [s["setWeight"] for s in steps if "setWeight" in s] == [10, 50]
    for step in (s["analysis"] for s in steps if "analysis" in s):
        assert step["templates"] == [{"templateName": "chexops-canary"}]
        (version,) = [a for a in step["args"] if a["name"] == "canary-version"]
        # The analysis judges the version this Rollout's template runs (the label chexops promote sets).
        assert version["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['chexops.io/model-version']"
        assert rollout["metadata"]["labels"]["chexops.io/model-version"]
    services = {s["metadata"]["name"]: s for s in _kind(production, "Service")}
    assert {canary["stableService"], canary["canaryService"]} <= set(services)
    for name in (canary["stableService"], canary["canaryService"]):
        assert services[name]["spec"]["selector"] == {"app.kubernetes.io/name": "chexops"}
    (traefik_service,) = _kind(production, "TraefikService")
    assert canary["trafficRouting"] == {"traefik": {"weightedTraefikServiceName": traefik_service["metadata"]["name"]}}
    weighted = traefik_service["spec"]["weighted"]["services"]
    assert {w["name"] for w in weighted} == {canary["stableService"], canary["canaryService"]}
    assert all("weight" not in w for w in weighted), "the weights are the controller's (Argo CD ignores them)"
    (route,) = _kind(production, "IngressRoute")
    assert route["spec"]["entryPoints"] == ["websecure"] and "tls" in route["spec"]
    assert [s for r in route["spec"]["routes"] for s in r["services"]] == [
        {"name": traefik_service["metadata"]["name"], "kind": "TraefikService"}
    ]
    assert not _kind(production, "Ingress"), "clinics come in through the IngressRoute (weights), not an Ingress"
    # A failed analysis: the controller drops the canary's weight at once and scales it down soon after.
    assert canary["abortScaleDownDelaySeconds"] <= 30
    assert "steps" not in _deployment(env_docs["staging"])["spec"]["strategy"]["canary"]


@pytest.mark.parametrize("env", ("staging", "production"))
def test_hpa_and_pdb_follow_the_rollout(env_docs, env):
    docs = env_docs[env]
    deployment = _deployment(docs)
    (hpa,) = _kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
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
    # The delivery's steps (namespace argo): staging's load test, production's verification (/model).
    expected.insert(0, ("argo", None))
    expected.append((None, {"app.kubernetes.io/name": "chexops-pacs"}))  # the DICOM gateway
    assert sources == expected, sources
    assert all(r["ports"] == [{"port": "http", "protocol": "TCP"}] for r in ingress)
    egress = [
        r
        for p in policies.values()
        for r in p["spec"].get("egress", [])
        if p["spec"]["podSelector"].get("matchLabels", {}).items() <= pods.items()
    ]
    ports = sorted((peer[0], port["port"]) for r in egress for peer in _peers(r["to"]) for port in r["ports"])
    assert ports == [("kube-system", 53), ("kube-system", 53), ("platform", 5432), ("platform", 9000)], ports


def test_only_production_is_reached_from_outside(env_docs):
    assert not _kind(env_docs["staging"], "Ingress") and not _kind(env_docs["staging"], "IngressRoute"), (
        "staging is reached in-cluster only (load test, port-forward)"
    )


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


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_dicom_gateway_runs_the_services_image_with_its_outbox_on_a_claim(env_docs, env):
    """Issue 21: one gateway pod (Recreate: never two on one outbox), the image the Rollout runs, a Service on
    DICOM's port 104, and the outbox on a PersistentVolumeClaim."""
    (gateway,) = [d for d in _kind(env_docs[env], "Deployment") if d["metadata"]["name"] == "chexops-pacs"]
    assert gateway["spec"]["replicas"] == 1 and gateway["spec"]["strategy"]["type"] == "Recreate"
    pod = gateway["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == _container(_deployment(env_docs[env]))["image"]
    assert container["command"][:5] == ["python", "-m", "chexops", "pacs", "serve"]
    env_vars = {e["name"]: e for e in container["env"]}
    state = env_vars["CHEXOPS_PACS_STATE"]["value"]
    claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert any(m["name"] in claims and state.startswith(m["mountPath"]) for m in container["volumeMounts"])
    (service,) = [d for d in _kind(env_docs[env], "Service") if d["metadata"]["name"] == "chexops-pacs"]
    assert service["spec"]["ports"] == [{"name": "dicom", "port": 104, "targetPort": "dicom", "protocol": "TCP"}]
    assert service["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]
