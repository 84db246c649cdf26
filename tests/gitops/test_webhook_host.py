"""The deployment's webhook host reaches what GitHub talks to, through both levels of Applications,
rendered as Argo CD renders them: the root Application (Ansible `argo` role) patches the children
chexops-workflows and webhooks, whose own `source.kustomize.patches` then patch the EventSource's
webhook.url and the webhook Certificates. Argo CD appends an Application's
`source.kustomize.patches` to the `patches` of the kustomization at its path and builds that; so
here, on copies of the directories. Every object on the way validates against the strict schemas
of the deployed versions (tests/schemas)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from schemas import errors

from .conftest import node1_public_ip, render_root_application, resolve_argo_variables
from .render import REPO, documents, kubectl, render


def _argocd_build(app: dict, tmp_path: Path) -> list[dict]:
    """What Argo CD applies for the kustomize Application `app`: its path, with the Application's
    patches appended to the kustomization's own. The directories it refers to (../) come along."""
    path = app["spec"]["source"]["path"]
    work = tmp_path / app["metadata"]["name"]
    for top in {path.split("/")[0], "argocd"}:
        shutil.copytree(REPO / top, work / top, dirs_exist_ok=True)
    kustomization = work / path / "kustomization.yaml"
    data = yaml.safe_load(kustomization.read_text())
    data["patches"] = data.get("patches", []) + app["spec"]["source"].get("kustomize", {}).get("patches", [])
    kustomization.write_text(yaml.safe_dump(data, sort_keys=False))
    return documents(render(work / path))


def _one(docs: list[dict], kind: str, name: str) -> list[dict]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert found, f"{kind}/{name} not rendered"
    return found


def _valid(doc: dict) -> dict:
    assert errors(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}: {errors(doc)[:5]}"
    return doc


@pytest.mark.parametrize(
    ("extra", "host"),
    [
        ({"chexops_public_ip": node1_public_ip()}, node1_public_ip()),
        ({"chexops_public_ip": node1_public_ip(), "chexops_webhook_host": "hooks.chexops.test"}, "hooks.chexops.test"),
    ],
    ids=["floating-ip", "dns-name"],
)
def test_the_webhook_host_reaches_the_eventsource_and_the_certificates(extra, host, tmp_path):
    if not kubectl():
        pytest.skip("kubectl is not installed (kubectl kustomize renders the kustomizations)")
    root = _valid(render_root_application(resolve_argo_variables(extra)))
    children = _argocd_build(root, tmp_path / "root")

    (workflows,) = _one(children, "Application", "chexops-workflows")
    (eventsource,) = _one(_argocd_build(_valid(workflows), tmp_path), "EventSource", "github")
    assert _valid(eventsource)["spec"]["github"]["chexops"]["webhook"]["url"] == f"https://{host}"
    committed = [d for d in documents(render(REPO / "workflows")) if d["kind"] == "EventSource"]
    assert committed[0]["spec"]["github"]["chexops"]["webhook"]["url"] != f"https://{host}"

    (webhooks,) = _one(children, "Application", "webhooks")
    certificates = _one(_argocd_build(_valid(webhooks), tmp_path), "Certificate", "github-webhooks")
    assert {c["metadata"]["namespace"] for c in certificates} == {"argo-events", "argocd"}
    for certificate in certificates:
        spec = _valid(certificate)["spec"]
        names = spec.get("ipAddresses", []) + spec.get("dnsNames", [])
        assert spec["commonName"] == host and names == [host], spec
        assert ("ipAddresses" in spec) == (host == node1_public_ip()), spec


def test_other_children_are_untouched(root_application, tmp_path):
    """Only the two Applications whose objects name the host are patched; the rest render as in git."""
    patched = _argocd_build(root_application, tmp_path)
    plain = documents(render(REPO / "argocd"))
    differ = {d["metadata"]["name"] for d in patched if d not in plain}
    assert differ == {"chexops-workflows", "webhooks"}
