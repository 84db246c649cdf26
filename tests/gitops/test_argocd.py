"""Argo CD's side (argocd/ and the Ansible root Application), checked offline: the Applications
the ApplicationSet generates, the repository URL in one place and equal to Ansible's, least-privilege projects,
sync policies and waves."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from schemas import check

from .conftest import ARGO_ROLE
from .render import REPO, documents, render

HELM_VERSION = re.compile(r"^v?\d+\.\d+\.\d+$")  # cert-manager's chart versions start with v
# Paths other helpers own; until their branch is merged here, the check of that path is skipped.
OTHERS = {"k8s/analysis": "promote", "workflows": "pipelines"}


def test_the_schemas_are_strict(generated):
    """An unknown field is refused, so the validation (test_schemas) can fail for a typo."""
    app = copy.deepcopy(generated["staging"])
    check(app)
    app["spec"]["syncPolicy"]["automated"]["selfheal"] = True
    with pytest.raises(AssertionError, match="selfheal"):
        check(app)


def test_root_application_renders_argocd_as_a_kustomization(root_application):
    source = root_application["spec"]["source"]
    assert "directory" not in source, "a directory source would apply kustomization.yaml as a manifest"
    assert (REPO / source["path"] / "kustomization.yaml").is_file()


def test_repository_url_in_one_place_equal_to_ansibles(
    argocd_docs, applications, projects, ansible_repo, root_application
):
    source = yaml.safe_load((REPO / "argocd" / "source" / "gitops-source.yaml").read_text())["data"]
    assert (
        ansible_repo.get("chexops_repo_url", source["repoURL"])
        == source["repoURL"]
        == root_application["spec"]["source"]["repoURL"]
    )
    template = (REPO / "ansible" / "roles" / "argo" / "templates" / "root-application.yaml.j2").read_text()
    assert "repoURL: {{ argo_repo_url }}" in template and "targetRevision: {{ argo_repo_revision }}" in template
    assert (
        source["targetRevision"]
        == ansible_repo["chexops_repo_revision"]
        == root_application["spec"]["source"]["targetRevision"]
    )
    rendered = yaml.safe_dump_all(argocd_docs)
    assert "GITOPS_" not in rendered and "gitops-source" not in rendered
    git_sources = [
        s for app in applications for s in app["spec"].get("sources", [app["spec"].get("source")]) if "chart" not in s
    ]
    assert len(git_sources) >= 7
    for s in git_sources:
        assert (s["repoURL"], s["targetRevision"]) == (source["repoURL"], source["targetRevision"]), s
    for project in projects.values():
        assert source["repoURL"] in project["spec"]["sourceRepos"]
    # The literal URL is written once in argocd/ (source/gitops-source.yaml).
    files = [p for p in (REPO / "argocd").rglob("*.yaml") if source["repoURL"] in p.read_text()]
    assert files == [REPO / "argocd" / "source" / "gitops-source.yaml"], files


def test_repository_url_is_written_once_for_argocd_and_workflows(renders):
    """argocd/ and workflows/ hold the literal URL once (source/gitops-source.yaml); the pipelines
    read it from ConfigMap argo/chexops-gitops, which kustomize fills from that same file."""
    source = yaml.safe_load((REPO / "argocd" / "source" / "gitops-source.yaml").read_text())["data"]
    (gitops,) = [d for d in documents(render(REPO / "workflows")) if d["metadata"]["name"] == "chexops-gitops"]
    assert gitops["kind"] == "ConfigMap" and gitops["metadata"]["namespace"] == "argo"
    assert gitops["data"] == {"repo-url": source["repoURL"], "branch": source["targetRevision"]}
    counts = {}
    for root in ("argocd", "workflows"):
        for path in (REPO / root).rglob("*"):
            if path.is_file() and (n := path.read_text(errors="replace").count(source["repoURL"])):
                counts[str(path.relative_to(REPO))] = n
    others = {p: n for p, n in counts.items() if p != "argocd/source/gitops-source.yaml"}
    assert counts.get("argocd/source/gitops-source.yaml") == 1, counts
    assert not others, f"the repository URL is written outside argocd/source/gitops-source.yaml: {others}"


def test_ansible_checks_its_url_against_the_file_kustomize_copies_from(argo_variables):
    """The argo role compares chexops_repo_url with the file and fields kustomize copies into the children."""
    read = Path(argo_variables["argo_gitops_source_file"])
    kustomization = yaml.safe_load((REPO / "argocd" / "kustomization.yaml").read_text())
    (component,) = kustomization["components"]
    included = yaml.safe_load((REPO / "argocd" / component / "kustomization.yaml").read_text())["resources"]
    assert read in [(REPO / "argocd" / component / r).resolve() for r in included], read
    configmap = yaml.safe_load(read.read_text())
    sources = {
        (r["source"]["kind"], r["source"]["name"], r["source"]["fieldPath"]) for r in kustomization["replacements"]
    }
    assert sources == {
        ("ConfigMap", configmap["metadata"]["name"], f"data.{key}") for key in ("repoURL", "targetRevision")
    }
    validate = yaml.safe_load((ARGO_ROLE / "tasks" / "validate.yml").read_text())
    (check,) = [t for t in validate if "argo_gitops_source" in t.get("vars", {})]
    assert check["vars"]["argo_gitops_source"].startswith(
        "{{ (lookup('ansible.builtin.file', argo_gitops_source_file) | from_yaml)['data']"
    )
    assert {
        "argo_repo_url == argo_gitops_source.repoURL",
        "argo_repo_revision == argo_gitops_source.targetRevision",
    } <= set(check["ansible.builtin.assert"]["that"])


def test_applications_stay_inside_their_projects(applications, projects, root_application):
    for app in applications + [root_application]:
        spec = app["spec"]
        project = projects[spec["project"]]["spec"]
        for s in spec.get("sources", [spec.get("source")]):
            assert s["repoURL"] in project["sourceRepos"], (app["metadata"]["name"], s["repoURL"])
            if "chart" in s:
                assert HELM_VERSION.match(s["targetRevision"]), f"{s['chart']} is not pinned: {s['targetRevision']}"
        allowed = {(d["server"], d["namespace"]) for d in project["destinations"]}
        dest = spec["destination"]
        assert (dest["server"], dest["namespace"]) in allowed, app["metadata"]["name"]
    assert "*" not in yaml.safe_dump(projects), "a wildcard in a project"


CLUSTER_SCOPED = {"Namespace", "PersistentVolume"}  # the kinds the directories render without a namespace


def test_projects_allow_every_kind_their_directories_render(renders, projects, argocd_docs, root_application):
    """A kind missing from a project's whitelist fails the sync in the cluster; here it fails this test."""
    apps = {d["metadata"]["name"]: d for d in argocd_docs if d["kind"] == "Application"}
    targets = [
        (apps[n]["spec"]["project"], apps[n]["spec"]["source"]["path"])
        for n in apps
        if "path" in apps[n]["spec"]["source"]
    ]
    targets += [("chexops", f"k8s/chexops/overlays/{env}") for env in ("staging", "production")]
    targets.append(("default", "argocd"))  # the root Application
    for project, path in targets:
        text = renders.get(REPO / path)
        if text is None:
            continue  # another helper's directory, not in this tree yet
        spec = projects[project]["spec"]
        cluster = {(k["group"], k["kind"]) for k in spec.get("clusterResourceWhitelist", [])}
        namespaced = {(k["group"], k["kind"]) for k in spec["namespaceResourceWhitelist"]}
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            group = doc["apiVersion"].rpartition("/")[0]
            key = (group, doc["kind"])
            assert key in (cluster if doc["kind"] in CLUSTER_SCOPED else namespaced), (
                f"{path}: {key} not allowed in project {project}"
            )


def test_the_root_application_is_confined_to_the_default_project(root_application, projects):
    assert root_application["spec"]["project"] == "default"
    spec = projects["default"]["spec"]
    assert spec["clusterResourceWhitelist"] == [] and len(spec["sourceRepos"]) == 1
    assert {k["kind"] for k in spec["namespaceResourceWhitelist"]} == {"Application", "ApplicationSet", "AppProject"}
    assert "CreateNamespace=true" not in root_application["spec"].get("syncPolicy", {}).get("syncOptions", [])


def test_chexops_project_is_least_privilege(projects):
    spec = projects["chexops"]["spec"]
    assert spec["clusterResourceWhitelist"] == []
    assert len(spec["sourceRepos"]) == 1
    kinds = {k["kind"] for k in spec["namespaceResourceWhitelist"]}
    assert "Secret" not in kinds and "Namespace" not in kinds
    assert {d["namespace"] for d in spec["destinations"]} == {"staging", "production", "argo", "argo-events"}


def test_git_paths_exist(applications):
    pending = []
    for app in applications:
        for s in app["spec"].get("sources", [app["spec"].get("source")]):
            if "path" not in s:
                continue
            path = REPO / s["path"]
            if not path.exists() and s["path"] in OTHERS:
                pending.append(f"{s['path']} (the {OTHERS[s['path']]} helper's)")
                continue
            assert path.is_dir() and any(path.iterdir()), s["path"]
    if pending:
        pytest.skip("not in this tree yet: " + ", ".join(pending))


def test_environments_and_their_sync_policies(generated):
    assert set(generated) == {"staging", "production"}  # the canary runs inside production's Rollout
    for env, app in generated.items():
        assert app["metadata"]["name"] == f"chexops-{env}"
        assert app["spec"]["source"]["path"] == f"k8s/chexops/overlays/{env}"
        assert app["spec"]["destination"]["namespace"] == ("staging" if env == "staging" else "production")
        assert app["spec"]["project"] == "chexops"
    policy = {env: app["spec"]["syncPolicy"] for env, app in generated.items()}
    assert policy["staging"]["automated"] == {"prune": True, "selfHeal": True}
    # Production: drift reverted, nothing deleted from the live clinic without a person.
    assert policy["production"]["automated"] == {"prune": False, "selfHeal": True}
    # The HPA owns the Rollout's replica count, Argo Rollouts the TraefikService's weights.
    for env in ("staging", "production"):
        replicas, weights = generated[env]["spec"]["ignoreDifferences"]
        assert (replicas["kind"], replicas["jsonPointers"]) == ("Rollout", ["/spec/replicas"])
        assert (weights["kind"], weights["jqPathExpressions"]) == (
            "TraefikService",
            [".spec.weighted.services[].weight"],
        )
        assert "RespectIgnoreDifferences=true" in policy[env]["syncOptions"]


# What the argo-cd chart 8.5.0 puts in argocd-cmd-params-cm unless the values say otherwise.
CHART_PARAMS = {"applicationsetcontroller.policy": "sync"}


def effective_applicationset_policy(params: dict, appset: dict) -> str:
    """The policy argocd-applicationset-controller 3.1.5 applies to an ApplicationSet: its --policy
    (the param) unless empty or --enable-policy-override (default: policy is empty) lets the
    ApplicationSet's own spec.syncPolicy.applicationsSync win."""
    policy = str(params.get("applicationsetcontroller.policy", ""))
    override = params.get("applicationsetcontroller.enable.policy.override", policy == "")
    own = appset["spec"].get("syncPolicy", {}).get("applicationsSync")
    if str(override).lower() == "true" and own:
        return own
    return policy or "sync"


def test_applicationset_never_deletes_an_environment(applicationset, argo_variables):
    assert applicationset["spec"]["syncPolicy"] == {
        "applicationsSync": "create-update",
        "preserveResourcesOnDeletion": True,
    }
    (argocd,) = [c for c in argo_variables["argo_charts"] if c["name"] == "argo-cd"]
    params = {**CHART_PARAMS, **argocd["values"]["configs"]["params"]}
    assert effective_applicationset_policy(params, applicationset) == "create-update"
    # The same reading, without the override flag, is the chart's `sync` (the claim would be false).
    params.pop("applicationsetcontroller.enable.policy.override")
    assert effective_applicationset_policy(params, applicationset) == "sync"


def test_every_application_retries_its_sync_with_backoff(applications, root_application):
    for app in [*applications, root_application]:
        retry = app["spec"]["syncPolicy"].get("retry")
        name = app["metadata"]["name"]
        assert retry, f"{name} has no syncPolicy.retry"
        assert retry["limit"] >= 3, name
        backoff = retry["backoff"]
        assert backoff["factor"] >= 2 and re.fullmatch(r"\d+[sm]", backoff["duration"]), name
        assert re.fullmatch(r"\d+m", backoff["maxDuration"]), name
    assert {"chexops-workflows", "chexops-analysis", "chexops-staging"} <= {a["metadata"]["name"] for a in applications}


def test_sync_waves_order_dependencies(argocd_docs):
    wave = {
        ("project " if d["kind"] == "AppProject" else "") + d["metadata"]["name"]: int(
            d["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", 0)
        )
        for d in argocd_docs
    }
    before = [  # (must be applied earlier, than this)
        ("project platform", "namespaces"),
        ("project chexops", "namespaces"),
        ("namespaces", "argo-rollouts"),
        ("namespaces", "postgresql"),
        ("storage", "minio"),
        ("namespaces", "chexops"),
        ("postgresql", "mlflow"),
        ("minio", "mlflow"),
        ("monitoring-config", "prometheus"),
        ("monitoring-config", "grafana"),
        ("prometheus", "grafana"),
        ("argo-rollouts", "chexops-analysis"),
        ("argo-events", "eventbus"),
        ("eventbus", "chexops-workflows"),
        ("postgresql", "chexops"),
        ("registry", "chexops"),
        ("prometheus", "chexops"),
    ]
    for first, then in before:
        assert wave[first] < wave[then], f"{first} (wave {wave[first]}) must come before {then} (wave {wave[then]})"


def _walk(value, key=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, key)
    else:
        yield key, value


# Charts whose data lives elsewhere than the platform volume: MinIO on the datasets volume (k8s/platform/storage).
CHART_CLASSES = {"minio": "chexops-datasets"}


def test_chart_volumes_use_the_platform_storage_class(argocd_docs):
    """Helm values that name a storage class name the platform one (MinIO: the datasets'); every chart that persists
    names one."""
    persisting = {"minio", "prometheus"}
    seen = set()
    for app in argocd_docs:
        values = app.get("spec", {}).get("source", {}).get("helm", {}).get("valuesObject")
        if app["kind"] != "Application" or values is None:
            continue
        classes = [v for k, v in _walk(values) if k in ("storageClass", "storageClassName")]
        want = CHART_CLASSES.get(app["metadata"]["name"], "chexops-platform")
        assert all(c == want for c in classes), (app["metadata"]["name"], classes)
        if classes:
            seen.add(app["metadata"]["name"])
    assert persisting <= seen


# Services the platform's charts make: Application -> (Service name, values path of its port, the
# chart's default port). The plain manifests' Services are read from their renders.
CHART_SERVICES = {
    "mlflow": ("mlflow", ("service", "port"), 80),
    "prometheus": ("prometheus-server", ("server", "service", "servicePort"), 80),
    "minio": ("minio", ("service", "port"), 9000),
    "grafana": ("grafana", ("service", "port"), 80),
}
ENDPOINT = re.compile(r"\b([a-z0-9-]+)\.platform\.svc(?:\.cluster\.local)?:(\d+)")


def test_every_platform_address_in_git_is_served(argocd_docs, all_docs):
    """Each `<service>.platform.svc...:<port>` written anywhere (workflows, analysis, chart values,
    manifests, Ansible) names a Service the platform really has, on that port."""
    served = {
        (d["metadata"]["name"], port["port"])
        for _, d in all_docs
        if d["kind"] == "Service" and d["metadata"].get("namespace") == "platform"
        for port in d["spec"]["ports"]
    }
    apps = {d["metadata"]["name"]: d for d in argocd_docs if d["kind"] == "Application"}
    for app, (service, path, default) in CHART_SERVICES.items():
        values = apps[app]["spec"]["source"]["helm"]["valuesObject"]
        for key in path:
            values = values.get(key, {}) if isinstance(values, dict) else {}
        served.add((service, values if isinstance(values, int) else default))
    used = []
    for root in ("argocd", "k8s", "workflows", "ansible"):
        for path in (REPO / root).rglob("*.y*ml"):
            used += [(path.relative_to(REPO), m.group(1), int(m.group(2))) for m in ENDPOINT.finditer(path.read_text())]
    assert len(used) >= 3
    missing = [f"{path}: {name}:{port}" for path, name, port in used if (name, port) not in served]
    assert not missing, "no such Service/port in namespace platform:\n" + "\n".join(missing)


def test_readme_layout_describes_the_gitops_directories():
    """README's layout table: a row of its own for k8s/ and argocd/, naming what is in them."""
    text = (REPO / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`|]+)` \| (.+) \|$", text, re.M)}
    assert "next issue" not in text
    for directory in ("k8s/", "argocd/"):
        assert directory in rows, sorted(rows)
    for sub in (REPO / "k8s").iterdir():
        if sub.is_dir():
            assert f"`{sub.name}/`" in rows["k8s/"], sub.name
    assert "`source/gitops-source.yaml`" in rows["argocd/"]
