"""Predictions and clinicians' feedback, kept for the retraining set.

SQLite by default (`$CHEXOPS_HOME/feedback/feedback.db`, WAL journal, `synchronous=FULL`: a feedback
is on disk before its 200 is sent, so a SIGKILL right after loses nothing acknowledged); PostgreSQL
when `CHEXOPS_FEEDBACK_URL` is a `postgresql://` URL (psycopg2). `sqlite:///PATH` names another
SQLite file.

What is kept carries no patient identifier: the image is its pixels re-encoded as a 16-bit grey PNG
(`chexops.imaging.to_png`: no metadata at all), the image facts are format, size, modality, bits,
photometric interpretation and view, never a file name or any other DICOM tag.

Feedback is idempotent per request_id: the same body again answers the stored record; a different
body for a request that already has feedback is a conflict (409): a clinical judgement is not
silently overwritten.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS predictions (
        request_id TEXT PRIMARY KEY,
        created TEXT NOT NULL,
        clinic TEXT NOT NULL,
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        findings TEXT NOT NULL,
        priority TEXT NOT NULL,
        image_info TEXT NOT NULL,
        image_png {blob}
    )""",
    """CREATE TABLE IF NOT EXISTS feedback (
        request_id TEXT PRIMARY KEY REFERENCES predictions(request_id),
        correct INTEGER NOT NULL,
        labels TEXT,
        note TEXT,
        created TEXT NOT NULL
    )""",
)
KEPT_INFO = ("format", "width", "height", "mode", "modality", "photometric", "bits_stored", "view_position")


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def safe_info(info: dict[str, Any]) -> dict[str, Any]:
    """Only the acquisition facts that identify nobody."""
    return {k: info[k] for k in KEPT_INFO if k in info}


@dataclass
class Feedback:
    request_id: str
    correct: bool
    labels: dict[str, int] | None
    note: str | None
    created: str

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "correct": self.correct, "labels": self.labels, "note": self.note,
                "created": self.created}


class FeedbackStore:
    """One connection, serialised by a lock (SQLite's writer is single anyway)."""

    def __init__(self, url: str):
        self.url = url
        self._lock = threading.Lock()
        if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg2://")):
            import psycopg2

            self.kind, self.blob = "postgresql", "BYTEA"
            self._conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://", 1))
            self.location = url.split("@")[-1]  # no credentials in logs
        elif url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            self.kind, self.blob, self.location = "sqlite", "BLOB", str(path)
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
        else:
            raise ValueError(f"feedback store URL must start with sqlite:/// or postgresql://, got {url.split(':')[0]}:")
        with self._transaction() as cur:
            for statement in SCHEMA:
                cur.execute(statement.format(blob=self.blob))

    # --- plumbing ----------------------------------------------------------------------------------
    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.kind == "postgresql" else statement

    class _Tx:
        def __init__(self, store: "FeedbackStore"):
            self.store = store

        def __enter__(self):
            self.store._lock.acquire()
            conn = self.store._conn
            self.cur = conn.cursor()
            if self.store.kind == "sqlite":
                self.cur.execute("BEGIN IMMEDIATE")
            return self

        def execute(self, statement: str, params: tuple = ()):
            self.cur.execute(self.store._sql(statement), params)
            return self.cur

        def __exit__(self, exc_type, exc, tb):
            try:
                conn = self.store._conn
                if exc_type is None:
                    self.cur.execute("COMMIT") if self.store.kind == "sqlite" else conn.commit()
                else:
                    self.cur.execute("ROLLBACK") if self.store.kind == "sqlite" else conn.rollback()
            finally:
                self.cur.close()
                self.store._lock.release()
            return False

    def _transaction(self) -> "FeedbackStore._Tx":
        return FeedbackStore._Tx(self)

    def _blob(self, data: bytes):
        if self.kind == "postgresql":
            import psycopg2

            return psycopg2.Binary(data)
        return sqlite3.Binary(data)

    # --- predictions -------------------------------------------------------------------------------
    def add_prediction(self, request_id: str, clinic: str, model_name: str, model_version: str, findings: list[dict],
                       priority: str, image_info: dict[str, Any]) -> None:
        with self._transaction() as tx:
            tx.execute("INSERT INTO predictions (request_id, created, clinic, model_name, model_version, findings, priority, "
                       "image_info) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
                       (request_id, now(), clinic, model_name, model_version, json.dumps(findings), priority,
                        json.dumps(safe_info(image_info))))

    def set_image(self, request_id: str, png: bytes) -> None:
        with self._transaction() as tx:
            tx.execute("UPDATE predictions SET image_png = ? WHERE request_id = ?", (self._blob(png), request_id))

    def prediction(self, request_id: str) -> dict[str, Any] | None:
        with self._transaction() as tx:
            row = tx.execute("SELECT request_id, created, clinic, model_name, model_version, findings, priority, image_info, "
                             "image_png IS NOT NULL FROM predictions WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            return None
        return {"request_id": row[0], "created": row[1], "clinic": row[2], "model": {"name": row[3], "version": row[4]},
                "findings": json.loads(row[5]), "priority": row[6], "image_info": json.loads(row[7]), "has_image": bool(row[8])}

    # --- feedback ----------------------------------------------------------------------------------
    def add_feedback(self, request_id: str, correct: bool, labels: dict[str, int] | None, note: str | None) -> tuple[Feedback, bool]:
        """Store a feedback (committed when this returns); (record, created). Raises `NotFound` for an
        unknown request_id, `Conflict` when another feedback is already stored for it."""
        with self._transaction() as tx:
            if tx.execute("SELECT 1 FROM predictions WHERE request_id = ?", (request_id,)).fetchone() is None:
                raise NotFound(request_id)
            row = tx.execute("SELECT correct, labels, note, created FROM feedback WHERE request_id = ?", (request_id,)).fetchone()
            if row is not None:
                stored = Feedback(request_id, bool(row[0]), json.loads(row[1]) if row[1] else None, row[2], row[3])
                if (stored.correct, stored.labels, stored.note) != (correct, labels, note):
                    raise Conflict(request_id)
                return stored, False
            record = Feedback(request_id, correct, labels, note, now())
            tx.execute("INSERT INTO feedback (request_id, correct, labels, note, created) VALUES (?, ?, ?, ?, ?)",
                       (request_id, int(correct), json.dumps(labels, sort_keys=True) if labels is not None else None, note,
                        record.created))
            return record, True

    def agreement(self) -> tuple[int, int]:
        """(correct, incorrect) feedback counts."""
        with self._transaction() as tx:
            row = tx.execute("SELECT COALESCE(SUM(correct), 0), COUNT(*) FROM feedback").fetchone()
        return int(row[0]), int(row[1]) - int(row[0])

    def export_rows(self) -> Iterator[dict[str, Any]]:
        """Every feedback with its prediction and stored image, oldest first."""
        with self._transaction() as tx:
            rows = tx.execute("SELECT f.request_id, f.correct, f.labels, f.created, p.findings, p.image_info, p.image_png, "
                              "p.model_name, p.model_version FROM feedback f JOIN predictions p ON p.request_id = f.request_id "
                              "ORDER BY f.created, f.request_id").fetchall()
        for row in rows:
            yield {"request_id": row[0], "correct": bool(row[1]), "labels": json.loads(row[2]) if row[2] else None,
                   "created": row[3], "findings": json.loads(row[4]), "image_info": json.loads(row[5]),
                   "image_png": bytes(row[6]) if row[6] is not None else None, "model": {"name": row[7], "version": row[8]}}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
