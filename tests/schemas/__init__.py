"""Strict JSON schemas of the custom resources the platform deploys, at the deployed versions
(README.md; rebuilt by build.py), and the one validation every test uses."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jsonschema

HERE = Path(__file__).resolve().parent


@functools.cache
def index() -> dict[str, dict]:
    """`apiVersion/kind` -> file (+ definition), repo, path, tag, commit, version."""
    return json.loads((HERE / "index.json").read_text())


def is_custom(doc: dict) -> bool:
    """A custom resource: its API group is neither Kubernetes' core, a k8s.io group nor a dotless built-in."""
    group = doc["apiVersion"].rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


@functools.cache
def _validator(key: str) -> jsonschema.protocols.Validator:
    entry = index()[key]
    schema = json.loads((HERE / entry["file"]).read_text())
    if "definition" in entry:  # one file of many definitions (Argo Events)
        schema = {"$ref": f"#/definitions/{entry['definition']}", "definitions": schema["definitions"]}
    return jsonschema.Draft7Validator(schema)


def errors(doc: dict) -> list[str]:
    """What is wrong with a custom resource against its deployed version's schema ([] when valid)."""
    key = f"{doc.get('apiVersion')}/{doc.get('kind')}"
    if key not in index():
        return [f"no schema for {key} in tests/schemas (add its CRD to build.py's SOURCES)"]
    found = sorted(_validator(key).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in found]


def check(doc: dict, where: str = "") -> None:
    """Raises AssertionError naming the object and its first errors."""
    found = errors(doc)
    name = doc.get("metadata", {}).get("name")
    assert not found, f"{where} {doc.get('kind')}/{name}: " + "; ".join(found[:5])
