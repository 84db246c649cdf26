"""Pure parts of the promotion: the canary slice from a weight, image references, round-trip edits of an
overlay, the Argo condition subset the canary-analysis test evaluates. (The flow itself, on a real git
repository and MLflow server, is in test_delivery.py.)"""

from __future__ import annotations

import math

import pytest

from chexops.core.errors import UserInputError
from chexops.delivery import gitops
from chexops.pipelines.argo_expr import UnsupportedExpression, evaluate_analysis
from chexops.registry import evidence


@pytest.mark.parametrize(
    ("stable", "weight", "canary"), [(2, 10, 1), (9, 10, 1), (18, 10, 2), (2, 50, 2), (4, 50, 4), (3, 25, 1)]
)
def test_canary_replicas_follow_the_contract(stable, weight, canary):
    assert gitops.canary_replicas(stable, weight) == canary == max(1, round(stable * weight / (100 - weight)))


def test_canary_weight_must_be_a_share():
    with pytest.raises(UserInputError):
        gitops.canary_replicas(2, 100)


def test_image_needs_tag_and_digest():
    digest = "sha256:" + "c" * 64
    image = gitops.Image.parse(f"registry.example:5000/chexops-cxr:v7@{digest}")
    assert (image.repo, image.tag, image.digest) == ("registry.example:5000/chexops-cxr", "v7", digest)
    for bad in ("chexops-cxr:v7", f"chexops-cxr@{digest}", "chexops-cxr:latest@sha256:abc"):
        with pytest.raises(UserInputError):
            gitops.Image.parse(bad)


def test_overlay_edit_keeps_comments_and_adds_missing_blocks(tmp_path):
    path = tmp_path / gitops.OVERLAYS / "canary" / "kustomization.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("# canary overlay\nnamespace: production  # shared with stable\nnameSuffix: -canary\n")
    overlay = gitops.Overlay(tmp_path, "canary")
    overlay.set_image(gitops.Image.parse("r/chexops-cxr:v3@sha256:" + "d" * 64), "3")
    overlay.set_replicas(1)
    overlay.save()
    text = path.read_text()
    assert "# canary overlay" in text and "# shared with stable" in text
    again = gitops.Overlay(tmp_path, "canary")
    assert (again.version, again.replicas(), again.image) == ("3", 1, "r/chexops-cxr:v3@sha256:" + "d" * 64)
    assert 'newTag: "v3"' in text and 'chexops.io/model-version: "3"' in text


def test_gate_evidence_needs_passing_verdicts():
    assert not evidence.gate_evidence({}).ok
    failed = evidence.gate_evidence(
        {"gate": '[{"criterion": "min_mean_auroc", "value": 0.6, "limit": 0.8, "passed": false}]'}
    )
    assert not failed.ok and "min_mean_auroc" in failed.reasons[0]
    assert evidence.gate_evidence(
        {"gate": '[{"criterion": "min_mean_auroc", "value": 0.9, "limit": 0.8, "passed": true}]'}
    ).ok


def test_argo_condition_subset():
    condition = "len(result) > 0 && !isNaN(result[0]) && result[0] <= 0.02"
    assert [evaluate_analysis(condition, r) for r in ([], [math.nan], [0.01], [0.5])] == [False, False, True, False]
    assert evaluate_analysis("result[0] > 1 || len(result) == 2", [0.5, 3.0])
    with pytest.raises(UnsupportedExpression, match="'asInt' is not supported"):
        evaluate_analysis("asInt(result[0]) > 1", [2.0])
