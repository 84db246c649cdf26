"""Radiographs to send to a service: the team's shared real ones when present, else generated images."""

from __future__ import annotations

import logging
from pathlib import Path

from chexops.core import paths
from chexops.data.chexpert import DATASET_DIR

log = logging.getLogger(__name__)


def sample_images(data_root: Path) -> list[Path]:
    real = paths.shared_data() / "real-cxr"
    found = sorted([*real.glob("*.png"), *real.glob("*.dcm")]) if real.is_dir() else []
    if found:
        return found
    log.info("No shared radiographs at %s: sending generated images instead", real)
    return sorted((data_root / DATASET_DIR / "valid").rglob("*.jpg"))[:3]
