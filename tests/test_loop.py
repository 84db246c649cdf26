"""The loop experiment, small: a model that cannot see one finding (its training labels never
report Pleural Effusion), clinicians' feedback from the ground truth through the real feedback store and
`chexops feedback export`, a retraining with the export as a `data.sources` entry, and the improvement
measured by `chexops evaluate` on the feedback hold-out (`chexops.loop.experiment`, which
runs the same experiment larger, with several seeds and a control retrained without the feedback:
docs/benchmarks.md, "The loop experiment")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chexops.data.chexpert import source_policy_path
from chexops.loop.experiment import MAX_DROP, MAX_MEAN_DROP, MIN_GAIN, MIN_POSITIVES, Setup, loop_failures, run_loop

pytestmark = pytest.mark.slow

# Seeds 0-3 of this setup all close the loop (the finding +0.27..+0.69 on the hold-out, the worst other judged
# finding -0.08): the assertions below are not one lucky seed (docs/benchmarks.md, "The loop experiment").
SETUP = Setup(
    patients=300,
    test_patients=120,
    clinic_patients=250,
    image_size=32,
    size=32,
    epochs=6,
    weight=4.0,
    holdout_fraction=0.3,
    error_rate=0.05,
    bootstrap=200,
    seed=0,
)


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    work = tmp_path_factory.mktemp("loop")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHEXOPS_HOME", str(work / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return work, run_loop(work / "run", SETUP)


def test_feedback_corrects_the_finding_the_model_could_not_learn(loop):
    """The corrupted finding's AUROC on the feedback hold-out rises by MIN_GAIN with a paired 95% interval
    above 0 (there and on the standard test split); no other finding with enough positives to be measured
    loses more than MAX_DROP, nor their mean more than MAX_MEAN_DROP (bounds from retraining alone: the
    benchmark's control, in docs/benchmarks.md). With the source left out the finding does not move
    (the control: change -0.19..+0.16), so this fails."""
    _, result = loop
    finding = SETUP.finding
    hold, test = result["holdout"][finding], result["test"][finding]
    assert hold["positives"] >= 10 and hold["change"] >= MIN_GAIN and hold["change_ci"][0] > 0, hold
    assert test["change_ci"][0] > 0, test
    for split in ("holdout", "test"):
        judged = [
            label for label, v in result[split].items() if label != finding and v and v["positives"] >= MIN_POSITIVES
        ]
        assert len(judged) >= 3, (split, judged)  # the no-regression check judges something
        for label in judged:
            assert result[split][label]["change"] >= -MAX_DROP, (split, label, result[split][label])
        assert np.mean([result[split][label]["change"] for label in judged]) >= -MAX_MEAN_DROP, split
    assert loop_failures(result, finding) == []


def test_the_feedback_is_an_export_of_the_store_and_its_newest_rows_are_held_out(loop):
    """The source is `chexops feedback export`'s dataset (its layout, its blank-is-unknown policy), built
    from the clinicians' answers; the base never saw a positive of the finding; the evaluation records
    of both models hold the feedback hold-out, with the numbers the experiment compares."""
    work, result = loop
    data = work / "run" / "data" / "CheXpert-v1.0-small"
    assert set(pd.read_csv(data / "train_corrupted.csv", dtype=str, keep_default_na=False)[SETUP.finding]) <= {
        "0.0",
        "",
    }
    export = work / "run" / "feedback-export" / "CheXpert-v1.0-small"
    rows = pd.read_csv(export / "train.csv", dtype=str, keep_default_na=False)
    clinic = pd.read_csv(data / "clinic.csv", dtype=str, keep_default_na=False)
    assert len(rows) == len(clinic) == result["feedback"]["rows"] and result["feedback"]["skipped"]["no_image"] == 0
    assert rows["Path"].str.match(r"CheXpert-v1.0-small/feedback/patient\d{5}/study1/view1_frontal\.(png|jpg)").all()
    assert (rows["Sex"] == "").all() and "blank: ignore" in source_policy_path(export / "train.csv").read_text()
    agree = (rows[SETUP.finding].to_numpy() == clinic[SETUP.finding].to_numpy()).mean()
    assert 0.85 <= agree < 1.0  # the clinicians read the truth, wrong at error_rate 0.05
    assert result["feedback"]["holdout_rows"] == round(len(rows) * SETUP.holdout_fraction)

    for name in ("base", "candidate"):
        held = result["evaluations"][name]["holdout"]
        assert held["n"] == result["feedback"]["holdout_rows"]
        measured = held["per_label"][SETUP.finding]
        assert measured["auroc"] == pytest.approx(result["holdout"][SETUP.finding][name], abs=1e-5)
        assert measured["positives"] == result["holdout"][SETUP.finding]["positives"]
