"""The push Sensor's filters, replayed on recorded GitHub push payloads (tests/fixtures/github).

Argo Events' data filter (pkg/sensors/dependencies/filter.go, filterData), reproduced faithfully:
the event data is the EventSource's JSON, {"headers": http.Header (lists), "body": payload}, made
by Go's json.Marshal (compact, <>& escaped); each filter's `path` is a gjson path; a `string`
filter passes when any `value`, compiled as a Go regexp, matches `result.String()` anywhere
(regexp.Match, unanchored) — for an array that is its raw JSON text; `bool` compares
strconv.ParseBool(value) with result.Bool(); a missing path fails the filter; `and` needs all.
Python's `re` stands in for Go's RE2 with the differences that matter here handled: RE2 has no
lookaround or backreferences (refused), and `$` means end of text in Go (Python's also matches
before a final newline, so it becomes \\Z).
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from support import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "github"
SENSOR = ROOT / "workflows" / "events" / "sensor.yaml"
STARTS = {"main-training-modified", "main-config-added", "main-config-removed", "main-two-commits-second-trains"}
NOTHING = {
    "main-k8s-promotion",
    "main-docs-mention-training",
    "main-workflows-only",
    "branch-training",
    "branch-named-main-prefix",
    "tag-release",
    "ping",
}


# --- Go's encoding/json and regexp --------------------------------------------------------------


def go_json(value) -> str:
    """json.Marshal's bytes: compact, UTF-8 kept, <, > and & escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def go_regexp(pattern: str) -> re.Pattern:
    if re.search(r"\(\?<?[=!]|\\[1-9]", pattern):
        raise ValueError(f"{pattern!r}: Go's RE2 has no lookaround or backreferences")
    translated, in_class, escaped = [], False, False
    for ch in pattern:
        if escaped:
            translated.append(ch)
            escaped = False
        elif ch == "\\":
            translated.append(ch)
            escaped = True
        elif ch == "[":
            in_class = True
            translated.append(ch)
        elif ch == "]":
            in_class = False
            translated.append(ch)
        elif ch == "$" and not in_class:
            translated.append(r"\Z")
        else:
            translated.append(ch)
    return re.compile("".join(translated))  # raises re.error where Go's regexp.Compile errs (e.g. `**`)


# --- gjson (the path syntax the Sensor uses: keys, #, indices, multipaths) -----------------------

MISSING = object()


def gjson_get(data, path: str):
    if path.startswith("[") and path.endswith("]"):
        parts = [gjson_get(data, p) for p in _split_top(path[1:-1])]
        return [p for p in parts if p is not MISSING]
    return _walk(data, _split_path(path))


def _split_top(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += ch in "[{"
        depth -= ch in "]}"
        current += ch
    return [*parts, current]


def _split_path(path: str) -> list[str]:
    if re.search(r"[*?|@!=<>%]", path):
        raise NotImplementedError(f"gjson path {path!r}: wildcards, queries and modifiers are not emulated")
    return re.split(r"(?<!\\)\.", path)


def _walk(value, keys: list[str]):
    if not keys:
        return value
    key, rest = keys[0].replace("\\.", "."), keys[1:]
    if isinstance(value, list):
        if key == "#":
            if not rest:
                return len(value)
            return [r for r in (_walk(v, rest) for v in value) if r is not MISSING]
        return _walk(value[int(key)], rest) if key.isdigit() and int(key) < len(value) else MISSING
    if isinstance(value, dict) and key in value:
        return _walk(value[key], rest)
    return MISSING


def gjson_string(value) -> str:
    """Result.String(): strings unquoted, true/false, numbers, raw JSON for arrays and objects."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return go_json(value)


def gjson_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.lower() in ("1", "t", "true")
    return bool(value) if isinstance(value, (int, float)) else False


# --- filterData ------------------------------------------------------------------------------


def filter_data(filters: list[dict], operator: str, event: dict) -> bool:
    data = json.loads(go_json(event))
    results = []
    for f in filters:
        value = gjson_get(data, f["path"])
        if value is MISSING or not f.get("value"):
            results.append(False)
            continue
        if f["type"] == "string":
            comparator = f.get("comparator", "=")
            matched = any(bool(go_regexp(v).search(gjson_string(value))) == (comparator != "!=") for v in f["value"])
        elif f["type"] == "bool":
            matched = any(gjson_bool(value) == (v.lower() in ("1", "t", "true")) for v in f["value"])
        else:
            raise NotImplementedError(f"data filter type {f['type']!r}")
        results.append(matched)
    return any(results) if operator == "or" else all(results)


def sensor() -> dict:
    return yaml.safe_load(SENSOR.read_text())


def starts_a_run(event: dict, doc: dict | None = None) -> bool:
    dependency = (doc or sensor())["spec"]["dependencies"][0]
    filters = dependency["filters"]
    assert set(filters) <= {"data", "dataLogicalOperator"}, "only data filters are emulated"
    return filter_data(filters["data"], filters.get("dataLogicalOperator") or "and", event)


def fixture(name: str) -> dict:
    recorded = json.loads((FIXTURES / f"{name}.json").read_text())
    return {"headers": recorded["headers"], "body": recorded["body"]}


def test_the_fixtures_are_all_classified():
    assert {p.stem for p in FIXTURES.glob("*.json")} == STARTS | NOTHING


@pytest.mark.parametrize("name", sorted(STARTS))
def test_pushes_to_main_touching_training_or_configs_start_a_run(name):
    assert starts_a_run(fixture(name)), json.loads((FIXTURES / f"{name}.json").read_text())["note"]


@pytest.mark.parametrize("name", sorted(NOTHING))
def test_other_pushes_start_nothing(name):
    assert not starts_a_run(fixture(name)), json.loads((FIXTURES / f"{name}.json").read_text())["note"]


def test_the_run_gets_the_pushed_commit():
    doc = sensor()
    trigger = doc["spec"]["triggers"][0]["template"]["argoWorkflow"]
    (param,) = trigger["parameters"]
    event = json.loads(go_json(fixture("main-training-modified")))
    commit = gjson_get(event, param["src"]["dataKey"])
    assert commit == event["body"]["head_commit"]["id"] and re.fullmatch(r"[0-9a-f]{40}", commit)
    workflow = trigger["source"]["resource"]
    index = int(param["dest"].rsplit(".", 2)[-2])
    assert param["dest"].startswith("spec.arguments.parameters.")
    assert workflow["spec"]["arguments"]["parameters"][index]["name"] == "commit"
    template = workflow["spec"]["workflowTemplateRef"]["name"]
    pipeline = next(
        d
        for p in (ROOT / "workflows").glob("*.yaml")
        for d in yaml.safe_load_all(p.read_text())
        if d and d["kind"] == "WorkflowTemplate" and d["metadata"]["name"] == template
    )
    assert "commit" in {p["name"] for p in pipeline["spec"]["arguments"]["parameters"]}


def test_a_glob_would_not_work():
    """What the Sensor's comment warns about, shown on the same payloads: `training/**` does not even
    compile in Go, and `training/*` (a regexp: "training" then any slashes) starts a run for docs."""
    with pytest.raises(re.error):
        go_regexp("training/**")
    doc = sensor()
    doc["spec"]["dependencies"][0]["filters"]["data"][-1]["value"] = ["training/*", "configs/*"]
    assert starts_a_run(fixture("main-docs-mention-training"), doc)


def test_an_unanchored_ref_would_start_runs_for_other_branches():
    doc = sensor()
    ref = next(f for f in doc["spec"]["dependencies"][0]["filters"]["data"] if f["path"] == "body.ref")
    ref["value"] = ["refs/heads/main"]
    assert starts_a_run(fixture("branch-named-main-prefix"), doc)


def test_go_end_of_text_differs_from_python():
    assert re.search("^main$", "main\n") and not go_regexp("^main$").search("main\n")


def test_the_webhook_is_hmac_verified_with_a_secret_the_cluster_has():
    source = yaml.safe_load((ROOT / "workflows" / "events" / "eventsource.yaml").read_text())
    (github,) = source["spec"]["github"].values()
    secret = github["webhookSecret"]
    assert github["events"] == ["push"] and github["insecure"] is False
    roles = yaml.safe_load((ROOT / "ansible" / "roles" / "secrets" / "defaults" / "main.yml").read_text())
    made = {(s["name"], s["namespace"]): set(s["data"]) for s in roles["secrets_kubernetes"]}
    assert secret["key"] in made[(secret["name"], source["metadata"]["namespace"])]
    sensor_doc = sensor()
    dependency = sensor_doc["spec"]["dependencies"][0]
    assert (dependency["eventSourceName"], dependency["eventName"]) == (
        source["metadata"]["name"],
        next(iter(source["spec"]["github"])),
    )


def test_every_secret_the_workflows_read_is_made_by_ansible():
    roles = yaml.safe_load((ROOT / "ansible" / "roles" / "secrets" / "defaults" / "main.yml").read_text())
    made = {(s["name"], s["namespace"]): set(s["data"]) for s in roles["secrets_kubernetes"]}
    used = set()
    for path in (ROOT / "workflows").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            text = json.dumps(doc)
            namespace = (doc or {}).get("metadata", {}).get("namespace")
            for name, key in re.findall(r'"secretKeyRef": \{"name": "([^"]+)", "key": "([^"]+)"\}', text):
                used.add((name, namespace, key))
            for name, key in re.findall(r'Secret": \{"name": "([^"]+)", "key": "([^"]+)"\}', text):
                used.add((name, namespace, key))
    used |= s3_credential_files_mounted()
    assert len(used) >= 5
    for name, namespace, key in used:
        assert key in made.get((name, namespace), set()), (
            f"Secret {namespace}/{name} key {key} is not created by ansible/roles/secrets"
        )


def s3_credential_files_mounted() -> set[tuple[str, str, str]]:
    """(Secret, namespace, key) for every template that mounts S3 credentials where `chexops
    s3-credentials` (boto3's credential_process in the image) reads them: the files it needs."""
    from chexops.delivery.s3_credentials import DEFAULT_DIR, FILES

    found = set()
    for path in (ROOT / "workflows").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            namespace = (doc or {}).get("metadata", {}).get("namespace")
            for template in (doc or {}).get("spec", {}).get("templates", []):
                container = template.get("container") or {}
                mounts = {m["name"] for m in container.get("volumeMounts", []) if m["mountPath"] == DEFAULT_DIR}
                for volume in template.get("volumes", []):
                    if volume["name"] in mounts:
                        found |= {(volume["secret"]["secretName"], namespace, key) for key in FILES.values()}
    return found


# The chexops steps that read or write the S3 store (datasets, MLflow run artifacts): the others only
# talk to MLflow's tracking API.
ARTIFACT_STEPS = {"data", "train", "evaluate", "register", "export", "bento"}


def test_steps_that_reach_s3_mount_the_credentials_and_carry_none_in_their_environment():
    """Every step that reads or writes the S3 store (MLflow artifacts, data) mounts the credentials Secret for `chexops
    s3-credentials`;
    no workflow puts S3 credentials in a container's environment."""
    from chexops.delivery.s3_credentials import DEFAULT_DIR

    checked = 0
    for path in (ROOT / "workflows").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            for template in (doc or {}).get("spec", {}).get("templates", []):
                container = template.get("container") or {}
                env = {e["name"] for e in container.get("env", [])}
                assert not any(name.startswith("AWS_") and "KEY" in name for name in env), (
                    path.name,
                    template["name"],
                    env,
                )
                argv = [*container.get("command", []), *container.get("args", [])]
                step = argv[argv.index("chexops") + 1] if "chexops" in argv else None
                if step in ARTIFACT_STEPS:
                    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                    assert DEFAULT_DIR in mounts, (path.name, template["name"])
                    checked += 1
    assert checked >= 5
