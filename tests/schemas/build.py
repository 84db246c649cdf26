"""Rebuilds tests/schemas/ from the upstream repositories at the tags the platform deploys:

    python -m tests.schemas.build --mirror /path/to/mirrors      # from the repository root

`--mirror` holds one bare git directory per repository, named `owner+name/repo` (as `git clone --bare`
would leave it at that path). Each custom resource definition's openAPIV3Schema becomes a strict
JSON schema: an object refuses unknown fields (additionalProperties: false) unless the CRD preserves
them (x-kubernetes-preserve-unknown-fields) or declares a map, as the API server would prune them
and a typo would vanish silently. Argo Events' CRDs preserve the whole spec, so its schemas come
from the JSON schema the same tag generates from the Go types (api/jsonschema/schema.json), made
strict the same way. index.json names source repository, path, tag, commit and version of each."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent

# (repository, tag, version deployed, where it is pinned, CRD files or the generated JSON schema)
SOURCES = [
    (
        "argoproj/argo-workflows",
        "v3.7.0",
        "Argo Workflows 3.7.0 (argo-helm chart argo-workflows 0.45.21, ansible/roles/argo)",
        [f"manifests/base/crds/full/argoproj.io_{n}.yaml" for n in ("workflowtemplates", "cronworkflows")],
    ),
    (
        "argoproj/argo-cd",
        "v3.1.5",
        "Argo CD 3.1.5 (argo-helm chart argo-cd 8.5.0, ansible/roles/argo)",
        [f"manifests/crds/{n}-crd.yaml" for n in ("application", "applicationset", "appproject")],
    ),
    (
        "argoproj/argo-rollouts",
        "v1.8.3",
        "Argo Rollouts 1.8.3 (argo-helm chart argo-rollouts 2.40.4, argocd/platform/argo-rollouts.yaml)",
        [
            f"manifests/crds/{n}-crd.yaml"
            for n in ("rollout", "analysis-template", "cluster-analysis-template", "analysis-run")
        ],
    ),
    (
        "argoproj/argo-events",
        "v1.9.7",
        "Argo Events 1.9.7 (argo-helm chart argo-events 2.4.16, argocd/platform/argo-events.yaml)",
        ["api/jsonschema/schema.json"],
    ),
    (
        "traefik/traefik-helm-chart",
        "v34.2.0",
        "Traefik chart 34.2.0 (k3s v1.33.4+k3s1 bundles traefik-34.2.1+up34.2.0, Traefik v3.3)",
        [
            f"traefik/crds/traefik.io_{n}.yaml"
            for n in ("ingressroutes", "traefikservices", "middlewares", "serverstransports", "tlsoptions")
        ],
    ),
    (
        "cert-manager/cert-manager",
        "v1.21.1",
        "cert-manager 1.21.1 (jetstack chart cert-manager v1.21.1, argocd/platform/cert-manager.yaml)",
        [f"deploy/crds/cert-manager.io_{n}.yaml" for n in ("certificates", "issuers", "clusterissuers")],
    ),
]
EVENTS_KINDS = {"EventBus", "EventSource", "Sensor"}


def strict(node, root: bool = True):
    """The CRD's structural schema as draft-7 JSON schema, refusing fields it would prune."""
    if isinstance(node, list):
        return [strict(n, False) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v, False) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}], **out}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    is_object = node.get("type") == "object" or "properties" in node
    preserves = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-embedded-resource")
    if is_object and not preserves and "additionalProperties" not in node and "properties" in node:
        out["additionalProperties"] = False
    if "properties" in out:  # a property's own name is never a keyword: convert its schema only
        out["properties"] = {k: strict(v, False) for k, v in node["properties"].items()}
    return out


def reachable(definitions: dict, roots) -> set[str]:
    """The definitions the roots refer to, directly or not (the file also holds unrelated ones)."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += re.findall(r'"#/definitions/([^"]+)"', json.dumps(definitions[name]))
    return seen


def git_show(mirror: Path, repo: str, tag: str, path: str) -> str:
    git_dir = mirror / repo.replace("/", "+") / "repo"
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", "show", f"{tag}:{path}"], capture_output=True, text=True, check=True
    ).stdout


def commit_of(mirror: Path, repo: str, tag: str) -> str:
    git_dir = mirror / repo.replace("/", "+") / "repo"
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", "rev-parse", f"{tag}^{{commit}}"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _dump(path: Path, schema: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")


def build(mirror: Path) -> dict:
    index = {}
    for repo, tag, version, paths in SOURCES:
        commit = commit_of(mirror, repo, tag)
        folder = f"{repo.split('/')[1]}-{tag}"
        for path in paths:
            text = git_show(mirror, repo, tag, path)
            meta = {"repo": repo, "path": path, "tag": tag, "commit": commit, "version": version}
            if path.endswith(".json"):  # Argo Events: one file of definitions
                definitions = json.loads(text)["definitions"]
                kinds = {f"io.argoproj.events.v1alpha1.{kind}": kind for kind in EVENTS_KINDS}
                target = f"{folder}/schema.json"
                used = reachable(definitions, kinds)
                _dump(HERE / target, {"definitions": {n: strict(definitions[n]) for n in sorted(used)}})
                for name, kind in kinds.items():
                    index[f"argoproj.io/v1alpha1/{kind}"] = {**meta, "file": target, "definition": name}
                continue
            crd = yaml.safe_load(text)
            spec = crd["spec"]
            for served in spec["versions"]:
                if not served.get("served", True):
                    continue
                schema = strict(served["schema"]["openAPIV3Schema"])
                api_version = f"{spec['group']}/{served['name']}"
                schema["properties"]["apiVersion"] = {"const": api_version}
                schema["properties"]["kind"] = {"const": spec["names"]["kind"]}
                schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
                target = f"{folder}/{spec['names']['singular']}-{served['name']}.json"
                _dump(HERE / target, schema)
                index[f"{api_version}/{spec['names']['kind']}"] = {**meta, "file": target}
    (HERE / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", type=Path, required=True, help="folder of bare git dirs owner+name/repo")
    args = parser.parse_args(argv)
    index = build(args.mirror)
    print(f"wrote {len(index)} schemas under {HERE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
