"""The retention policy of the kept images (`chexops feedback prune`): an image without feedback goes after
30 days, one with feedback after 365; every record stays; --dry-run deletes nothing."""

from __future__ import annotations

import json

import sqlalchemy as sa

from chexops.feedback.store import FeedbackStore, _ago, predictions
from support import run_cli

FINDINGS = [{"label": "Edema", "probability": 0.7, "threshold": 0.5, "positive": True}]


def _store_with_ages(path) -> FeedbackStore:
    store = FeedbackStore(f"sqlite:///{path}")
    ages = {"new-none": 1, "old-none": 40, "old-feedback": 40, "ancient-feedback": 400}
    for request_id, days in ages.items():
        store.add_prediction(request_id, "clinic", "m", "1", FINDINGS, "urgent", {"format": "png"})
        store.set_image(request_id, b"\x89PNG" + b"\0" * 1000)
        if "feedback" in request_id:
            store.add_feedback(request_id, False, {"Edema": 0}, None)
        with store.engine.begin() as conn:
            conn.execute(predictions.update().where(predictions.c.request_id == request_id).values(created=_ago(days)))
    return store


def test_prune_deletes_old_images_and_keeps_every_record(tmp_path):
    db = tmp_path / "feedback.db"
    store = _store_with_ages(db)
    try:
        dry = run_cli("feedback", "prune", "--store", f"sqlite:///{db}", "--dry-run", "--json", home=tmp_path)
        assert dry.returncode == 0, dry.stderr[-2000:]
        assert json.loads(dry.stdout) == {
            "images": 2,
            "bytes": 2 * 1004,
            "dry_run": True,
            "unlabelled_days": 30.0,
            "labelled_days": 365.0,
        }
        assert all(store.prediction(r)["has_image"] for r in ("old-none", "ancient-feedback"))
        done = run_cli("feedback", "prune", "--store", f"sqlite:///{db}", home=tmp_path)
        assert done.returncode == 0 and "Deleted 2 image(s)" in done.stderr + done.stdout, done.stderr[-2000:]
        kept = {
            r: store.prediction(r)["has_image"] for r in ("new-none", "old-none", "old-feedback", "ancient-feedback")
        }
        assert kept == {"new-none": True, "old-none": False, "old-feedback": True, "ancient-feedback": False}
        with store.engine.connect() as conn:  # the records, the feedback with them, are all kept
            assert conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar() == 4
            assert conn.execute(sa.text("SELECT count(*) FROM feedback")).scalar() == 2
        assert store.prune_images(30, 365) == {"images": 0, "bytes": 0}  # nothing more is due
    finally:
        store.close()
