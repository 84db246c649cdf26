"""The waits for what was promoted (`chexops wait-synced`, `chexops wait-rollout`), against an HTTP server
answering the Kubernetes API paths with objects shaped as Argo CD and Argo Rollouts write them: synced to
another revision, progressing, degraded, a failed sync, synced and healthy; a canary progressing, paused on
an Inconclusive analysis, aborted, promoted. Each scenario is a sequence of answers, one per poll."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chexops.delivery.kube import Kube, KubeError
from chexops.delivery.wait import wait_rollout, wait_synced
from support import chexops

COMMIT, OLD = "c" * 40, "a" * 40
APP = "/apis/argoproj.io/v1alpha1/namespaces/argocd/applications/chexops-staging"
ROLLOUT = "/apis/argoproj.io/v1alpha1/namespaces/production/rollouts/chexops"
RUNS = "/apis/argoproj.io/v1alpha1/namespaces/production/analysisruns"


class FakeClock:
    """Time that moves one `interval` per poll (the waits sleep through `time.sleep`, patched)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api(monkeypatch):
    """An API server: `api.answers[path]` is the list of bodies (or status codes) served in turn (the last
    repeats); `api.kube` reads it; time advances 5 s per poll."""
    answers: dict[str, list] = {}
    seen: list[str] = []
    clock = FakeClock()
    monkeypatch.setattr("chexops.delivery.wait.time.sleep", lambda s: setattr(clock, "now", clock.now + s))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.path)
            path = self.path.split("?")[0]
            queue = answers.get(path, [404])
            body = queue.pop(0) if len(queue) > 1 else queue[0]
            code, payload = (body, {"kind": "Status", "code": body}) if isinstance(body, int) else (200, body)
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    class Api:
        pass

    handle = Api()
    handle.answers, handle.seen, handle.clock, handle.url, handle.kube = answers, seen, clock, url, Kube(url)
    yield handle
    server.shutdown()


def application(revision: str, sync: str, health: str, operation: dict | None = None) -> dict:
    """An Application as `kubectl get application -o json` shows it (the fields the wait reads, and others)."""
    status = {
        "sync": {
            "status": sync,
            "revision": revision,
            "comparedTo": {"source": {"path": "k8s/chexops/overlays/staging"}},
        },
        "health": {"status": health},
        "reconciledAt": "2026-12-03T12:00:00Z",
        "resources": [{"kind": "Rollout", "name": "chexops", "status": sync}],
    }
    if operation:
        status["operationState"] = operation
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "metadata": {"name": "chexops-staging"},
            "status": status}  # fmt: skip


def test_the_sync_wait_waits_through_another_revision_and_progressing_until_synced_and_healthy(api):
    api.answers[APP] = [
        application(OLD, "Synced", "Healthy"),  # the commit before the promotion
        application(OLD, "OutOfSync", "Healthy"),  # Argo CD saw the new commit
        application(COMMIT, "Synced", "Progressing"),  # applied, pods starting
        application(COMMIT, "Synced", "Healthy"),
    ]
    result = wait_synced(api.kube, "chexops-staging", COMMIT, timeout=600, interval=5, clock=api.clock)
    assert result.synced and result.seen_revision == COMMIT and result.health == "Healthy"
    assert result.seconds == 15.0 and len(api.seen) == 4


def test_the_sync_wait_fails_at_its_timeout_naming_what_it_saw(api):
    api.answers[APP] = [application(COMMIT, "Synced", "Degraded")]
    result = wait_synced(api.kube, "chexops-staging", COMMIT, timeout=30, interval=5, clock=api.clock)
    assert not result.synced and result.health == "Degraded"
    assert "not synced to cccccccccccc within 30 s: sync Synced at cccccccccccc, health Degraded" in result.message
    # Synced to another revision at the timeout: both revisions named.
    api.answers[APP] = [application(OLD, "Synced", "Healthy")]
    api.clock.now = 0
    result = wait_synced(api.kube, "chexops-staging", COMMIT, timeout=10, interval=5, clock=api.clock)
    assert (
        not result.synced and "at aaaaaaaaaaaa" in result.message and "promotion commit cccccccccccc" in result.message
    )


def test_a_failed_sync_of_the_promotion_commit_fails_at_once(api):
    failed = {"phase": "Failed", "message": "one or more objects failed to apply", "syncResult": {"revision": COMMIT}}
    api.answers[APP] = [application(OLD, "OutOfSync", "Healthy", failed)]
    result = wait_synced(api.kube, "chexops-staging", COMMIT, timeout=600, interval=5, clock=api.clock)
    assert not result.synced and result.operation == "Failed" and "failed to apply" in result.message
    assert result.seconds == 0.0  # not after the timeout: at the first answer


def test_production_needs_only_the_sync_and_a_missing_application_is_named(api):
    api.answers[APP] = [application(COMMIT, "Synced", "Suspended")]  # a paused Rollout reads Suspended
    assert wait_synced(api.kube, "chexops-staging", COMMIT, health="any", timeout=60, clock=api.clock).synced
    api.answers[APP] = [404]
    result = wait_synced(api.kube, "chexops-staging", COMMIT, timeout=10, interval=5, clock=api.clock)
    assert not result.synced and "the Application does not exist" in result.message


def test_a_forbidden_read_says_which_rbac_is_missing(api):
    api.answers[APP] = [403]
    with pytest.raises(KubeError, match="HTTP 403 .*workflows/rbac.yaml"):
        wait_synced(api.kube, "chexops-staging", COMMIT, timeout=10, clock=api.clock)


def test_the_cli_exits_3_when_not_synced_and_0_when_synced(api):
    api.answers[APP] = [application(OLD, "Synced", "Healthy")]
    code, out, err = chexops(
        "wait-synced", "--application", "chexops-staging", "--revision", COMMIT, "--timeout", "0", "--api", api.url,
        "--json",
    )  # fmt: skip
    assert code == 3 and json.loads(out)["seen_revision"] == OLD and "aaaaaaaaaaaa" in err
    api.answers[APP] = [application(COMMIT, "Synced", "Healthy")]
    code, out, _ = chexops(
        "wait-synced", "--application", "chexops-staging", "--revision", COMMIT, "--api", api.url, "--json"
    )
    assert code == 0 and json.loads(out)["synced"] is True


# --- the Rollout --------------------------------------------------------------------------------------


def rollout(version: str, phase: str, *, stable="6d8f", current="7c9e", generation=3, **status) -> dict:
    """production's Rollout as the controller reports it (observedGeneration is a string there)."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "chexops", "namespace": "production", "generation": generation},
        "spec": {"template": {"metadata": {"labels": {"chexops.io/model-version": version}}}},
        "status": {"phase": phase, "stableRS": stable, "currentPodHash": current,
                   "observedGeneration": str(generation), "message": status.pop("message", ""), **status},
    }  # fmt: skip


def runs(*phases: str) -> dict:
    return {
        "items": [{"metadata": {"name": f"chexops-7c9e-3-{i}"}, "status": {"phase": p}} for i, p in enumerate(phases)]
    }


def test_the_canary_is_waited_on_until_promoted_with_its_analyses(api):
    api.answers[ROLLOUT] = [
        rollout("2", "Healthy", current="6d8f"),  # Argo CD has not synced the promotion yet: version 2 unseen
        rollout("3", "Progressing", generation=4, current="7c9e"),  # not observed yet (generation 3 < 4)
        rollout("3", "Progressing", message="more replicas need to be updated"),
        rollout("3", "Healthy", stable="7c9e"),
    ]
    api.answers[RUNS] = [runs("Successful", "Successful")]
    result = wait_rollout(api.kube, "chexops", "3", timeout=3600, interval=10, clock=api.clock)
    assert result.outcome == "promoted" and result.analysis_phase == "Successful"
    assert result.analysis_run_names == "chexops-7c9e-3-0,chexops-7c9e-3-1"
    assert any("labelSelector=rollouts-pod-template-hash%3D7c9e" in p for p in api.seen)


def test_an_aborted_canary_is_aborted_and_the_cli_exits_3(api):
    api.answers[ROLLOUT] = [rollout("3", "Degraded", abort=True, message="RolloutAborted: metric error-ratio failed")]
    api.answers[RUNS] = [runs("Successful", "Failed")]
    result = wait_rollout(api.kube, "chexops", "3", clock=api.clock)
    assert result.outcome == "aborted" and result.analysis_phase == "Failed" and "error-ratio" in result.message
    code, out, err = chexops("wait-rollout", "--version", "3", "--api", api.url, "--json")
    assert code == 3 and json.loads(out)["outcome"] == "aborted" and "chexops-7c9e-3-1 Failed" in err


def test_an_inconclusive_canary_waits_for_a_person_and_is_never_promoted_by_the_wait(api):
    paused = rollout("3", "Paused", pauseConditions=[{"reason": "InconclusiveAnalysis", "startTime": "t"}])
    # A person promotes it after a while: the wait then sees it promoted.
    api.answers[ROLLOUT] = [paused, paused, paused, rollout("3", "Healthy", stable="7c9e")]
    api.answers[RUNS] = [runs("Inconclusive")]
    result = wait_rollout(api.kube, "chexops", "3", timeout=5, decision_timeout=3600, interval=10, clock=api.clock)
    assert result.outcome == "promoted"  # the canary's own timeout does not apply while a person is asked
    # Nobody decides: undecided (the CLI exits 0 and the pipeline neither promotes nor rolls back).
    api.answers[ROLLOUT] = [paused]
    api.clock.now = 0
    result = wait_rollout(api.kube, "chexops", "3", decision_timeout=60, interval=10, clock=api.clock)
    assert result.outcome == "undecided" and "nobody decided within 60 s" in result.message
    assert result.analysis_phase == "Inconclusive"
    code, out, _ = chexops("wait-rollout", "--version", "3", "--decision-timeout", "0", "--api", api.url, "--json")
    assert code == 0 and json.loads(out)["outcome"] == "undecided"


def test_a_canary_that_never_finishes_times_out(api):
    api.answers[ROLLOUT] = [rollout("3", "Progressing")]
    api.answers[RUNS] = [runs("Running")]
    result = wait_rollout(api.kube, "chexops", "3", timeout=60, interval=10, clock=api.clock)
    assert result.outcome == "timeout" and "version 3 not promoted within 60 s" in result.message


# --- the served version --------------------------------------------------------------------------------


def model(version: str) -> dict:
    return {"name": "chexops-cxr", "version": version, "freight": {"commit": COMMIT, "model_version": version}}


def test_verify_serving_needs_consecutive_answers_and_holds_them(api, monkeypatch):
    from chexops.delivery.verify import verify_serving

    monkeypatch.setattr("chexops.delivery.verify.time.sleep", lambda s: setattr(api.clock, "now", api.clock.now + s))
    # Behind a Service: an old pod still answers now and then; N counts only once it answers 3 times in a row.
    api.answers["/model"] = [model("2"), model("3"), model("2"), model("3"), model("3"), model("3")]
    ok = verify_serving(api.url, "3", consecutive=3, timeout=60, clock=api.clock)
    assert ok.verified and ok.seen == {"2": 2, "3": 4} and ok.freight == {"commit": COMMIT, "model_version": "3"}
    # Holding production: another version after N was verified fails at once, naming both.
    api.answers["/model"] = [model("3"), model("3"), model("2")]
    api.clock.now = 0
    held = verify_serving(api.url, "3", consecutive=2, hold=30, timeout=60, clock=api.clock)
    assert not held.verified and "after verifying version 3, an answer came from 2" in held.message
    # ... and so do repeated errors while holding (a crashing pod).
    api.answers["/model"] = [model("3"), 503, 503, 503]
    api.clock.now = 0
    crashed = verify_serving(api.url, "3", consecutive=1, hold=30, max_errors=3, timeout=60, clock=api.clock)
    assert not crashed.verified and "3 failed answers in a row" in crashed.message and crashed.errors == 3
    api.answers["/model"] = [model("3")]
    api.clock.now = 0
    assert verify_serving(api.url, "3", consecutive=1, hold=20, clock=api.clock).held_s >= 20
