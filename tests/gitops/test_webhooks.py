"""GitHub's webhooks in (k8s/platform/webhooks): HTTPS through k3s's Traefik to the Argo Events
EventSource and to Argo CD's /api/webhook, each Ingress with a cert-manager certificate of its own
namespace, the HMAC secrets from Ansible, and NetworkPolicies that let Traefik (only) in."""

from __future__ import annotations

import yaml

from .render import REPO

WEBHOOKS = REPO / "k8s" / "platform" / "webhooks"
TRAEFIK = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "traefik"}},
}


def _objects(renders) -> list[dict]:
    return [d for d in yaml.safe_load_all(renders[WEBHOOKS]) if d]


def _eventsource() -> dict:
    docs = yaml.safe_load_all((REPO / "workflows" / "events" / "eventsource.yaml").read_text())
    (source,) = [d for d in docs if d and d["kind"] == "EventSource"]
    return source


def _route(ingress: dict) -> tuple[str, str, int]:
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert path["pathType"] == "Exact"
    return path["path"], backend["name"], backend["port"]["number"]


def test_the_ingresses_route_pushes_to_the_eventsource_and_argocd(renders):
    objects = _objects(renders)
    ingresses = {d["metadata"]["namespace"]: d for d in objects if d["kind"] == "Ingress"}
    source = _eventsource()
    (hook,) = source["spec"]["github"].values()
    (port,) = source["spec"]["service"]["ports"]
    # Argo Events names an EventSource's Service <name>-eventsource-svc.
    assert _route(ingresses[source["metadata"]["namespace"]]) == (
        hook["webhook"]["endpoint"],
        f"{source['metadata']['name']}-eventsource-svc",
        port["port"],
    )
    assert str(port["targetPort"]) == hook["webhook"]["port"]
    assert _route(ingresses["argocd"]) == ("/api/webhook", "argocd-server", 80)
    for ingress in ingresses.values():
        notes = ingress["metadata"]["annotations"]
        assert ingress["spec"]["ingressClassName"] == "traefik"
        assert notes["traefik.ingress.kubernetes.io/router.entrypoints"] == "websecure"  # HTTPS only
        assert notes["traefik.ingress.kubernetes.io/router.tls"] == "true"


def test_each_ingress_has_a_certificate_of_its_namespace(renders):
    objects = _objects(renders)
    issuers = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in objects if d["kind"] == "Issuer"}
    certificates = {
        (d["metadata"]["namespace"], d["spec"]["secretName"]): d for d in objects if d["kind"] == "Certificate"
    }
    ingresses = [d for d in objects if d["kind"] == "Ingress"]
    assert len(ingresses) == 2
    for ingress in ingresses:
        namespace = ingress["metadata"]["namespace"]
        (tls,) = ingress["spec"]["tls"]
        certificate = certificates[(namespace, tls["secretName"])]
        ref = certificate["spec"]["issuerRef"]
        assert ref["kind"] == "Issuer" and (namespace, ref["name"]) in issuers


def test_webhook_secrets_come_from_ansible(ansible_secrets, argo_variables):
    ref = _eventsource()["spec"]["github"]["chexops"]["webhookSecret"]
    assert ref["key"] in ansible_secrets[("argo-events", ref["name"])]
    defaults = yaml.safe_load((REPO / "ansible" / "roles" / "secrets" / "defaults" / "main.yml").read_text())
    (secret,) = [s for s in defaults["secrets_kubernetes"] if s["name"] == ref["name"]]
    (argocd,) = [c for c in argo_variables["argo_charts"] if c["name"] == "argo-cd"]
    # The argo-cd chart writes configs.secret.githubSecret to argocd-secret webhook.github.secret.
    assert argocd["values"]["configs"]["secret"]["githubSecret"] == secret["data"][ref["key"]]
    assert "vault_github_webhook_secret" in secret["data"][ref["key"]]


def test_traefik_may_reach_the_webhook_pods(renders):
    policies = {d["metadata"]["namespace"]: d["spec"] for d in _objects(renders) if d["kind"] == "NetworkPolicy"}
    source = _eventsource()
    events = policies[source["metadata"]["namespace"]]
    assert events["podSelector"]["matchLabels"] == {"eventsource-name": source["metadata"]["name"]}
    (rule,) = events["ingress"]
    assert rule["from"] == [TRAEFIK] and rule["ports"] == [{"protocol": "TCP", "port": 12000}]
    server = policies["argocd"]
    assert server["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "argocd-server"}
    # argocd-server listens on 8080 (server.insecure: TLS ends at Traefik) behind Service port 80.
    assert {"from": [TRAEFIK], "ports": [{"protocol": "TCP", "port": 8080}]} in server["ingress"]
