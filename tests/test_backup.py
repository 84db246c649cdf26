"""Backups that restore (`chexops feedback backup` / `restore`): a store with acknowledged feedback and images is
backed up, the database is dropped (PostgreSQL, a real server) or the file deleted (SQLite) and the image folder
lost, it is restored, and every feedback and its image is back; retention keeps the newest backups, and the
images' mirror follows the store's own retention."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from chexops.feedback.images import FolderImages
from chexops.feedback.store import FeedbackStore
from mlflow_fixtures import _pg_binary, postgres_server
from support import run_cli

FINDINGS = [{"label": "Edema", "probability": 0.7, "threshold": 0.5, "positive": True}]


def fill(store: FeedbackStore, n: int = 5) -> dict[str, dict]:
    """n predictions, each with an image and an acknowledged feedback; what was stored, by request_id."""
    kept = {}
    for i in range(n):
        request_id = f"req-{i:04d}"
        store.add_prediction(request_id, "clinic-a", "chexops-cxr", "3", FINDINGS, "urgent", {"format": "png"})
        image = b"\x89PNG" + random.Random(i).randbytes(2000)  # incompressible: a dump without it is smaller
        store.set_image(request_id, image)
        record, created = store.add_feedback(request_id, False, {"Edema": 0}, f"note {i}", "clinic-a")
        assert created
        kept[request_id] = {**record.to_dict(), "image": image}
    return kept


def everything(store: FeedbackStore) -> dict[str, dict]:
    """Every feedback as the store has it now (the same body again answers the stored record), with its image."""
    found = {}
    for row in store.export_rows(images=True):
        record, created = store.add_feedback(
            row["request_id"], row["correct"], row["labels"], f"note {row['request_id'][-1]}", "clinic-a"
        )
        assert not created
        found[row["request_id"]] = {**record.to_dict(), "image": row["image_png"]}
    return found


def test_sqlite_backup_restores_every_feedback_and_image(tmp_path):
    db = tmp_path / "feedback.db"
    store = FeedbackStore(f"sqlite:///{db}")
    kept = fill(store)
    store.close()
    backups = tmp_path / "backups"
    for _ in range(3):  # retention: --keep 2 leaves the newest two
        made = run_cli(
            "feedback",
            "backup",
            "--out",
            str(backups),
            "--keep",
            "2",
            "--store",
            f"sqlite:///{db}",
            "--json",
            home=tmp_path,
        )
        assert made.returncode == 0, made.stderr[-2000:]
    files = sorted(backups.glob("feedback-*.sqlite3"))
    assert len(files) == 2 and json.loads(made.stdout)["file"] == str(files[-1])
    assert len(list((backups / "images").rglob("*.png"))) == 5 and json.loads(made.stdout)["images_copied"] == 0
    for path in db.parent.glob("feedback.db*"):
        path.unlink()  # the disk lost
    shutil.rmtree(tmp_path / "images")
    restored = run_cli("feedback", "restore", str(files[-1]), "--store", f"sqlite:///{db}", "--json", home=tmp_path)
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert json.loads(restored.stdout)["images_copied"] == 5
    store = FeedbackStore(f"sqlite:///{db}")
    try:
        assert everything(store) == kept
        assert store.prune_images(0, 0, 0) == {"images": 5, "bytes": 5 * 2004}  # retention deletes them all …
    finally:
        store.close()
    again = run_cli("feedback", "backup", "--out", str(backups), "--store", f"sqlite:///{db}", "--json", home=tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout)["images_removed"] == 5  # … in the mirror too
    assert not list((backups / "images").rglob("*.png"))


@pytest.mark.slow
def test_postgresql_backup_restores_every_feedback_and_image_after_the_database_is_dropped(tmp_path):

    with postgres_server() as server:
        admin = server.url.replace("postgresql+psycopg2://", "postgresql://")
        url = admin.rsplit("/", 1)[0] + "/feedback"
        sql = server.sql

        sql("CREATE DATABASE feedback")
        folder = tmp_path / "images"
        store = FeedbackStore(url, images=FolderImages(folder))
        kept = fill(store)
        store.close()
        tools = str(Path(_pg_binary("pg_dump")).parent)
        env = {"PATH": tools + os.pathsep + os.environ["PATH"], "CHEXOPS_IMAGE_STORE": str(folder)}
        backups = tmp_path / "backups"
        made = run_cli("feedback", "backup", "--out", str(backups), "--store", url, "--json", home=tmp_path, env=env)
        assert made.returncode == 0, made.stderr[-2000:]
        dump = Path(json.loads(made.stdout)["file"])
        assert dump.suffix == ".dump" and dump.stat().st_size < 5 * 2000  # the images are not in the database …
        assert json.loads(made.stdout)["images_copied"] == 5  # … but beside it
        sql("DROP DATABASE feedback WITH (FORCE)")
        sql("CREATE DATABASE feedback")
        shutil.rmtree(folder)
        restored = run_cli("feedback", "restore", str(dump), "--store", url, home=tmp_path, env=env)
        assert restored.returncode == 0, restored.stderr[-2000:]
        store = FeedbackStore(url, images=FolderImages(folder))
        try:
            assert everything(store) == kept
            assert store.schema_version() >= 3
        finally:
            store.close()


def test_restore_of_a_missing_backup_is_exit_2(tmp_path):
    result = run_cli(
        "feedback",
        "restore",
        str(tmp_path / "nope.sqlite3"),
        "--store",
        f"sqlite:///{tmp_path / 'x.db'}",
        home=tmp_path,
    )
    assert result.returncode == 2 and "there is no backup at" in result.stderr and "Traceback" not in result.stderr
