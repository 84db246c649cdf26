"""The manifest `chexops data prepare` writes next to the CSVs: per-file sha256, whose hash is the data version."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from chexops.core.errors import DataError

MANIFEST = "manifest.json"


MANIFEST_FORMAT = 1


def data_version(manifest: dict[str, Any]) -> str:
    """The hash of a manifest's canonical JSON (first 12 hex digits, as `chexops train`'s data versions)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def manifest_version(csv_path: str | Path) -> dict[str, str] | None:
    """`{"data_version", "manifest_sha256"}` of the `data prepare` manifest next to a CSV, or None."""
    path = Path(csv_path).parent / MANIFEST
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
        version = recorded["data_version"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is not a readable data prepare manifest: {exc}") from None
    return {"prepared_data_version": str(version), "manifest_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
