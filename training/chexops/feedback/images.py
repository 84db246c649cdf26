"""Where the kept images of predictions live: object storage, not database blobs (`CHEXOPS_IMAGE_STORE`).

- unset: a folder beside the SQLite store (`$CHEXOPS_HOME/feedback/images` for the default one), or
  `$CHEXOPS_HOME/feedback/images` for a PostgreSQL store;
- a path: that folder;
- `s3://BUCKET/PREFIX`: S3 (MinIO in the cluster) through boto3, with the standard AWS environment
  (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`).

`put` is durable when it returns: a folder writes a temporary file, fsyncs it, renames it into place and fsyncs
the folder; S3 answers a PUT once it has stored the object. Keys are `<first two characters>/<request id>.<png|jpg>`:
a random id, no patient identifier. Failures that mean "cannot keep it now" (a full disk, S3 unreachable or
refusing) raise `Unavailable`, as the database does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from chexops.core.errors import ConfigError
from chexops.core.files import fsync_write
from chexops.feedback.errors import Unavailable

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"


def image_key(request_id: str, data: bytes) -> str:
    suffix = ".jpg" if data.startswith(JPEG_MAGIC) else ".png"
    return f"{request_id[:2]}/{request_id}{suffix}"


class ImageStore(Protocol):
    location: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...


class FolderImages:
    """Images as files under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.location = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"image key {key!r} leaves the image folder")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            fsync_write(path, data)
        except OSError as exc:
            raise Unavailable(f"the image folder {self.root} cannot keep the image ({exc.strerror or exc})") from None

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Images:
    """Images as objects under a prefix of a bucket."""

    def __init__(self, bucket: str, prefix: str = ""):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.location = f"s3://{bucket}/{self.prefix}".rstrip("/")
        config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
        self.client = boto3.session.Session().client("s3", config=config)  # its own session: thread-safe use

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, what)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise Unavailable(f"{self.location}: {exc.response.get('Error', {}).get('Code', exc)}") from None
        except BotoCoreError as exc:
            raise Unavailable(f"{self.location} cannot be reached ({exc})") from None

    def put(self, key: str, data: bytes) -> None:
        self._call("put_object", Key=self._name(key), Body=data)

    def get(self, key: str) -> bytes | None:
        answer = self._call("get_object", Key=self._name(key))
        return None if answer is None else answer["Body"].read()

    def delete(self, key: str) -> None:
        self._call("delete_object", Key=self._name(key))


def open_image_store(spec: str | None, default: Path) -> ImageStore:
    """The image store `spec` names (`CHEXOPS_IMAGE_STORE`); blank: the folder `default`."""
    spec = (spec or "").strip()
    if spec.startswith("s3://"):
        bucket, _, prefix = spec[len("s3://") :].partition("/")
        if not bucket:
            raise ConfigError(f"CHEXOPS_IMAGE_STORE={spec!r} names no bucket: use s3://BUCKET/PREFIX")
        return S3Images(bucket, prefix)
    if "://" in spec:
        raise ConfigError(f"CHEXOPS_IMAGE_STORE must be a folder or s3://BUCKET/PREFIX, got {spec.split('://')[0]}://")
    return FolderImages(Path(spec).expanduser() if spec else default)
