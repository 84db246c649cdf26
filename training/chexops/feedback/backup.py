"""Backups of the feedback store that restore: `chexops feedback backup` and `chexops feedback restore`.

- SQLite: SQLite's online backup API (a consistent copy while the service writes), to
  `DIR/feedback-YYYYmmddTHHMMSSmmmZ.sqlite3`; restored the same way into the store's file (stop the service first).
- PostgreSQL: `pg_dump --format=custom` to `DIR/feedback-YYYYmmddTHHMMSSmmmZ.dump` (one transaction's snapshot);
  restored with `pg_restore --clean --if-exists --no-owner --exit-on-error` into the store's (empty or existing)
  database. `pg_dump` and `pg_restore` must be on PATH (the `postgres` image has them).

`keep` backups are kept in the folder, the oldest beyond that deleted (retention). The copy goes to a second
place by whatever runs this (the cluster's CronJob copies the folder to the object store; docs/operations.md).

The kept images live in the image store, not in the database (`chexops.feedback.images`). A folder image store is
mirrored into `DIR/images/` by each backup (new images copied, pruned ones removed: an image is never changed
once kept), and a restore copies back every image the store lacks. An S3 image store (the cluster's MinIO bucket
`chexops-images`) is the platform backup's to copy (`chexops backup run --bucket chexops-images`).
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.results import Result
from chexops.feedback.images import FolderImages, ImageStore
from chexops.feedback.store import engine_url

PREFIX = "feedback-"


class BackupResult(Result):
    """A backup written (or restored): its file, its size, the store's kind, the backups deleted by retention, and
    the images: where they are, how many were copied (and, in a backup, removed from the mirror)."""

    file: str
    bytes: int
    kind: str
    deleted: list[str] = []
    images: str = ""
    images_copied: int = 0
    images_removed: int = 0


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


def _copy_missing(source: Path, target: Path) -> int:
    """Files of `source` that `target` lacks (or holds at another size), copied; how many."""
    copied = 0
    for path in source.rglob("*"):
        if not path.is_file() or (path.name.startswith(".") and path.name.endswith(".tmp")):  # a write under way
            continue
        there = target / path.relative_to(source)
        if not there.is_file() or there.stat().st_size != path.stat().st_size:
            there.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, there)
            copied += 1
    return copied


def _images_backup(images: ImageStore | None, folder: Path) -> tuple[str, int, int]:
    if not isinstance(images, FolderImages):
        where = images.location if images is not None else ""
        return (f"{where} (copied by the platform backup)" if where else "", 0, 0)
    mirror = folder / "images"
    copied = _copy_missing(images.root, mirror) if images.root.is_dir() else 0
    removed = 0
    for path in list(mirror.rglob("*")) if mirror.is_dir() else []:
        if path.is_file() and not (images.root / path.relative_to(mirror)).is_file():
            path.unlink()  # pruned from the store since: retention applies to the mirror too
            removed += 1
    return str(mirror), copied, removed


def backup(url: str, folder: Path, keep: int = 14, images: ImageStore | None = None) -> BackupResult:
    """A consistent copy of the store at `url` into `folder` (and of a folder image store into `folder/images`);
    the oldest beyond `keep` are deleted."""
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
    where, copied, removed = _images_backup(images, folder)
    return BackupResult(
        file=str(target),
        bytes=target.stat().st_size,
        kind=kind,
        deleted=[p.name for p in deleted],
        images=where,
        images_copied=copied,
        images_removed=removed,
    )


def restore(url: str, file: Path, images: ImageStore | None = None) -> BackupResult:
    """The store at `url` made what the backup `file` holds (SQLite: the file replaced; PostgreSQL: the objects
    of the dump dropped if present and recreated); a folder image store gets back every image it lacks from the
    backup's `images/` mirror."""
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
    mirror = file.parent / "images"
    copied = 0
    if isinstance(images, FolderImages) and mirror.is_dir():
        copied = _copy_missing(mirror, images.root)
    where = images.location if images is not None else ""
    return BackupResult(file=str(file), bytes=size, kind=kind, images=where, images_copied=copied)
