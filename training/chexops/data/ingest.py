"""`chexops data ingest`: copy a CheXpert tree (a folder or `s3://BUCKET/PREFIX`) to where the pipeline
reads it (MinIO's `s3://chexops-data/raw/...`), or a prepared tree from MinIO back to a node's cache.

Resumable: it lists both sides and sends only the objects missing at the destination or differing
from the source (size, then content: the S3 ETag against a local file's MD5, or both ETags), so a
rerun after an interruption sends what the first run did not. Each object is written whole or not
at all (one PUT; a temporary file and a rename locally), so an interrupted copy leaves no half object.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from chexops.core.errors import UserInputError
from chexops.core.results import Result
from chexops.data.prepare import Location, Store

log = logging.getLogger(__name__)

# The part size that `aws s3 cp` and boto3 use for multipart uploads: a multipart ETag ("<md5>-<parts>")
# is recomputed locally with it.
PART_SIZE = 8 * 1024 * 1024


class IngestSummary(Result):
    source: str
    dest: str
    objects: int  # at the source
    sent: int  # copied now: missing or changed at the destination
    missing: int
    changed: int
    unchanged: int  # already at the destination, same content
    bytes_sent: int
    seconds: float


def _size(stamp: str) -> int:
    return int(stamp.split(":", 1)[0])


def _etag(stamp: str) -> str:
    return stamp.split(":", 1)[1]


def local_etag(path: Path, parts_like: str = "") -> str:
    """The ETag S3 gives this file: its MD5, or (when `parts_like` is a multipart ETag) the MD5 of its
    8 MiB parts' MD5s followed by "-<parts>"."""
    if "-" not in parts_like:
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    parts = []
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(PART_SIZE), b""):
            parts.append(hashlib.md5(block, usedforsecurity=False).digest())
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


def _same(rel: str, src: Store, src_stamp: str, dst: Store, dst_stamp: str) -> bool:
    """True when the destination's object has the source's content (sizes are already equal)."""
    s3_src, s3_dst = src.location.is_s3, dst.location.is_s3
    if s3_src and s3_dst:
        a, b = _etag(src_stamp), _etag(dst_stamp)
        if ("-" in a) != ("-" in b):  # a multipart ETag and a plain one: the size is all there is to compare
            return True
        return a == b
    if not s3_src and not s3_dst:
        return local_etag(src.root / rel) == local_etag(dst.root / rel)
    local, remote_stamp = (dst.root / rel, src_stamp) if s3_src else (src.root / rel, dst_stamp)
    remote = _etag(remote_stamp)
    return local_etag(local, remote) == remote


def _check(store: Store, role: str) -> None:
    """One clear line for a location that cannot be read (a missing folder, a bucket, credentials)."""
    if not store.location.is_s3:
        if role == "source" and not store.root.is_dir():
            raise UserInputError(f"--source {store.location.url}: no such folder.")
        return
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _ = store.location.bucket_prefix()
    try:
        store.client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise UserInputError(f"--{role} {store.location.url}: bucket {bucket!r} is not reachable ({code}).") from exc
    except BotoCoreError as exc:  # no credentials, an unknown profile, an endpoint that does not answer
        raise UserInputError(f"--{role} {store.location.url}: {exc}") from exc


def ingest(
    source: Location,
    dest: Location,
    *,
    workers: int = 8,
    progress: bool = False,
    on_sent: Callable[[str], None] | None = None,
) -> IngestSummary:
    """Copy every object under `source` that `dest` lacks or holds with other content; `on_sent(rel)` is
    called after each object is written (a test interrupts there)."""
    if workers < 1:
        raise UserInputError("--workers must be at least 1.")
    if source.url.rstrip("/") == dest.url.rstrip("/") and source.endpoint_url == dest.endpoint_url:
        raise UserInputError("--source and --dest are the same location.")
    started = time.monotonic()
    src, dst = Store(source), Store(dest)
    _check(src, "source")
    _check(dst, "dest")
    # A key ending in "/" is a folder marker (Horizon's "Create Folder" in a Swift container), not a file.
    have_src = {rel: stamp for rel, stamp in src.list().items() if rel and not rel.endswith("/")}
    if not have_src:
        raise UserInputError(f"--source {source.url}: no objects there.")
    have_dst = dst.list()
    missing = sorted(rel for rel in have_src if rel not in have_dst)
    changed = sorted(
        rel
        for rel in have_src
        if rel in have_dst
        and (_size(have_src[rel]) != _size(have_dst[rel]) or not _same(rel, src, have_src[rel], dst, have_dst[rel]))
    )
    todo = missing + changed
    log.info("%s → %s: %d objects, %d missing, %d changed", source.url, dest.url, len(have_src), len(missing),
             len(changed))

    def send(rel: str) -> int:
        data = src.read(rel)
        dst.write(rel, data)
        return len(data)

    from tqdm import tqdm

    sent = bytes_sent = 0
    total = sum(_size(have_src[rel]) for rel in todo)
    with tqdm(total=total, unit="B", unit_scale=True, desc="ingest", disable=not progress) as bar, ThreadPoolExecutor(
        workers
    ) as pool:
        futures = {pool.submit(send, rel): rel for rel in todo}
        try:
            for future in as_completed(futures):
                size = future.result()
                sent += 1
                bytes_sent += size
                bar.update(size)
                if on_sent is not None:
                    on_sent(futures[future])
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return IngestSummary(
        source=source.url,
        dest=dest.url,
        objects=len(have_src),
        sent=sent,
        missing=len(missing),
        changed=len(changed),
        unchanged=len(have_src) - len(todo),
        bytes_sent=bytes_sent,
        seconds=round(time.monotonic() - started, 3),
    )
