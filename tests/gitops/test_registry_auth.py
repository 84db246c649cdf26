"""The in-cluster registry asks for credentials (k8s/platform/registry: Distribution's htpasswd), and
the Ansible roles make them: the htpasswd Secret (bcrypt of the vault password), the pipelines' push
Secret argo/chexops-registry-push (a docker config) and the nodes' pull login (k3s registries.yaml).
The roles' templates are rendered with Ansible's own filters. (No registry binary runs here.)"""

from __future__ import annotations

import base64
import json
import posixpath
import re
import secrets

import bcrypt
import jinja2
import pytest
import yaml

from .render import REPO

ROLES = REPO / "ansible" / "roles"
PASSWORD = secrets.token_urlsafe(16)  # made per run: no credential in git


def _deployment(renders) -> dict:
    docs = [d for d in yaml.safe_load_all(renders[REPO / "k8s" / "platform" / "registry"]) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    return deployment


def _filters() -> dict:
    """Ansible's core filters. Importing ansible replaces sys.intern with a patch object, which breaks
    torch's dynamo in the tests that run later in this process: the builtin is put back."""
    import sys

    intern = sys.intern
    try:
        from ansible.plugins.filter.core import FilterModule
    finally:
        sys.intern = intern
    return FilterModule().filters()


def _ansible(text: str, variables: dict):
    """A value as Ansible templates it: one {{ expression }} keeps its type (a dict stays a dict)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters.update(_filters())
    whole = re.fullmatch(r"\s*\{\{(.*)\}\}\s*", text, re.DOTALL)
    if whole:
        try:
            return env.compile_expression(whole.group(1))(**variables)
        except jinja2.TemplateSyntaxError:  # more than one {{ }}: text
            pass
    return env.from_string(text).render(**variables)


@pytest.fixture(scope="module")
def role_secrets() -> dict[tuple[str, str], dict]:
    """The `secrets` role's Secrets as it renders them for a vault with PASSWORD."""
    defaults = yaml.safe_load((ROLES / "secrets" / "defaults" / "main.yml").read_text())
    variables = {"vault_registry_password": PASSWORD}
    for key in [k for k in defaults if k.startswith("secrets_registry_")]:
        variables[key] = _ansible(defaults[key], variables)
    out = {}
    for secret in defaults["secrets_kubernetes"]:
        if secret["name"] in ("registry-htpasswd", "chexops-registry-push"):
            data = {k: _ansible(v, variables) for k, v in secret["data"].items()}
            out[(secret["namespace"], secret["name"])] = {**secret, "data": data}
    return out


def test_the_registry_requires_an_htpasswd_login(renders):
    pod = _deployment(renders)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["REGISTRY_AUTH"] == "htpasswd" and env["REGISTRY_AUTH_HTPASSWD_REALM"]
    folder, name = posixpath.split(env["REGISTRY_AUTH_HTPASSWD_PATH"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "registry-htpasswd"
    assert {"key": "htpasswd", "path": name} in volume["secret"]["items"]
    # /v2/ answers 401 without a login: the probes ask the debug server's health instead.
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert probe["httpGet"]["path"] == "/debug/health"
        (port,) = [p for p in container["ports"] if p["name"] == probe["httpGet"]["port"]]
        assert env["REGISTRY_HTTP_DEBUG_ADDR"] == f":{port['containerPort']}"


def test_the_secrets_role_makes_the_htpasswd_file(role_secrets):
    htpasswd = role_secrets[("platform", "registry-htpasswd")]["data"]["htpasswd"]
    user, _, hashed = htpasswd.partition(":")
    assert user == "chexops" and hashed.startswith("$2")  # Distribution reads bcrypt only
    assert bcrypt.checkpw(PASSWORD.encode(), hashed.encode())
    assert not bcrypt.checkpw(b"another password", hashed.encode())


def test_the_push_secret_is_a_docker_config_for_the_registry(role_secrets, renders):
    secret = role_secrets[("argo", "chexops-registry-push")]
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    auths = json.loads(secret["data"][".dockerconfigjson"])["auths"]
    service = [d for d in yaml.safe_load_all(renders[REPO / "k8s" / "platform" / "registry"]) if d]
    (port,) = [s for s in service if s["kind"] == "Service" and s["metadata"]["name"] == "registry"][0]["spec"]["ports"]
    host = f"registry.platform.svc.cluster.local:{port['port']}"
    assert set(auths) == {host}
    assert base64.b64decode(auths[host]["auth"]).decode() == f"chexops:{PASSWORD}"
    assert (auths[host]["username"], auths[host]["password"]) == ("chexops", PASSWORD)
    task = yaml.safe_load((ROLES / "secrets" / "tasks" / "main.yml").read_text())
    (write,) = [t for t in task if t["name"] == "Write the Kubernetes Secrets"]
    assert write["kubernetes.core.k8s"]["definition"]["type"] == "{{ item.type | default('Opaque') }}"
    assert (
        "vault_registry_password"
        in yaml.safe_load((ROLES / "secrets" / "defaults" / "main.yml").read_text())["secrets_required_vars"]
    )


def test_the_nodes_pull_with_the_same_login():
    defaults = yaml.safe_load((ROLES / "kubernetes" / "defaults" / "main.yml").read_text())
    variables = {
        "kubernetes_registry_mirrors": defaults["kubernetes_registry_mirrors"],
        "kubernetes_registry_auth": {
            endpoint: {k: _ansible(v, {"vault_registry_password": PASSWORD}) for k, v in auth.items()}
            for endpoint, auth in defaults["kubernetes_registry_auth"].items()
        },
        "ansible_managed": "test",
    }
    text = (ROLES / "kubernetes" / "templates" / "registries.yaml.j2").read_text()
    config = yaml.safe_load(_ansible(text, variables))
    (endpoint,) = config["mirrors"]["registry.platform.svc.cluster.local:5000"]["endpoint"]
    # k3s matches `configs` by the endpoint's host:port, which is where containerd logs in.
    host = endpoint.split("://", 1)[1]
    assert config["configs"][host]["auth"] == {"username": "chexops", "password": PASSWORD}
