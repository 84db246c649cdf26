"""Backups of the feedback store that restore: `chexops feedback backup` and `chexops feedback restore`.

- SQLite: SQLite's online backup API (a consistent copy while the service writes), to
  `DIR/feedback-YYYYmmddTHHMMSSmmmZ.sqlite3`; restored the same way into the store's file (stop the service first).
- PostgreSQL: `pg_dump --format=custom` to `DIR/feedback-YYYYmmddTHHMMSSmmmZ.dump` (one transaction's snapshot);
  restored with `pg_restore --clean --if-exists --no-owner --exit-on-error` into the store's (empty or existing)
  database. `pg_dump` and `pg_restore` must be on PATH (the `postgres` image has them).

`keep` backups are kept in the folder, the oldest beyond that deleted (retention). The copy goes to a second
place by whatever runs this (the cluster's CronJob copies the folder to the object store; docs/operations.md).
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.results import Result
from chexops.feedback.store import engine_url

PREFIX = "feedback-"


class BackupResult(Result):
    """A backup written (or restored): its file, its size, the store's kind, and the backups deleted by retention."""

    file: str
    bytes: int
    kind: str
    deleted: list[str] = []


def libpq_url(url: str) -> str:
    """A store URL as libpq takes it (no SQLAlchemy driver suffix)."""
    _, sa_url = engine_url(url)
    return "postgresql://" + sa_url.split("://", 1)[1]


def pg_tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise UserInputError(
            f"{name} is not on PATH: install the PostgreSQL client tools (apt-get install postgresql-client)"
        )
    return found


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ChexopsError(f"{what} failed: {(done.stderr or done.stdout).strip()[-1500:]}")


def backup(url: str, folder: Path, keep: int = 14) -> BackupResult:
    """A consistent copy of the store at `url` into `folder`; the oldest beyond `keep` are deleted."""
    kind, _ = engine_url(url)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"  # sorts by time
    if kind == "sqlite":
        source = Path(url[len("sqlite:///") :])
        if not source.is_file():
            raise UserInputError(f"there is no feedback store at {source}")
        target = folder / f"{PREFIX}{stamp}.sqlite3"
        with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
            src.backup(dst)
        dst.close()
        src.close()
    else:
        target = folder / f"{PREFIX}{stamp}.dump"
        _run([pg_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={target}", libpq_url(url)], "pg_dump")
    kept = sorted(folder.glob(f"{PREFIX}*"))
    deleted = kept[:-keep] if keep and len(kept) > keep else []
    for old in deleted:
        old.unlink()
    return BackupResult(file=str(target), bytes=target.stat().st_size, kind=kind, deleted=[p.name for p in deleted])


def restore(url: str, file: Path) -> BackupResult:
    """The store at `url` made what the backup `file` holds (SQLite: the file replaced; PostgreSQL: the objects
    of the dump dropped if present and recreated)."""
    if not file.is_file():
        raise UserInputError(f"there is no backup at {file}")
    kind, _ = engine_url(url)
    if kind == "sqlite":
        if file.suffix != ".sqlite3":
            raise UserInputError(f"{file} is not a SQLite backup (feedback-*.sqlite3)")
        target = Path(url[len("sqlite:///") :])
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in (target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
            stale.unlink(missing_ok=True)
        with sqlite3.connect(file) as src, sqlite3.connect(target) as dst:
            src.backup(dst)
        dst.close()
        src.close()
        size = target.stat().st_size
    else:
        if file.suffix != ".dump":
            raise UserInputError(f"{file} is not a PostgreSQL backup (feedback-*.dump)")
        _run(
            [
                pg_tool("pg_restore"),
                "--clean",
                "--if-exists",
                "--no-owner",
                "--exit-on-error",
                f"--dbname={libpq_url(url)}",
                str(file),
            ],
            "pg_restore",
        )
        size = file.stat().st_size
    return BackupResult(file=str(file), bytes=size, kind=kind)
