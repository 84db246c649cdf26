"""Session fixtures of the GitOps tests: every kustomization rendered once (in parallel)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from .render import OVERLAYS, REPO, documents, kubectl, kustomization_dirs, render_all


@pytest.fixture(scope="session")
def renders() -> dict[Path, str | RuntimeError]:
    if kubectl() is None:
        pytest.skip("kubectl is not installed (it renders the kustomizations: apt-get install kubectl)")
    version = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"Kustomize Version: v(\d+)", version)
    if not found or int(found.group(1)) < 5:
        pytest.skip(
            f"kubectl's kustomize is older than v5 ({version.strip()!r}): the overlays use `labels` and `replicas`"
        )
    return render_all(kustomization_dirs())


def _docs(renders, directory: Path) -> list[dict]:
    text = renders[directory]
    if isinstance(text, Exception):
        raise text
    return documents(text)


@pytest.fixture(scope="session")
def env_docs(renders) -> dict[str, list[dict]]:
    """The rendered objects of each environment's overlay."""
    return {env: _docs(renders, OVERLAYS / env) for env in ("staging", "production")}


@pytest.fixture(scope="session")
def argocd_docs(renders) -> list[dict]:
    return _docs(renders, REPO / "argocd")


@pytest.fixture(scope="session")
def all_docs(renders) -> list[tuple[Path, dict]]:
    """Every rendered object of every kustomization (failed renders excluded: their own test fails)."""
    out = []
    for directory, text in renders.items():
        if not isinstance(text, Exception):
            out += [(directory, d) for d in documents(text)]
    return out


@pytest.fixture(scope="session")
def ansible_secrets() -> dict[tuple[str, str], set[str]]:
    """(namespace, name) -> keys of the Secrets the Ansible `secrets` role creates."""
    defaults = yaml.safe_load((REPO / "ansible" / "roles" / "secrets" / "defaults" / "main.yml").read_text())
    return {(s["namespace"], s["name"]): set(s["data"]) for s in defaults["secrets_kubernetes"]}


def _go_template(text: str, element: dict) -> str:
    """The little Go-template the ApplicationSet uses ({{ .x }}, {{- if .x }} ... {{- end }}), via Jinja2."""
    text = re.sub(r"\{\{(-?)\s*if\s+\.(\w+)\s*\}\}", r"{%\1 if \2 %}", text)
    text = re.sub(r"\{\{(-?)\s*end\s*\}\}", r"{%\1 endif %}", text)
    text = re.sub(r"\{\{(-?)\s*\.(\w+)\s*\}\}", r"{{\1 \2 }}", text)
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, finalize=lambda v: json.dumps(v) if isinstance(v, bool) else v
    )
    return env.from_string(text).render(**element)


def _merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture(scope="session")
def applicationset(argocd_docs) -> dict:
    (appset,) = [d for d in argocd_docs if d["kind"] == "ApplicationSet"]
    return appset


@pytest.fixture(scope="session")
def generated(applicationset) -> dict[str, dict]:
    """The Applications the ApplicationSet generates, as the controller would (list generator)."""
    spec = applicationset["spec"]
    assert spec["goTemplate"] is True
    (generator,) = spec["generators"]
    out = {}
    for element in generator["list"]["elements"]:
        app = yaml.safe_load(_go_template(yaml.safe_dump(spec["template"]), element))
        app = _merge(app, yaml.safe_load(_go_template(spec["templatePatch"], element)))
        out[element["environment"]] = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", **app}
    return out


@pytest.fixture(scope="session")
def applications(argocd_docs, generated) -> list[dict]:
    return [d for d in argocd_docs if d["kind"] == "Application"] + list(generated.values())


@pytest.fixture(scope="session")
def projects(argocd_docs) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in argocd_docs if d["kind"] == "AppProject"}


@pytest.fixture(scope="session")
def ansible_repo() -> dict:
    return yaml.safe_load((REPO / "ansible" / "group_vars" / "all" / "main.yml").read_text())


ARGO_ROLE = REPO / "ansible" / "roles" / "argo"
TERRAFORM_OUTPUT = REPO / "tests" / "infra" / "fixtures" / "terraform_output.json"


def _jinja() -> jinja2.Environment:
    """Jinja2 as Ansible sets it up for templates (trim_blocks), with the Ansible filters and tests used."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True)
    env.filters["realpath"] = os.path.realpath
    env.filters["bool"] = lambda value: str(value).strip().lower() in ("true", "yes", "on", "1")
    env.tests["match"] = lambda value, pattern: re.match(pattern, str(value)) is not None
    return env


def node1_public_ip() -> str:
    """The k3s server's chexops_public_ip in the inventory `chexops infra inventory` writes from the
    recorded terraform output (tests/infra/fixtures)."""
    from chexops.infra.inventory import build_inventory, load_outputs

    inventory = build_inventory(load_outputs(TERRAFORM_OUTPUT))["all"]
    (server,) = inventory["children"]["k3s_server"]["hosts"]
    return inventory["hosts"][server]["chexops_public_ip"]


def resolve_argo_variables(extra: dict) -> dict:
    """The `argo` role's variables as Ansible resolves them for a run from this checkout on node1,
    with `extra` (host variables, group_vars or -e) on top of group_vars/all."""
    defaults = yaml.safe_load((ARGO_ROLE / "defaults" / "main.yml").read_text())
    group_vars = yaml.safe_load((REPO / "ansible" / "group_vars" / "all" / "main.yml").read_text())
    # chexops_repo_url is the operator's required setting (no default in git): the URL of their copy,
    # the same as argocd/source/gitops-source.yaml's (what the children follow).
    source = yaml.safe_load((REPO / "argocd" / "source" / "gitops-source.yaml").read_text())["data"]
    variables = {"chexops_repo_url": source["repoURL"], "role_path": str(ARGO_ROLE), **group_vars, **extra, **defaults}
    env = _jinja()
    # Defaults refer to group_vars ("{{ chexops_repo_url }}") and to each other: each pass renders
    # every variable as written from the previous pass's values, until nothing changes (Ansible
    # resolves lazily; this reaches the same values).
    resolved = variables
    for _ in range(10):
        again = {k: env.from_string(v).render(**resolved) if isinstance(v, str) else v for k, v in variables.items()}
        if again == resolved:
            return resolved
        resolved = again
    raise AssertionError("the argo role's variables do not settle (a cycle?)")


def render_root_application(variables: dict) -> dict:
    """The root Application exactly as the Ansible `argo` role renders it with `variables`."""
    text = (ARGO_ROLE / "templates" / "root-application.yaml.j2").read_text()
    return yaml.safe_load(_jinja().from_string(text).render(**variables))


@pytest.fixture(scope="session")
def argo_variables() -> dict:
    """The `argo` role's variables for a run from this checkout on node1 (its floating IP from the inventory)."""
    return resolve_argo_variables({"chexops_public_ip": node1_public_ip()})


@pytest.fixture(scope="session")
def root_application(argo_variables) -> dict:
    """The root Application exactly as the Ansible `argo` role renders it."""
    return render_root_application(argo_variables)
