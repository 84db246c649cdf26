"""Every custom resource that is rendered anywhere (each kustomization under k8s/ and argocd/,
workflows/, the Applications the ApplicationSet generates, the root Application Ansible creates)
validates strictly against the schema of the version the platform deploys (tests/schemas, built
from the upstream CRDs at the deployed tags); a kind without such a schema fails. The schemas
themselves are the ones of the chart versions pinned here: bumping a chart without rebuilding
them fails too."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from schemas import errors, index, is_custom

from .render import REPO, documents, render

# k3s release -> the traefik-helm-chart tag its bundled chart (traefik-X+upY) is built from.
K3S_TRAEFIK = {"v1.33.4+k3s1": "v34.2.0"}


@pytest.fixture(scope="session")
def workflow_docs(renders) -> list[dict]:
    return documents(render(REPO / "workflows"))


@pytest.fixture(scope="session")
def custom_resources(all_docs, workflow_docs, generated, root_application) -> list[tuple[str, dict]]:
    docs = [(str(d.relative_to(REPO)), doc) for d, doc in all_docs]
    docs += [("workflows", doc) for doc in workflow_docs]
    docs += [(f"ApplicationSet element {env}", app) for env, app in generated.items()]
    docs += [("ansible/roles/argo root-application", root_application)]
    return [(where, doc) for where, doc in docs if is_custom(doc)]


def test_every_custom_resource_is_valid_for_the_deployed_version(custom_resources):
    problems = []
    for where, doc in custom_resources:
        found = errors(doc)
        if found:
            problems.append(f"{where} {doc['apiVersion']} {doc['kind']}/{doc['metadata'].get('name')}: {found[:5]}")
    assert not problems, "\n".join(problems)
    kinds = {doc["kind"] for _, doc in custom_resources}
    expected = {"Application", "ApplicationSet", "AppProject", "EventBus", "EventSource", "Sensor"}
    expected |= {"WorkflowTemplate", "CronWorkflow", "AnalysisTemplate", "Certificate", "Issuer"}
    expected |= {"Rollout", "TraefikService", "IngressRoute"}
    assert expected <= kinds, f"not rendered: {expected - kinds}"


def test_a_kind_without_a_schema_and_an_unknown_field_both_fail(custom_resources):
    unknown = {"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert is_custom(unknown) and errors(unknown) == [
        "no schema for example.io/v1/Widget in tests/schemas (add its CRD to build.py's SOURCES)"
    ]
    assert not is_custom({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress"})
    seen = set()
    for _, doc in custom_resources:  # one typo per kind, deep in spec, is refused
        if doc["kind"] in seen or not isinstance(doc.get("spec"), dict):
            continue
        seen.add(doc["kind"])
        typo = copy.deepcopy(doc)
        typo["spec"]["replicaz"] = 1
        assert any("replicaz" in e for e in errors(typo)), f"{doc['kind']} accepts an unknown spec field"
    assert len(seen) >= 10


def _chart_versions() -> dict[str, str]:
    """chart -> pinned version, from the Argo CD Applications and the Ansible `argo` role."""
    out = {}
    for path in (REPO / "argocd" / "platform").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            source = (doc or {}).get("spec", {}).get("source", {})
            if "chart" in source:
                out[source["chart"]] = source["targetRevision"]
    defaults = yaml.safe_load((REPO / "ansible" / "roles" / "argo" / "defaults" / "main.yml").read_text())
    out |= {chart["name"]: chart["version"] for chart in defaults["argo_charts"]}
    return out


@pytest.mark.parametrize(
    ("chart", "repo"),
    [
        ("argo-cd", "argoproj/argo-cd"),
        ("argo-workflows", "argoproj/argo-workflows"),
        ("argo-rollouts", "argoproj/argo-rollouts"),
        ("argo-events", "argoproj/argo-events"),
        ("cert-manager", "cert-manager/cert-manager"),
    ],
)
def test_schemas_are_those_of_the_pinned_chart(chart, repo):
    pinned = _chart_versions()[chart]
    entries = [e for e in index().values() if e["repo"] == repo]
    assert entries, f"no schemas from {repo}"
    for entry in entries:
        assert f"chart {chart} {pinned}" in entry["version"], (
            f"{chart} is pinned at {pinned} but tests/schemas/{entry['file']} is from {entry['version']}: "
            "rebuild (python -m tests.schemas.build)"
        )
        assert re.fullmatch(r"[0-9a-f]{40}", entry["commit"]) and (REPO / "tests" / "schemas" / entry["file"]).is_file()


def test_traefik_schemas_are_those_k3s_bundles():
    k3s = yaml.safe_load((REPO / "ansible" / "roles" / "kubernetes" / "defaults" / "main.yml").read_text())
    version = k3s["kubernetes_k3s_version"]
    assert version in K3S_TRAEFIK, f"k3s {version}: look up its traefik chart (k3s manifests/traefik.yaml) and rebuild"
    tags = {e["tag"] for e in index().values() if e["repo"] == "traefik/traefik-helm-chart"}
    assert tags == {K3S_TRAEFIK[version]}
