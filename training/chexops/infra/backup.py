"""The platform's nightly backup and its restore: `chexops backup run` and `chexops backup restore`.

One backup is a folder `s3://BUCKET/PREFIX/YYYYmmddTHHMMSSmmmZ/` holding
- `postgres/DB.dump`: `pg_dump --format=custom` of each database (MLflow's `mlflow`, the feedback stores'
  `feedback_staging` and `feedback_production`, whose images are rows of the store), each restorable alone with
  `pg_restore` or, for a feedback store, `chexops feedback restore`;
- `s3/BUCKET/KEY`: every object of each source bucket (MLflow's artifacts, `mlflow`);
- `MANIFEST.json`, written last: a backup without it is incomplete and is never restored or counted as kept.

The dumps come from `pg_dump` run here (`--postgres URL`, password from a file) or from a folder another process
filled (`--dumps DIR`: the CronJob's init container runs the server's own `pg_dump`). Retention keeps the newest
`keep` complete backups under the prefix and deletes the rest, incomplete ones older than the newest complete
one included. The destination may be another S3 endpoint with its own credential files (Chameleon's object
store); the source is boto3's default (`AWS_ENDPOINT_URL`, `AWS_CONFIG_FILE`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.files import read_secret_file
from chexops.core.results import Result
from chexops.feedback.backup import libpq_url, pg_tool

log = logging.getLogger(__name__)
MANIFEST = "MANIFEST.json"


class PlatformBackupResult(Result):
    """One backup written or restored: where, its databases and buckets, sizes, and the backups retention deleted."""

    location: str
    databases: list[str]
    buckets: dict[str, int]  # bucket -> objects copied
    bytes: int
    deleted: list[str] = []


def split_s3(url: str) -> tuple[str, str]:
    """`s3://BUCKET/PREFIX` -> (BUCKET, PREFIX without slashes at its ends)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise UserInputError(f"{url!r} is not an s3://BUCKET/PREFIX location")
    return parts.netloc, parts.path.strip("/")


def s3_client(endpoint: str | None = None, credentials: Path | None = None):
    """A boto3 S3 client: boto3's defaults, or `endpoint` and the Secret's files in `credentials`."""
    import boto3

    kwargs: dict[str, str] = {}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if credentials is not None:
        kwargs["aws_access_key_id"] = read_secret_file(credentials / "access-key-id", "the S3 credential file")
        kwargs["aws_secret_access_key"] = read_secret_file(credentials / "secret-access-key", "the S3 credential file")
    return boto3.Session().client("s3", **kwargs)  # not boto3's default session, which keeps its first config


def _keys(client, bucket: str, prefix: str = ""):
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"], item["Size"]


def _pg_env(password_file: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if password_file is not None:
        env["PGPASSWORD"] = read_secret_file(password_file, "the PostgreSQL password file")
    return env


def _database_url(url: str, database: str) -> str:
    parts = urlsplit(libpq_url(url))
    return urlunsplit(parts._replace(path="/" + database))


def _pg(cmd: list[str], what: str, password_file: Path | None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=_pg_env(password_file))
    if done.returncode != 0:
        raise ChexopsError(f"{what} failed: {(done.stderr or done.stdout).strip()[-1500:]}")


def dump_databases(url: str, databases: list[str], folder: Path, password_file: Path | None = None) -> None:
    """`pg_dump --format=custom` of each database on the server of `url` into `folder/DB.dump`."""
    for database in databases:
        target = folder / f"{database}.dump"
        cmd = [pg_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={target}", _database_url(url, database)]
        _pg(cmd, f"pg_dump of {database}", password_file)


def _stamps(client, bucket: str, prefix: str) -> tuple[list[str], set[str]]:
    """The backups under the prefix (sorted, oldest first) and those that are complete."""
    base = f"{prefix}/" if prefix else ""
    stamps: set[str] = set()
    complete: set[str] = set()
    for key, _ in _keys(client, bucket, base):
        stamp, _, rest = key[len(base) :].partition("/")
        stamps.add(stamp)
        if rest == MANIFEST:
            complete.add(stamp)
    return sorted(stamps), complete


def _retain(client, bucket: str, prefix: str, keep: int) -> list[str]:
    stamps, complete = _stamps(client, bucket, prefix)
    done = [s for s in stamps if s in complete]
    kept = set(done[-keep:])
    newest = done[-1] if done else ""
    doomed = [s for s in stamps if s not in kept and (s in complete or s < newest)]
    base = f"{prefix}/" if prefix else ""
    for stamp in doomed:
        keys = [{"Key": k} for k, _ in _keys(client, bucket, f"{base}{stamp}/")]
        for start in range(0, len(keys), 1000):
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys[start : start + 1000]})
    return doomed


def run_backup(
    to: str,
    *,
    buckets: list[str],
    keep: int,
    postgres: str | None = None,
    databases: list[str] | None = None,
    password_file: Path | None = None,
    dumps: Path | None = None,
    destination=None,
    source=None,
) -> PlatformBackupResult:
    """One backup to `to` (s3://BUCKET/PREFIX): the dumps, the buckets' objects, the manifest; then retention."""
    bucket, prefix = split_s3(to)
    if (postgres is None) == (dumps is None):
        raise UserInputError("give the databases either as --postgres URL with --database, or as --dumps DIR")
    if postgres is not None and not databases:
        raise UserInputError("--postgres needs at least one --database")
    if dumps is not None and not dumps.is_dir():
        raise UserInputError(f"there is no folder of dumps at {dumps}")
    source = source or s3_client()
    destination = destination or source
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"  # sorts by time
    base = f"{prefix}/{stamp}" if prefix else stamp
    total = 0
    with tempfile.TemporaryDirectory(prefix="chexops-backup-") as tmp:
        if postgres is not None:
            dumps = Path(tmp)
            dump_databases(postgres, databases or [], dumps, password_file)
        files = sorted(dumps.glob("*.dump"))
        if not files:
            raise UserInputError(f"no *.dump file in {dumps}")
        for file in files:
            destination.upload_file(str(file), bucket, f"{base}/postgres/{file.name}")
            total += file.stat().st_size
    copied: dict[str, int] = {}
    for name in buckets:
        copied[name] = 0
        for key, size in _keys(source, name):
            body = source.get_object(Bucket=name, Key=key)["Body"]
            destination.upload_fileobj(body, bucket, f"{base}/s3/{name}/{key}")
            copied[name] += 1
            total += size
        log.info("copied %d object(s) of bucket %s", copied[name], name)
    names = [f.stem for f in files]
    manifest = {"created": stamp, "databases": names, "buckets": copied, "bytes": total}
    destination.put_object(Bucket=bucket, Key=f"{base}/{MANIFEST}", Body=json.dumps(manifest).encode())
    deleted = _retain(destination, bucket, prefix, keep)
    return PlatformBackupResult(
        location=f"s3://{bucket}/{base}", databases=names, buckets=copied, bytes=total, deleted=deleted
    )


def restore_backup(
    source_url: str,
    *,
    postgres: str,
    password_file: Path | None = None,
    databases: list[str] | None = None,
    buckets: list[str] | None = None,
    backups=None,
    target=None,
) -> PlatformBackupResult:
    """Restore a backup (`s3://BUCKET/PREFIX/STAMP`, or the newest complete one under `s3://BUCKET/PREFIX`): each
    database dropped and recreated from its dump through `postgres` (a maintenance database's URL), each bucket's
    objects put back. `databases`/`buckets` select (default: all of the backup). Stop MLflow and the service first."""
    bucket, prefix = split_s3(source_url)
    backups = backups or s3_client()
    target = target or s3_client()
    manifest = _manifest(backups, bucket, prefix)
    if manifest is None:
        parent = prefix
        stamps, complete = _stamps(backups, bucket, parent)
        done = [s for s in stamps if s in complete]
        if not done:
            raise UserInputError(f"there is no complete backup at {source_url}")
        prefix = f"{parent}/{done[-1]}" if parent else done[-1]
        manifest = _manifest(backups, bucket, prefix)
    wanted_db = databases or manifest["databases"]
    wanted_buckets = buckets if buckets is not None else list(manifest["buckets"])
    unknown = sorted(set(wanted_db) - set(manifest["databases"])) + sorted(
        set(wanted_buckets) - set(manifest["buckets"])
    )
    if unknown:
        raise UserInputError(f"the backup s3://{bucket}/{prefix} has no {', '.join(unknown)}")
    total = 0
    with tempfile.TemporaryDirectory(prefix="chexops-restore-") as tmp:
        for database in wanted_db:
            file = Path(tmp) / f"{database}.dump"
            backups.download_file(bucket, f"{prefix}/postgres/{database}.dump", str(file))
            total += file.stat().st_size
            cmd = [pg_tool("pg_restore"), "--clean", "--if-exists", "--create", "--no-owner", "--exit-on-error"]
            _pg([*cmd, f"--dbname={libpq_url(postgres)}", str(file)], f"pg_restore of {database}", password_file)
    restored: dict[str, int] = {}
    for name in wanted_buckets:
        restored[name] = 0
        try:
            target.head_bucket(Bucket=name)
        except Exception:  # noqa: BLE001 - a missing bucket (404) is made; any other error shows at create
            target.create_bucket(Bucket=name)
        base = f"{prefix}/s3/{name}/"
        for key, size in _keys(backups, bucket, base):
            target.upload_fileobj(backups.get_object(Bucket=bucket, Key=key)["Body"], name, key[len(base) :])
            restored[name] += 1
            total += size
    return PlatformBackupResult(
        location=f"s3://{bucket}/{prefix}", databases=list(wanted_db), buckets=restored, bytes=total
    )


def _manifest(client, bucket: str, prefix: str) -> dict | None:
    try:
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST}")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return json.loads(body)
