"""`chexops backup run` and `chexops backup restore`: the platform's nightly backup (PostgreSQL databases and S3
buckets to a backup bucket, with retention) and its restore (docs/operations.md, "Backups and restore")."""

from __future__ import annotations

from pathlib import Path

import click

from chexops.cli.output import Output, result_output

_FILE = click.Path(dir_okay=False, path_type=Path)
_DIR = click.Path(file_okay=False, path_type=Path)


@click.group()
def backup() -> None:
    """Backups of the platform's databases and buckets."""


def _postgres_options(func):
    func = click.option("--password-file", type=_FILE, default=None, help="A file holding the PostgreSQL password.")(
        func
    )
    return click.option("--database", "databases", multiple=True, help="A database (repeat) [default: all].")(func)


@backup.command("run")
@click.option("--to", "to", required=True, help="The backups' location, s3://BUCKET/PREFIX.")
@click.option("--bucket", "buckets", multiple=True, help="A source bucket copied whole (repeat).")
@click.option("--keep", type=click.IntRange(min=1), default=14, show_default=True, help="Complete backups kept.")
@click.option("--postgres", default=None, help="The PostgreSQL server, as a URL without password; pg_dump runs here.")
@click.option("--dumps", type=_DIR, default=None, help="Or: a folder of DB.dump files made already (pg_dump -Fc).")
@click.option("--to-endpoint", default=None, help="The destination's S3 endpoint [default: the source's].")
@click.option("--to-credentials", type=_DIR, default=None, help="The destination's credential files' folder.")
@_postgres_options
@result_output
def backup_run(
    to: str,
    buckets: tuple[str, ...],
    keep: int,
    postgres: str | None,
    dumps: Path | None,
    to_endpoint: str | None,
    to_credentials: Path | None,
    databases: tuple[str, ...],
    password_file: Path | None,
) -> Output:
    """One backup: each database's dump and each bucket's objects under TO/STAMP/, then retention."""
    from chexops.infra.backup import run_backup, s3_client

    destination = s3_client(to_endpoint, to_credentials) if (to_endpoint or to_credentials) else None
    result = run_backup(
        to,
        buckets=list(buckets),
        keep=keep,
        postgres=postgres,
        databases=list(databases),
        password_file=password_file,
        dumps=dumps,
        destination=destination,
    )
    objects = sum(result.buckets.values())
    return Output(
        result,
        f"Backed up {len(result.databases)} database(s) and {objects} object(s) ({result.bytes / 2**20:.1f} MiB) "
        f"to {result.location}; retention deleted {len(result.deleted)}.",
    )


@backup.command("restore")
@click.argument("source")
@click.option("--postgres", required=True, help="A maintenance database's URL (…/postgres), without password.")
@click.option("--bucket", "buckets", multiple=True, help="A bucket to put back (repeat) [default: all].")
@click.option("--no-buckets", is_flag=True, help="Restore the databases only.")
@click.option("--from-endpoint", default=None, help="The backups' S3 endpoint [default: the target's].")
@click.option("--from-credentials", type=_DIR, default=None, help="The backups' credential files' folder.")
@_postgres_options
@result_output
def backup_restore(
    source: str,
    postgres: str,
    buckets: tuple[str, ...],
    no_buckets: bool,
    from_endpoint: str | None,
    from_credentials: Path | None,
    databases: tuple[str, ...],
    password_file: Path | None,
) -> Output:
    """Restore SOURCE (s3://BUCKET/PREFIX/STAMP, or the newest under s3://BUCKET/PREFIX). Stop MLflow and the
    service first: each database is dropped and recreated."""
    from chexops.infra.backup import restore_backup, s3_client

    backups = s3_client(from_endpoint, from_credentials) if (from_endpoint or from_credentials) else None
    result = restore_backup(
        source,
        postgres=postgres,
        password_file=password_file,
        databases=list(databases) or None,
        buckets=[] if no_buckets else (list(buckets) or None),
        backups=backups,
    )
    return Output(
        result,
        f"Restored {', '.join(result.databases) or 'no database'} and "
        f"{sum(result.buckets.values())} object(s) from {result.location}.",
    )
