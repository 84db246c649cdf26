"""Pure parts of the promotion: image references, round-trip edits of an overlay, the freight record, the
Argo condition subset the canary-analysis test evaluates. (The flow itself, on a real git
repository and MLflow server, is in test_delivery.py.)"""

from __future__ import annotations

import math

import pytest

from chexops.core.errors import UserInputError
from chexops.delivery import gitops
from chexops.pipelines.argo_expr import UnsupportedExpression, evaluate_analysis
from chexops.registry import evidence


def test_image_needs_tag_and_digest():
    digest = "sha256:" + "c" * 64
    image = gitops.Image.parse(f"registry.example:5000/chexops-cxr:v7@{digest}")
    assert (image.repo, image.tag, image.digest) == ("registry.example:5000/chexops-cxr", "v7", digest)
    for bad in ("chexops-cxr:v7", f"chexops-cxr@{digest}", "chexops-cxr:latest@sha256:abc"):
        with pytest.raises(UserInputError):
            gitops.Image.parse(bad)


def test_overlay_edit_keeps_comments_and_adds_missing_blocks(tmp_path):
    """A canary promotion edits production's overlay (its Rollout runs the canary): image, version, freight."""
    path = tmp_path / gitops.OVERLAYS / "production" / "kustomization.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("# production overlay\nnamespace: production  # the Rollout's\n")
    overlay = gitops.Overlay(tmp_path, "canary")
    assert overlay.path == path
    overlay.set_image(gitops.Image.parse("r/chexops-cxr:v3@sha256:" + "d" * 64), "3")
    overlay.set_freight('{"commit":"' + "a" * 40 + '"}')
    overlay.save()
    text = path.read_text()
    assert "# production overlay" in text and "# the Rollout's" in text
    again = gitops.Overlay(tmp_path, "production")
    assert (again.version, again.image) == ("3", "r/chexops-cxr:v3@sha256:" + "d" * 64)
    assert again.freight == '{"commit":"' + "a" * 40 + '"}'
    assert 'newTag: "v3"' in text and 'chexops.io/model-version: "3"' in text


def test_freight_adds_facts_and_never_changes_one():
    from chexops.core.errors import ConfigError
    from chexops.core.freight import Freight, FreightMismatch

    base = Freight(commit="a" * 40, training_image="r/t:1@sha256:" + "b" * 64)
    more = base.add(data_version="d1", model_version="4")
    assert more.facts() == {**base.facts(), "data_version": "d1", "model_version": "4"}
    assert base.add(data_version=None).facts() == base.facts()  # nothing new: nothing added
    with pytest.raises(FreightMismatch, match="data_version is d1 in the freight, the step found d2"):
        more.add(data_version="d2")
    with pytest.raises(FreightMismatch, match="model_version"):
        base.add(model_version="four")
    assert Freight.from_trailers(more.trailers()) == more
    assert more.trailers()["Chexops-Freight-Training-Image"] == "r/t:1@sha256:" + "b" * 64
    assert more.tags()["freight.commit"] == "a" * 40 and Freight.parse(more.tags()["freight"]) == more
    with pytest.raises(ConfigError, match="CHEXOPS_FREIGHT is not a valid freight record: commit"):
        Freight.parse('{"commit": "main"}')


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
