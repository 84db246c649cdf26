"""Predictions and clinicians' feedback, kept for the retraining set (SQLAlchemy Core, pooled).

SQLite by default (`$CHEXOPS_HOME/feedback/feedback.db`, WAL journal, `synchronous=FULL`: a feedback
is on disk before its 200 is sent; a prediction record's commit does not wait for the disk, so that
no fsync is on the prediction's path: it survives a crash of the service, and only a crash of the
machine can lose the last ones, whose feedback then cannot be given); PostgreSQL when
`CHEXOPS_FEEDBACK_URL` is a `postgresql://` URL (psycopg2). `sqlite:///PATH` names another SQLite file.

Connections come from a pool and are checked before use (`pool_pre_ping`): a store that went away
and came back (a PostgreSQL restart, a fail-over) is reconnected on the next call, without a service
restart. While the store cannot be reached every call raises `Unavailable` (the service then answers
predictions without storing them and says feedback is unavailable; bentos/README.md); after a
failure, calls fail at once for `RETRY_SECONDS` instead of each waiting on a connection timeout.

The schema carries a version (`chexops_schema`); opening a store upgrades an older one in place,
under a lock (PostgreSQL advisory lock, SQLite's write lock), so that replicas starting together
migrate once: 1 = the original tables, 2 = `feedback.clinic`, the clinic that gave the feedback
(filled from the prediction's clinic for older rows), 3 = `feedback.unusable` (the clinician found the image
unusable: no labels to learn from; the export leaves it out), 4 = the image in the image store
(`chexops.feedback.images`: a folder or S3) instead of the `image_png` blob, `predictions.image_key`,
`image_bytes` and `image_pruned_at`, and `feedback.exported_at` (when an export first wrote it). Blobs of older rows
stay readable and are moved into the image store by `move_legacy_images` (`chexops feedback prune` runs it first).

What is kept carries no patient identifier: the image (a PNG or a JPEG) is its pixels without any metadata
(`chexops.serving.stored_image`), under a key made of the random request id; the image facts are format, size,
modality, bits, photometric interpretation and view, never a file name or any other DICOM tag.

Feedback belongs to the clinic whose key made the prediction (`WrongClinic` otherwise) and is
idempotent per request_id, also when two replicas receive the same feedback at once (the insert is
`ON CONFLICT DO NOTHING`, then the stored row is read back): the same body again answers the stored
record; a different body for a request that already has feedback is a `Conflict`: a clinical
judgement is not silently overwritten.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from chexops.core.errors import ConfigError
from chexops.core.results import Result
from chexops.feedback.errors import Conflict, NotFound, Unavailable, WrongClinic  # noqa: F401 - store.X, as before
from chexops.feedback.images import FolderImages, ImageStore, image_key

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
MIGRATION_LOCK = 0x63686578  # PostgreSQL advisory lock key ("chex")
KEPT_INFO = ("format", "width", "height", "mode", "modality", "photometric", "bits_stored", "view_position")
RETRY_SECONDS = 1.0  # a store that just failed is not tried again for this long: calls fail at once meanwhile

metadata = sa.MetaData()
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("created", sa.Text, nullable=False),
    sa.Column("clinic", sa.Text, nullable=False),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("findings", sa.Text, nullable=False),
    sa.Column("priority", sa.Text, nullable=False),
    sa.Column("image_info", sa.Text, nullable=False),
    sa.Column("image_png", sa.LargeBinary),  # schema ≤ 3 only: moved into the image store
    sa.Column("image_key", sa.Text),
    sa.Column("image_bytes", sa.Integer),
    sa.Column("image_pruned_at", sa.Text),
)
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("request_id", sa.String(64), sa.ForeignKey("predictions.request_id"), primary_key=True),
    sa.Column("correct", sa.Integer, nullable=False),
    sa.Column("labels", sa.Text),
    sa.Column("note", sa.Text),
    sa.Column("created", sa.Text, nullable=False),
    sa.Column("clinic", sa.Text),
    sa.Column("unusable", sa.Integer, nullable=False, server_default="0"),
    sa.Column("exported_at", sa.Text),
)
schema_table = sa.Table("chexops_schema", metadata, sa.Column("version", sa.Integer, nullable=False))


class PruneResult(Result):
    """What `chexops feedback prune` deleted (or, `dry_run`, would delete): images and their bytes; and how many
    blobs of schema ≤ 3 it moved into the image store first."""

    images: int
    bytes: int
    dry_run: bool
    unlabelled_days: float
    exported_days: float
    labelled_days: float
    moved: int = 0
    image_store: str = ""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _ago(days: float) -> str:
    """The `created` stamp of `days` ago (stamps are ISO UTC strings: they compare as text)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - days * 86400))


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
    clinic: str | None = None

    unusable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "correct": self.correct,
            "labels": self.labels,
            "note": self.note,
            "created": self.created,
            "clinic": self.clinic,
            "unusable": self.unusable,
        }


def engine_url(url: str) -> tuple[str, str]:
    """(kind, SQLAlchemy URL) of a store URL; psycopg2 for every PostgreSQL spelling."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql", "postgresql+psycopg2://" + url[len(prefix) :]
    if url.startswith("sqlite:///"):
        return "sqlite", url
    raise ConfigError(f"feedback store URL must start with sqlite:/// or postgresql://, got {url.split(':')[0]}:")


def missing_sqlite(url: str) -> Path | None:
    """The file a `sqlite:///` store URL names when it does not exist (None: it exists, or not SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url[len("sqlite:///") :])
    return None if path.is_file() else path


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun below, as BEGIN IMMEDIATE
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(conn) -> None:
    # One writer at a time, decided when the transaction starts; a long read (the export) only reads.
    # The safety level can only change between transactions: FULL unless the caller asked for a record
    # that may be lost with the machine (`_begin(durable=False)`).
    options = conn.get_execution_options()
    conn.exec_driver_sql(f"PRAGMA synchronous={'FULL' if options.get('chexops_durable', True) else 'NORMAL'}")
    conn.exec_driver_sql("BEGIN" if options.get("chexops_read_only") else "BEGIN IMMEDIATE")


def default_images(url: str) -> Path:
    """The image folder of a store without CHEXOPS_IMAGE_STORE: beside a SQLite file, else $CHEXOPS_HOME's."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :]).parent / "images"
    from chexops.core import paths

    return paths.home() / "feedback" / "images"


class FeedbackStore:
    def __init__(self, url: str, pool_size: int = 4, images: ImageStore | None = None):
        self.url = url
        self.images = images if images is not None else FolderImages(default_images(url))
        self.kind, sa_url = engine_url(url)
        if self.kind == "postgresql":
            self.location = url.split("@")[-1]  # no credentials in logs
            self.engine = sa.create_engine(
                sa_url,
                pool_pre_ping=True,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_timeout=10,
                pool_recycle=1800,
                connect_args={"connect_timeout": 5},
            )
        else:
            path = Path(url[len("sqlite:///") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            self.location = str(path)
            self.engine = sa.create_engine(
                sa_url,
                pool_pre_ping=True,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_timeout=30,
                connect_args={"check_same_thread": False, "timeout": 30},
            )
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self._last_failure = 0.0
        try:
            self._ensure_schema()
        except Unavailable as exc:
            log.warning(
                "feedback store %s is unavailable (%s); predictions are served without it until it answers",
                self.location,
                exc,
            )

    # --- plumbing ----------------------------------------------------------------------------------
    def _begin(self, durable: bool = True):
        """A transaction on a pooled connection; `Unavailable` when the store cannot be reached.
        `durable=False`: its commit does not wait for the disk (SQLite `synchronous=NORMAL` in WAL
        mode, PostgreSQL `synchronous_commit=off`): safe from a crash of the service, lost only with
        the machine or the database server; for prediction records, never for feedback."""
        self._check_recent_failure()
        self._ensure_schema()
        return _Tx(self, durable)

    def _check_recent_failure(self) -> None:
        if self._last_failure and time.monotonic() - self._last_failure < RETRY_SECONDS:
            raise Unavailable(f"the feedback store {self.location} was unreachable moments ago")

    def _failed(self, exc: Exception) -> Unavailable:
        self._last_failure = time.monotonic()
        return Unavailable(_reason(exc))

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            self._check_recent_failure()
            try:
                with self.engine.begin() as conn:
                    migrate(conn, self.kind)
            except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
                raise self._failed(exc) from None
            self._schema_ready = True

    def available(self) -> bool:
        try:
            with self._begin() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except Unavailable:
            return False

    def durability(self) -> dict[str, str]:
        """The settings the store's connections run with: SQLite journal mode and synchronous level
        (0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA), PostgreSQL synchronous_commit and fsync."""
        with self._begin() as conn:
            if self.kind == "sqlite":
                levels = {0: "off", 1: "normal", 2: "full", 3: "extra"}
                return {
                    "journal_mode": str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower(),
                    "synchronous": levels[int(conn.exec_driver_sql("PRAGMA synchronous").scalar())],
                }
            return {
                "synchronous_commit": str(conn.exec_driver_sql("SHOW synchronous_commit").scalar()),
                "fsync": str(conn.exec_driver_sql("SHOW fsync").scalar()),
            }

    def schema_version(self) -> int:
        with self._begin() as conn:
            return _version(conn)

    # --- predictions -------------------------------------------------------------------------------
    def add_prediction(
        self,
        request_id: str,
        clinic: str,
        model_name: str,
        model_version: str,
        findings: list[dict],
        priority: str,
        image_info: dict[str, Any],
    ) -> None:
        row = {
            "request_id": request_id,
            "created": now(),
            "clinic": clinic,
            "model_name": model_name,
            "model_version": model_version,
            "findings": json.dumps(findings),
            "priority": priority,
            "image_info": json.dumps(safe_info(image_info)),
        }
        with self._begin(durable=False) as conn:
            conn.execute(
                _insert(self.kind, predictions).values(**row).on_conflict_do_nothing(index_elements=["request_id"])
            )

    def set_image(self, request_id: str, data: bytes) -> None:
        """The kept image of a prediction: durable in the image store, then its key in the record (whose commit
        a feedback's durable commit makes durable too)."""
        key = image_key(request_id, data)
        self.images.put(key, data)
        with self._begin(durable=False) as conn:
            conn.execute(
                predictions.update()
                .where(predictions.c.request_id == request_id)
                .values(image_key=key, image_bytes=len(data))
            )

    def image(self, request_id: str) -> bytes | None:
        """The kept image of a prediction (None: none kept, or pruned)."""
        p = predictions.c
        with self._begin() as conn:
            row = conn.execute(sa.select(p.image_key, p.image_png).where(p.request_id == request_id)).first()
        if row is None:
            return None
        return self._image_of(row[0], row[1])

    def _image_of(self, key: str | None, blob: bytes | None) -> bytes | None:
        if key:
            data = self.images.get(key)
            if data is None:
                log.warning("the image %s is missing from %s", key, self.images.location)
            return data
        return bytes(blob) if blob is not None else None

    def prediction(self, request_id: str) -> dict[str, Any] | None:
        p = predictions.c
        query = sa.select(
            p.request_id,
            p.created,
            p.clinic,
            p.model_name,
            p.model_version,
            p.findings,
            p.priority,
            p.image_info,
            sa.or_(p.image_key.is_not(None), p.image_png.is_not(None)),
        ).where(p.request_id == request_id)
        with self._begin() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return {
            "request_id": row[0],
            "created": row[1],
            "clinic": row[2],
            "model": {"name": row[3], "version": row[4]},
            "findings": json.loads(row[5]),
            "priority": row[6],
            "image_info": json.loads(row[7]),
            "has_image": bool(row[8]),
        }

    # --- feedback ----------------------------------------------------------------------------------
    def add_feedback(
        self,
        request_id: str,
        correct: bool,
        labels: dict[str, int] | None,
        note: str | None,
        clinic: str | None = None,
        unusable: bool = False,
    ) -> tuple[Feedback, bool]:
        """Store a feedback (committed when this returns); (record, created). Raises `NotFound` for an
        unknown request_id, `WrongClinic` when `clinic` is not the prediction's, `Conflict` when another
        feedback is already stored for it. `clinic=None` (operators' tools) skips the clinic check."""
        f = feedback.c
        with self._begin() as conn:
            owner = conn.execute(sa.select(predictions.c.clinic).where(predictions.c.request_id == request_id)).first()
            if owner is None:
                raise NotFound(request_id)
            if clinic is not None and owner[0] != clinic:
                raise WrongClinic(request_id)
            record = Feedback(request_id, correct, labels, note, now(), clinic or owner[0], unusable)
            inserted = conn.execute(
                _insert(self.kind, feedback)
                .values(
                    request_id=request_id,
                    correct=int(correct),
                    labels=json.dumps(labels, sort_keys=True) if labels is not None else None,
                    note=note,
                    created=record.created,
                    clinic=record.clinic,
                    unusable=int(unusable),
                )
                .on_conflict_do_nothing(index_elements=["request_id"])
            )
            if inserted.rowcount == 1:
                return record, True
            row = conn.execute(
                sa.select(f.correct, f.labels, f.note, f.created, f.clinic, f.unusable).where(
                    f.request_id == request_id
                )
            ).one()
        stored = Feedback(
            request_id, bool(row[0]), json.loads(row[1]) if row[1] else None, row[2], row[3], row[4], bool(row[5])
        )
        if (stored.correct, stored.labels, stored.note, stored.unusable) != (correct, labels, note, unusable):
            raise Conflict(request_id)
        return stored, False

    def prune_images(
        self, unlabelled_days: float, exported_days: float, labelled_days: float, dry_run: bool = False
    ) -> dict[str, int]:
        """The retention policy: the image of a prediction without feedback is deleted `unlabelled_days` after the
        prediction; one with feedback `exported_days` after an export first wrote it into a training set, or, never
        exported, `labelled_days` after the prediction. The record (findings, version, image facts, feedback) is kept,
        with `image_pruned_at`. Counts and bytes (`dry_run`: what would go)."""
        p, f = predictions.c, feedback.c
        has_feedback = sa.exists().where(f.request_id == p.request_id)
        exported_long_ago = sa.exists().where(
            f.request_id == p.request_id, f.exported_at.is_not(None), f.exported_at < _ago(exported_days)
        )
        never_exported = sa.exists().where(f.request_id == p.request_id, f.exported_at.is_(None))
        due = sa.and_(
            p.image_key.is_not(None),
            sa.or_(
                sa.and_(~has_feedback, p.created < _ago(unlabelled_days)),
                exported_long_ago,
                sa.and_(never_exported, p.created < _ago(labelled_days)),
            ),
        )
        with self._begin() as conn:
            rows = conn.execute(sa.select(p.request_id, p.image_key, p.image_bytes).where(due)).all()
        if not dry_run:
            for start in range(0, len(rows), 100):
                chunk = rows[start : start + 100]
                for _, key, _ in chunk:
                    self.images.delete(key)
                with self._begin() as conn:
                    conn.execute(
                        predictions.update()
                        .where(p.request_id.in_([r[0] for r in chunk]))
                        .values(image_key=None, image_pruned_at=now())
                    )
        return {"images": len(rows), "bytes": sum(int(r[2] or 0) for r in rows)}

    def move_legacy_images(self, batch: int = 50) -> int:
        """Blobs of schema ≤ 3 into the image store (each durable there before its blob is dropped); how many."""
        p = predictions.c
        moved = 0
        while True:
            with self._begin() as conn:
                rows = conn.execute(
                    sa.select(p.request_id, p.image_png).where(p.image_png.is_not(None)).limit(batch)
                ).all()
            if not rows:
                return moved
            for request_id, blob in rows:
                data = bytes(blob)
                key = image_key(request_id, data)
                self.images.put(key, data)
                with self._begin() as conn:
                    conn.execute(
                        predictions.update()
                        .where(p.request_id == request_id)
                        .values(image_key=key, image_bytes=len(data), image_png=None)
                    )
                moved += 1

    def mark_exported(self, request_ids: list[str]) -> None:
        """Feedback written into a training set: `exported_at` set where it was not (the retention clock)."""
        f = feedback.c
        stamp = now()
        with self._begin() as conn:
            for start in range(0, len(request_ids), 500):
                conn.execute(
                    feedback.update()
                    .where(f.request_id.in_(request_ids[start : start + 500]), f.exported_at.is_(None))
                    .values(exported_at=stamp)
                )

    def agreement(self) -> tuple[int, int]:
        """(correct, incorrect) feedback counts."""
        with self._begin() as conn:
            row = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(feedback.c.correct), 0), sa.func.count())).one()
        return int(row[0]), int(row[1]) - int(row[0])

    def export_rows(self, images: bool = True, batch: int = 8) -> Iterator[dict[str, Any]]:
        """Every feedback with its prediction (and stored image), oldest first, streamed: at most
        `batch` rows are in memory (a server-side cursor on PostgreSQL)."""
        f, p = feedback.c, predictions.c
        columns = [
            f.request_id,
            f.correct,
            f.labels,
            f.created,
            p.findings,
            p.image_info,
            p.model_name,
            p.model_version,
            f.clinic,
        ]
        query = (
            sa.select(*columns, p.image_key if images else sa.null(), p.image_png if images else sa.null())
            .select_from(feedback.join(predictions, p.request_id == f.request_id))
            .where(f.unusable == 0)  # an unusable image teaches nothing
            .order_by(f.created, f.request_id)
        )
        self._check_recent_failure()
        self._ensure_schema()
        try:
            with self.engine.connect() as conn:
                conn.execution_options(chexops_read_only=True)
                result = conn.execution_options(stream_results=True, yield_per=batch).execute(query)
                for row in result:
                    yield {
                        "request_id": row[0],
                        "correct": bool(row[1]),
                        "labels": json.loads(row[2]) if row[2] else None,
                        "created": row[3],
                        "findings": json.loads(row[4]),
                        "image_info": json.loads(row[5]),
                        "model": {"name": row[6], "version": row[7]},
                        "clinic": row[8],
                        "image_png": self._image_of(row[9], row[10]) if images else None,
                    }
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            raise self._failed(exc) from None

    def close(self) -> None:
        self.engine.dispose()


class _Tx:
    """`with store._begin() as conn`: a committed (or rolled back) transaction; driver errors that mean
    the store is unreachable become `Unavailable`."""

    def __init__(self, store: FeedbackStore, durable: bool = True):
        self.store, self.durable = store, durable
        self.connection = self.transaction = None

    def __enter__(self):
        try:
            self.connection = self.store.engine.connect()
            self.connection.execution_options(chexops_durable=self.durable)
            self.transaction = self.connection.begin()
            if not self.durable and self.store.kind == "postgresql":
                self.connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            return self.connection
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            self._close()
            raise self.store._failed(exc) from None  # noqa: SLF001 - the store's own transaction

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.transaction.commit()
            else:
                self.transaction.rollback()
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as error:
            raise self.store._failed(error) from None  # noqa: SLF001 - the store's own transaction
        finally:
            self._close()
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            raise self.store._failed(exc) from None  # noqa: SLF001 - the store's own transaction
        return False

    def _close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            except (sa_exc.OperationalError, sa_exc.InterfaceError):
                pass


def _reason(exc: Exception) -> str:
    original = getattr(exc, "orig", None) or exc
    return (str(original).strip().splitlines() or [type(original).__name__])[0]


def _insert(kind: str, table: sa.Table):
    if kind == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


# --- schema versions -------------------------------------------------------------------------------


def _version(conn) -> int:
    inspector = sa.inspect(conn)
    if inspector.has_table("chexops_schema"):
        return int(conn.execute(sa.select(sa.func.max(schema_table.c.version))).scalar() or 0)
    return 1 if inspector.has_table("feedback") else 0


def _to_2(conn) -> None:
    conn.execute(sa.text("ALTER TABLE feedback ADD COLUMN clinic TEXT"))
    conn.execute(
        sa.text(
            "UPDATE feedback SET clinic = (SELECT p.clinic FROM predictions p WHERE p.request_id = feedback.request_id)"
        )
    )


def _to_3(conn) -> None:
    conn.execute(sa.text("ALTER TABLE feedback ADD COLUMN unusable INTEGER NOT NULL DEFAULT 0"))


def _to_4(conn) -> None:
    for table, column, kind in (
        ("predictions", "image_key", "TEXT"),
        ("predictions", "image_bytes", "INTEGER"),
        ("predictions", "image_pruned_at", "TEXT"),
        ("feedback", "exported_at", "TEXT"),
    ):
        conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))


MIGRATIONS = {2: _to_2, 3: _to_3, 4: _to_4}  # version → the step from version - 1


def migrate(conn, kind: str) -> int:
    """Create or upgrade the schema to SCHEMA_VERSION inside `conn`'s transaction; the version found."""
    if kind == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    found = _version(conn)
    if found > SCHEMA_VERSION:
        raise RuntimeError(f"the feedback store has schema version {found}, newer than this code's {SCHEMA_VERSION}")
    if found == 0:
        metadata.create_all(conn)
    else:
        schema_table.create(conn, checkfirst=True)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            log.info("feedback store: upgrading the schema to version %d", version)
            MIGRATIONS[version](conn)
    if found != SCHEMA_VERSION:
        conn.execute(schema_table.delete())
        conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))
    return found
