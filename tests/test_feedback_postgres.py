"""The feedback store on a real PostgreSQL server (production's backend), started by the test: the
records, idempotent duplicates racing from two processes (two replicas), an old schema upgraded in
place, and the store going down and coming back (the same store object reconnects)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import sqlalchemy as sa

from chexops.feedback.store import (
    RETRY_SECONDS,
    SCHEMA_VERSION,
    Conflict,
    FeedbackStore,
    NotFound,
    Unavailable,
    WrongClinic,
)
from mlflow_fixtures import postgres_server

pytestmark = pytest.mark.slow

FINDINGS = [{"label": "Edema", "probability": 0.8, "threshold": 0.5, "positive": True}]
# The store's original schema (version 1, before the clinic of a feedback was kept), as deployed stores have it.
OLD_SCHEMA = (
    """CREATE TABLE predictions (request_id TEXT PRIMARY KEY, created TEXT NOT NULL, clinic TEXT NOT NULL,
        model_name TEXT NOT NULL, model_version TEXT NOT NULL, findings TEXT NOT NULL, priority TEXT NOT NULL,
        image_info TEXT NOT NULL, image_png {blob})""",
    """CREATE TABLE feedback (request_id TEXT PRIMARY KEY REFERENCES predictions(request_id), correct INTEGER NOT NULL,
        labels TEXT, note TEXT, created TEXT NOT NULL)""",
    """INSERT INTO predictions VALUES ('old-1', '2026-01-01T00:00:00Z', 'north', 'chexops-cxr', '1', '[]', 'routine',
    '{{}}', NULL)""",
    """INSERT INTO feedback VALUES ('old-1', 1, NULL, NULL, '2026-01-01T00:01:00Z')""",
)

# Run in two processes at once: each adds the same feedback for the same requests, in the same order.
RACER = textwrap.dedent("""
    import json, sys, time
    from chexops.feedback.store import FeedbackStore
    url, start, ids = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
    store = FeedbackStore(url)
    time.sleep(max(0.0, start - time.time()))
    out = []
    for request_id in ids:
        record, created = store.add_feedback(request_id, False, {"Edema": 0}, "same note", "north")
        out.append([request_id, created, record.to_dict()])
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as server:
        yield server


def test_feedback_store_on_postgresql(postgres):
    store = FeedbackStore(postgres.url)
    store.add_prediction(
        "req-1", "clinic-a", "chexops-cxr", "3", FINDINGS, "urgent", {"format": "png", "width": 64, "height": 64}
    )
    store.set_image("req-1", b"\x89PNG fake bytes")
    with pytest.raises(WrongClinic):
        store.add_feedback("req-1", False, {"Edema": 0}, "no oedema", "clinic-b")
    record, created = store.add_feedback("req-1", False, {"Edema": 0}, "no oedema", "clinic-a")
    assert created and record.labels == {"Edema": 0} and record.clinic == "clinic-a"
    again, created_again = store.add_feedback("req-1", False, {"Edema": 0}, "no oedema", "clinic-a")
    assert not created_again and again == record
    with pytest.raises(Conflict):
        store.add_feedback("req-1", True, None, None, "clinic-a")
    with pytest.raises(NotFound):
        store.add_feedback("unknown", True, None, None, "clinic-a")
    assert store.durability()["synchronous_commit"] == "on"
    store.close()

    reopened = FeedbackStore(
        postgres.url
    )  # committed data survives a new pool (and opening an up-to-date schema is a no-op)
    assert reopened.schema_version() == SCHEMA_VERSION
    assert reopened.prediction("req-1")["has_image"] is True
    rows = [r for r in reopened.export_rows() if r["request_id"] == "req-1"]
    assert len(rows) == 1 and rows[0]["image_png"] == b"\x89PNG fake bytes" and rows[0]["labels"] == {"Edema": 0}
    assert rows[0]["clinic"] == "clinic-a"
    assert [r["image_png"] for r in reopened.export_rows(images=False) if r["request_id"] == "req-1"] == [None]
    reopened.close()


def test_concurrent_duplicates_from_two_replicas_are_idempotent(postgres):
    store = FeedbackStore(postgres.url)
    before = store.agreement()
    ids = [f"race-{i}" for i in range(40)]
    for request_id in ids:
        store.add_prediction(request_id, "north", "chexops-cxr", "1", FINDINGS, "urgent", {})
    start = time.time() + 2.0  # both processes are up and connected by then
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, postgres.url, str(start), json.dumps(ids)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [racer.communicate(timeout=120) for racer in racers]
    assert all(r.returncode == 0 for r in racers), [err[-2000:] for _, err in results]
    a, b = (json.loads(out.strip().splitlines()[-1]) for out, _ in results)
    for (rid, created_a, record_a), (_, created_b, record_b) in zip(a, b):
        assert created_a != created_b, rid  # exactly one replica stored it; the other answered the stored record
        assert record_a == record_b
    assert store.agreement() == (before[0], before[1] + len(ids))
    store.close()


def test_an_old_store_is_upgraded_in_place(postgres):
    engine = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE old_store")
    engine.dispose()
    url = postgres.url.rsplit("/", 1)[0] + "/old_store"
    old = sa.create_engine(url)
    with old.begin() as conn:
        for statement in OLD_SCHEMA:
            conn.exec_driver_sql(statement.format(blob="BYTEA"))
    old.dispose()
    store = FeedbackStore(url)
    assert store.schema_version() == SCHEMA_VERSION
    (row,) = list(store.export_rows())
    assert row["request_id"] == "old-1" and row["clinic"] == "north"  # filled from the prediction's clinic
    with pytest.raises(WrongClinic):
        store.add_feedback("old-1", True, None, None, "south")
    store.close()


def test_the_store_reconnects_after_a_restart(postgres):
    store = FeedbackStore(postgres.url)
    store.add_prediction("down-1", "north", "chexops-cxr", "1", FINDINGS, "urgent", {})
    postgres.stop()
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            store.add_prediction("down-2", "north", "chexops-cxr", "1", FINDINGS, "urgent", {})
        with pytest.raises(Unavailable):
            store.prediction("down-1")
        assert time.monotonic() - started < 15  # refused quickly, no hang
        assert not store.available()
        assert time.monotonic() - started < 15  # and again at once: no call waits while the store just failed
    finally:
        postgres.start()
    time.sleep(RETRY_SECONDS)  # a store that just failed is tried again after this long
    # The same store object (its pool held connections to the old server) works again.
    assert store.prediction("down-1")["clinic"] == "north"
    store.add_prediction("down-2", "north", "chexops-cxr", "1", FINDINGS, "urgent", {})
    assert store.add_feedback("down-2", True, None, None, "north")[1] is True
    store.close()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_prediction_records_do_not_wait_for_the_disk_feedback_does(backend, postgres, tmp_path):
    """A prediction record's commit skips the fsync (no disk wait on /predict's path); a feedback's
    commit waits for it (an acknowledged feedback survives a crash of the machine)."""
    store = FeedbackStore(postgres.url if backend == "postgresql" else f"sqlite:///{tmp_path / 'feedback.db'}")
    statements: list[str] = []
    sa.event.listen(
        store.engine, "before_cursor_execute", lambda conn, cursor, statement, *a: statements.append(statement)
    )

    def level() -> str:
        with store._begin() as conn:  # noqa: SLF001 - what a transaction of each kind runs with
            full = conn.exec_driver_sql(
                "SHOW synchronous_commit" if backend == "postgresql" else "PRAGMA synchronous"
            ).scalar()
        with store._begin(durable=False) as conn:  # noqa: SLF001
            relaxed = conn.exec_driver_sql(
                "SHOW synchronous_commit" if backend == "postgresql" else "PRAGMA synchronous"
            ).scalar()
        return f"{full}/{relaxed}"

    assert level() == ("on/off" if backend == "postgresql" else "2/1")
    statements.clear()
    store.add_prediction(
        "req-d", "north", "chexops-cxr", "3", FINDINGS, "urgent", {"format": "png", "width": 64, "height": 64}
    )
    relaxed = "SET LOCAL synchronous_commit TO OFF" if backend == "postgresql" else "PRAGMA synchronous=NORMAL"
    insert = next(i for i, s in enumerate(statements) if s.lstrip().upper().startswith("INSERT INTO PREDICTIONS"))
    assert relaxed in statements[:insert], statements
    statements.clear()
    store.add_feedback("req-d", True, None, None, "north")
    assert relaxed not in statements, statements
    if backend == "sqlite":
        assert "PRAGMA synchronous=FULL" in statements, statements
    store.close()
