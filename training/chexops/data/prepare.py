"""`chexops data prepare`: a CheXpert copy (full size or small, local or `s3://`) → images resized for
training, with a manifest whose hash is the data version.

- Layout: the source is a dataset folder (`CheXpert-v1.0/`, `CheXpert-v1.0-small/`: its CSVs at the
  top) or the folder holding exactly one. The output holds the same dataset folder, the same relative
  image paths (8-bit grey, shorter side `--size`, never enlarged) and the CSVs with the rows of failed
  images left out, so `data.root: OUT` trains on it unchanged.
- Decoding: JPEG draft mode (decode at 1/2, 1/4 or 1/8 scale) before the resize; grey scale and
  resize are `chexops.imaging.preprocessing`'s own. Images are processed in `--workers` processes.
- Resumable and idempotent: each finished image is journaled under `OUT/.prepare/`; a rerun skips an
  image whose output still has its journaled checksum and whose source is unchanged (size and mtime,
  or S3 ETag). The manifest (`manifest.json` next to the CSVs) lists every output's sha256, sorted,
  with no time or path of the source in it: the same data give the same manifest and data version.
- Bad images (missing or undecodable) are counted and named; the step fails (exit 1) only when their
  share is above `--max-bad-fraction`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.results import Result
from chexops.data.manifest import MANIFEST, MANIFEST_FORMAT, data_version
from chexops.imaging.preprocessing import open_image, resize_grey, shorter_side_to, to_grey

log = logging.getLogger(__name__)

JOURNAL_DIR = ".prepare"
JPEG_QUALITY = 95
RESAMPLE = "bilinear"
_JOURNAL_EVERY = 64  # finished images per journal part: at most this many are redone after a kill


class PrepareSummary(Result):
    """A prepared dataset: its manifest and data version; images in all, prepared now, skipped (done before)
    and bad ({path, reason} each); the CSVs written; the workers and seconds it took."""

    manifest: str
    data_version: str
    dataset: str
    size: int
    images: int
    prepared: int
    skipped: int
    bad: int
    failed: list[dict[str, str]]
    csv: list[str]
    workers: int
    seconds: float


# Storage: a local folder or an S3 prefix, addressed by POSIX keys relative to it.


@dataclass(frozen=True)
class Location:
    url: str
    endpoint_url: str | None = None
    profile: str | None = None  # an AWS profile (~/.aws/config) for this side; default: boto3's own chain

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    def bucket_prefix(self) -> tuple[str, str]:
        rest = self.url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise UserInputError(f"{self.url}: an S3 location is s3://BUCKET[/PREFIX].")
        return bucket, prefix.strip("/")

    def key(self, rel: str) -> str:
        prefix = self.bucket_prefix()[1]
        return f"{prefix}/{rel}" if prefix else rel


class Store:
    """Read, write and list objects under a location (one per process: S3 clients are made after fork)."""

    def __init__(self, location: Location):
        self.location = location
        self._client = None
        if not location.is_s3:
            self.root = Path(location.url)

    @property
    def client(self):
        if self._client is None:
            import boto3

            # A session of its own: boto3's default one keeps the AWS config it first read, for the process's life.
            session = boto3.Session(profile_name=self.location.profile or None)
            self._client = session.client(
                "s3", endpoint_url=self.location.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
            )
        return self._client

    def list(self, under: str = "") -> dict[str, str]:
        """{relative key: stamp} of the objects under `under` (stamp: size and mtime, or size and ETag)."""
        out: dict[str, str] = {}
        if not self.location.is_s3:
            base = self.root / under
            if base.is_dir():
                for path in base.rglob("*"):
                    if path.is_file():
                        st = path.stat()
                        out[path.relative_to(self.root).as_posix()] = f"{st.st_size}:{st.st_mtime_ns}"
            return out
        bucket, _ = self.location.bucket_prefix()
        prefix = self.location.key(under)
        cut = len(self.location.key(""))
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"][cut:].lstrip("/")] = f"{obj['Size']}:{obj['ETag'].strip(chr(34))}"
        return out

    def read(self, rel: str) -> bytes:
        if not self.location.is_s3:
            return (self.root / rel).read_bytes()
        bucket, _ = self.location.bucket_prefix()
        return self.client.get_object(Bucket=bucket, Key=self.location.key(rel))["Body"].read()

    def write(self, rel: str, data: bytes) -> None:
        """Whole or nothing: a temporary file and a rename locally; one PUT on S3."""
        if self.location.is_s3:
            bucket, _ = self.location.bucket_prefix()
            self.client.put_object(Bucket=bucket, Key=self.location.key(rel), Body=data)
            return
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def delete(self, rel: str) -> None:
        if self.location.is_s3:
            bucket, _ = self.location.bucket_prefix()
            self.client.delete_object(Bucket=bucket, Key=self.location.key(rel))
        else:
            (self.root / rel).unlink(missing_ok=True)

    def checksum(self, rel: str) -> str:
        return hashlib.sha256(self.read(rel)).hexdigest()


# One image.


def resize_bytes(data: bytes, size: int, suffix: str) -> tuple[bytes, int, int]:
    """An image file's bytes → (8-bit grey JPEG or PNG bytes, width, height), shorter side `size`."""
    image = open_image(io.BytesIO(data), min_side=size)
    grey = to_grey(image)
    width, height = shorter_side_to(grey.shape[1], grey.shape[0], size)
    small = resize_grey(grey, width, height, RESAMPLE) if (width, height) != (grey.shape[1], grey.shape[0]) else grey
    pixels = Image.fromarray(np.round(np.clip(small, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    if suffix == ".png":
        pixels.save(buffer, format="PNG")
    else:
        pixels.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), width, height


_WORKER: dict[str, Any] = {}


def _init_worker(source: Location, out: Location, size: int) -> None:
    try:  # die with the parent (a SIGKILLed run leaves no worker behind)
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    _WORKER.update(source=Store(source), out=Store(out), size=size)


def _work(task: tuple[str, str, str]) -> dict[str, Any]:
    src_rel, out_rel, stamp = task
    try:
        data = _WORKER["source"].read(src_rel)
    except Exception as exc:  # noqa: BLE001 - OSError locally, botocore's NoSuchKey and friends on S3
        return {"path": out_rel, "error": f"missing ({type(exc).__name__})"}
    try:
        encoded, width, height = resize_bytes(data, _WORKER["size"], PurePosixPath(out_rel).suffix.lower())
    except Exception as exc:  # noqa: BLE001 - decoders fail in many ways on damaged files
        return {"path": out_rel, "error": f"unreadable ({type(exc).__name__}: {str(exc)[:120]})"}
    try:
        _WORKER["out"].write(out_rel, encoded)
    except Exception as exc:  # noqa: BLE001 - a full disk, a missing bucket, no credentials
        return {"path": out_rel, "fatal": f"cannot write {out_rel}: {type(exc).__name__}: {exc}"}
    return {
        "path": out_rel,
        "sha256": hashlib.sha256(encoded).hexdigest(),
        "bytes": len(encoded),
        "width": width,
        "height": height,
        "source_stamp": stamp,
    }


# The dataset.


def _find_dataset(source: Store) -> tuple[str, list[str], dict[str, str]]:
    """(dataset folder key, its CSV keys, the source listing): the source itself when CSVs are at its
    top, else its one child that has them."""
    listing = source.list()
    tops = sorted(k for k in listing if "/" not in k and k.endswith(".csv"))
    if tops:
        return "", tops, listing
    holders = sorted({k.split("/")[0] for k in listing if k.count("/") == 1 and k.endswith(".csv")})
    if len(holders) != 1:
        found = ", ".join(holders) or "none"
        raise UserInputError(
            f"{source.location.url}: expected a CheXpert dataset folder (CSVs at its top) or a folder holding "
            f"exactly one; folders with CSVs found: {found}."
        )
    folder = holders[0]
    return (
        folder,
        sorted(k for k in listing if k.startswith(folder + "/") and k.count("/") == 1 and k.endswith(".csv")),
        listing,
    )


def _read_csv(text: str, where: str) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or "Path" not in [c.strip() for c in rows[0]]:
        raise UserInputError(f"{where}: not a CheXpert CSV (no 'Path' column in the header).")
    return rows[0], rows[1:]


def _journal_entries(out: Store) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for rel in sorted(out.list(JOURNAL_DIR)):
        for line in out.read(rel).decode().splitlines():
            if line.strip():
                entry = json.loads(line)
                entries[entry["path"]] = entry
    return entries


def prepare(
    source_url: str,
    out_url: str,
    size: int,
    workers: int | None = None,
    max_bad_fraction: float = 0.01,
    endpoint_url: str | None = None,
) -> PrepareSummary:
    """Prepare the dataset and say what was done. Raises
    `UserInputError` for a wrong input, `ChexopsError` when too many images are bad."""
    started = time.monotonic()
    if not 16 <= size <= 4096:
        raise UserInputError(f"--size must be within 16..4096, got {size}.")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise UserInputError(f"--max-bad-fraction must be within 0..1, got {max_bad_fraction}.")
    workers = workers or os.cpu_count() or 1
    src_loc, out_loc = (
        Location(source_url.rstrip("/") or "/", endpoint_url),
        Location(out_url.rstrip("/") or "/", endpoint_url),
    )
    if not src_loc.is_s3 and not Path(src_loc.url).is_dir():
        raise UserInputError(f"--source {source_url} is not a folder.")
    if src_loc.url == out_loc.url:
        raise UserInputError("--out must differ from --source.")
    source, out = Store(src_loc), Store(out_loc)
    try:
        folder, csv_keys, listing = _find_dataset(source)
    except ChexopsError:
        raise
    except Exception as exc:  # noqa: BLE001 - S3 errors: no bucket, no credentials, no endpoint
        raise UserInputError(f"cannot list --source {source_url}: {type(exc).__name__}: {exc}") from None
    dataset = folder or PurePosixPath(src_loc.url.rstrip("/")).name

    # Every image the CSVs name, once: CSV path → (source key, output key).
    csvs: dict[str, tuple[list[str], list[list[str]]]] = {}
    images: dict[str, tuple[str, str]] = {}
    for key in csv_keys:
        header, rows = _read_csv(source.read(key).decode("utf-8-sig"), f"{source_url}/{key}")
        csvs[PurePosixPath(key).name] = (header, rows)
        col = [c.strip() for c in header].index("Path")
        for row in rows:
            if len(row) <= col or not row[col].strip():
                continue
            parts = PurePosixPath(row[col].strip()).parts
            if not parts or parts[0] == "/" or ".." in parts:
                raise UserInputError(
                    f"{source_url}/{key}: the image path {row[col].strip()!r} leaves the dataset folder."
                )
            inner = PurePosixPath(*parts[1:]) if len(parts) > 1 and parts[0] == dataset else PurePosixPath(*parts)
            images.setdefault(row[col].strip(), (f"{folder}/{inner}" if folder else str(inner), f"{dataset}/{inner}"))
    if not images:
        raise UserInputError(f"{source_url}: the CSVs name no image.")

    # Done before (journal), still in place with the same checksum, from an unchanged source: skipped.
    journal = _journal_entries(out)
    present = out.list(dataset)
    done: dict[str, dict[str, Any]] = {}
    todo: list[tuple[str, str, str]] = []
    for src_key, out_rel in sorted(images.values()):
        stamp = listing.get(src_key, "")
        entry = journal.get(out_rel)
        if (
            entry
            and stamp
            and entry.get("source_stamp") == stamp
            and out_rel in present
            and out.checksum(out_rel) == entry["sha256"]
        ):
            done[out_rel] = entry
        else:
            todo.append(
                (src_key, out_rel, stamp)
            )  # a source not listed (no stamp) is counted missing by the worker's read
    log.info("%d images: %d already prepared, %d to do, %d workers", len(images), len(done), len(todo), workers)

    failed: dict[str, str] = {}
    pending: list[dict[str, Any]] = []
    part = len(out.list(JOURNAL_DIR))

    def flush() -> None:
        nonlocal part
        if pending:
            out.write(
                f"{JOURNAL_DIR}/part-{part:06d}-{os.getpid()}.jsonl",
                "".join(json.dumps(e) + "\n" for e in pending).encode(),
            )
            part += 1
            pending.clear()

    if todo:
        with ProcessPoolExecutor(
            max_workers=workers, initializer=_init_worker, initargs=(src_loc, out_loc, size)
        ) as pool:
            for result in pool.map(_work, todo, chunksize=max(1, min(16, len(todo) // (4 * workers) or 1))):
                if "fatal" in result:
                    flush()
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise ChexopsError(f"--out {out_url}: {result['fatal']}")
                if "error" in result:
                    failed[result["path"]] = result["error"]
                    continue
                done[result["path"]] = result
                pending.append(result)
                if len(pending) >= _JOURNAL_EVERY:
                    flush()
    flush()

    total = len(images)
    bad = sorted(failed.items())
    if bad:
        log.warning(
            "%d of %d images are bad: %s%s",
            len(bad),
            total,
            "; ".join(f"{p}: {e}" for p, e in bad[:5]),
            " ..." if len(bad) > 5 else "",
        )
    if len(bad) / total > max_bad_fraction:
        raise ChexopsError(
            f"{len(bad)} of {total} images ({len(bad) / total:.2%}) are missing or unreadable, above "
            f"--max-bad-fraction {max_bad_fraction:g}: "
            + "; ".join(f"{p}: {e}" for p, e in bad[:10])
            + (" ..." if len(bad) > 10 else "")
            + ". Nothing is published; a rerun redoes only what is missing."
        )

    # The CSVs without the failed rows, then the manifest.
    failed_csv_paths = {p for p, (_, out_rel) in images.items() if out_rel in failed}
    csv_entries = []
    for name, (header, rows) in sorted(csvs.items()):
        col = [c.strip() for c in header].index("Path")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(r for r in rows if not (len(r) > col and r[col].strip() in failed_csv_paths))
        data = buffer.getvalue().encode()
        out.write(f"{dataset}/{name}", data)
        csv_entries.append(
            {"path": f"{dataset}/{name}", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        )
    files = [{k: e[k] for k in ("path", "sha256", "bytes", "width", "height")} for _, e in sorted(done.items())]
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": dataset,
        "size": size,
        "resample": RESAMPLE,
        "jpeg_quality": JPEG_QUALITY,
        "csv": csv_entries,
        "files": files,
        "failed": [{"path": p, "reason": e} for p, e in bad],
    }
    version = data_version(manifest)
    manifest_rel = f"{dataset}/{MANIFEST}"
    out.write(manifest_rel, json.dumps({**manifest, "data_version": version}, indent=1, sort_keys=True).encode())
    # The journal as one part (the state a later rerun starts from).
    parts = sorted(out.list(JOURNAL_DIR))
    if len(parts) > 1:
        out.write(
            f"{JOURNAL_DIR}/journal.jsonl",
            "".join(json.dumps(done[p], sort_keys=True) + "\n" for p in sorted(done)).encode(),
        )
        for rel in parts:
            if not rel.endswith("/journal.jsonl"):
                out.delete(rel)
    return PrepareSummary(
        manifest=f"{out_loc.url}/{manifest_rel}",
        data_version=version,
        dataset=dataset,
        size=size,
        images=total,
        prepared=len(todo) - len(bad),
        skipped=total - len(todo),
        bad=len(bad),
        failed=[{"path": p, "reason": e} for p, e in bad],
        csv=[e["path"] for e in csv_entries],
        workers=workers,
        seconds=round(time.monotonic() - started, 2),
    )
