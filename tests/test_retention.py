"""The retention policy of the kept images (`chexops feedback prune`): an image without feedback goes 30 days
after its prediction; one with feedback 30 days after an export first wrote it, or 365 days after the prediction
if no export ever did; every record stays; --dry-run deletes nothing. And images of an older schema (database
blobs) are moved into the image store, none lost."""

from __future__ import annotations

import json
import sqlite3

import sqlalchemy as sa

from chexops.feedback.export import export_feedback
from chexops.feedback.store import SCHEMA_VERSION, FeedbackStore, _ago, feedback, predictions
from support import run_cli

FINDINGS = [{"label": "Edema", "probability": 0.7, "threshold": 0.5, "positive": True}]
IMAGE = b"\x89PNG" + b"\0" * 1000


def _store_with_ages(path) -> FeedbackStore:
    store = FeedbackStore(f"sqlite:///{path}")
    ages = {
        "new-none": 1,
        "old-none": 40,
        "old-feedback": 40,  # never exported, well within a year: kept
        "ancient-feedback": 400,  # never exported, over a year: the cap
        "exported-long-ago": 40,
        "exported-now": 40,
        "unlabelled-feedback": 40,  # 'incorrect' without labels: the export skips it, so it is never exported
    }
    for request_id, days in ages.items():
        store.add_prediction(request_id, "clinic", "m", "1", FINDINGS, "urgent", {"format": "png"})
        store.set_image(request_id, IMAGE)
        if "feedback" in request_id or "exported" in request_id:
            labels = None if request_id.startswith("unlabelled") else {"Edema": 0}
            store.add_feedback(request_id, False, labels, None)
        with store.engine.begin() as conn:
            conn.execute(predictions.update().where(predictions.c.request_id == request_id).values(created=_ago(days)))
    return store


def test_prune_follows_the_policy_and_keeps_every_record(tmp_path):
    db = tmp_path / "feedback.db"
    store = _store_with_ages(db)
    try:
        summary = export_feedback(store, tmp_path / "export")  # every labelled feedback, once
        assert summary.rows == 4
        long_ago = _ago(31)
        with store.engine.begin() as conn:
            stamps = dict(conn.execute(sa.select(feedback.c.request_id, feedback.c.exported_at)).all())
            conn.execute(
                feedback.update().where(feedback.c.request_id == "exported-long-ago").values(exported_at=long_ago)
            )
            conn.execute(  # as if their feedback came after the last export
                feedback.update()
                .where(feedback.c.request_id.in_(["old-feedback", "ancient-feedback"]))
                .values(exported_at=None)
            )
        assert stamps["unlabelled-feedback"] is None and all(v for k, v in stamps.items() if k != "unlabelled-feedback")
        export_feedback(store, tmp_path / "again")  # a second export keeps the first stamp
        with store.engine.begin() as conn:
            again = dict(conn.execute(sa.select(feedback.c.request_id, feedback.c.exported_at)).all())
            assert again["exported-long-ago"] == long_ago and again["old-feedback"] is not None
            conn.execute(
                feedback.update()
                .where(feedback.c.request_id.in_(["old-feedback", "ancient-feedback"]))
                .values(exported_at=None)
            )

        dry = run_cli("feedback", "prune", "--store", f"sqlite:///{db}", "--dry-run", "--json", home=tmp_path)
        assert dry.returncode == 0, dry.stderr[-2000:]
        assert json.loads(dry.stdout) == {
            "images": 3,
            "bytes": 3 * len(IMAGE),
            "dry_run": True,
            "unlabelled_days": 30.0,
            "exported_days": 30.0,
            "labelled_days": 365.0,
            "moved": 0,
            "image_store": str(tmp_path / "images"),
        }
        assert len(list((tmp_path / "images").rglob("*.png"))) == 7  # nothing deleted
        done = run_cli("feedback", "prune", "--store", f"sqlite:///{db}", home=tmp_path)
        assert done.returncode == 0 and "Deleted 3 image(s)" in done.stderr + done.stdout, done.stderr[-2000:]
        kept = {r: store.prediction(r)["has_image"] for r in ("new-none", "old-none", "old-feedback",
                "ancient-feedback", "exported-long-ago", "exported-now", "unlabelled-feedback")}  # fmt: skip
        assert kept == {
            "new-none": True,
            "old-none": False,
            "old-feedback": True,
            "ancient-feedback": False,
            "exported-long-ago": False,
            "exported-now": True,
            "unlabelled-feedback": True,
        }
        files = sorted(p.stem for p in (tmp_path / "images").rglob("*.png"))
        assert files == sorted(r for r, has in kept.items() if has)  # the objects themselves are gone
        with store.engine.connect() as conn:  # the records, the feedback with them, are all kept
            assert conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar() == 7
            assert conn.execute(sa.text("SELECT count(*) FROM feedback")).scalar() == 5
            pruned = conn.execute(sa.text("SELECT count(*) FROM predictions WHERE image_pruned_at IS NOT NULL"))
            assert pruned.scalar() == 3
        assert store.prune_images(30, 30, 365) == {"images": 0, "bytes": 0}  # nothing more is due
    finally:
        store.close()


# The store's schema 3 (images as blobs in `predictions.image_png`), as deployed stores have it.
SCHEMA_3 = """
CREATE TABLE predictions (request_id VARCHAR(64) PRIMARY KEY, created TEXT NOT NULL, clinic TEXT NOT NULL,
    model_name TEXT NOT NULL, model_version TEXT NOT NULL, findings TEXT NOT NULL, priority TEXT NOT NULL,
    image_info TEXT NOT NULL, image_png BLOB);
CREATE TABLE feedback (request_id VARCHAR(64) PRIMARY KEY REFERENCES predictions(request_id),
    correct INTEGER NOT NULL, labels TEXT, note TEXT, created TEXT NOT NULL, clinic TEXT,
    unusable INTEGER NOT NULL DEFAULT 0);
CREATE TABLE chexops_schema (version INTEGER NOT NULL);
INSERT INTO chexops_schema VALUES (3);
"""


def test_blobs_of_schema_3_move_into_the_image_store_and_none_is_lost(tmp_path):
    db = tmp_path / "feedback.db"
    images = {f"old-{i}": b"\x89PNG" + bytes([i]) * 500 for i in range(3)}
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA_3)
        for request_id, blob in images.items():
            conn.execute(
                "INSERT INTO predictions VALUES (?, ?, 'north', 'm', '1', ?, 'urgent', '{}', ?)",
                (request_id, _ago(1), json.dumps(FINDINGS), blob),
            )
            conn.execute(
                "INSERT INTO feedback VALUES (?, 0, ?, NULL, ?, 'north', 0)", (request_id, '{"Edema": 0}', _ago(1))
            )
    conn.close()
    store = FeedbackStore(f"sqlite:///{db}")
    try:
        assert store.schema_version() == SCHEMA_VERSION == 4
        assert {r["request_id"]: r["image_png"] for r in store.export_rows()} == images  # readable before the move
        done = run_cli("feedback", "prune", "--store", f"sqlite:///{db}", "--json", home=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)["moved"] == 3 and json.loads(done.stdout)["images"] == 0
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM predictions WHERE image_png IS NOT NULL")).scalar() == 0
        assert {r["request_id"]: r["image_png"] for r in store.export_rows()} == images  # now from the folder
        assert {p.stem: p.read_bytes() for p in (tmp_path / "images").rglob("*.png")} == images
    finally:
        store.close()
