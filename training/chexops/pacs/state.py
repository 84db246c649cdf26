"""The gateway's state directory: the outbox of received images and the ledger of reports sent.

    outbox/<key>.dcm    the received image, de-identified (`deidentify`: only what /predict and the report need)
    outbox/<key>.json   its progress: arrival time, attempts, next attempt, the /predict answer once there
    done/<key>.json     a report was stored back: priority, request_id and the study's key (for feedback)

`key` is a salted SHA-256 of the SOP Instance UID, never the UID itself: the ledger, kept for good, holds no
UID of the hospital's. The salt (`salt`, made once) keeps the keys from being looked up by hashing known UIDs.
Each file is written to a temporary sibling, fsynced, renamed, and its directory fsynced: an image is
acknowledged only after it is on disk.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any, Iterator

from pydicom.dataset import Dataset

from chexops.core.files import fsync_write

# What the service and the report need from an image, and nothing that names or locates a patient:
# the SOP, study and series UIDs (to file the report with the study; the outbox copy is deleted once it is sent),
# what says it is a chest radiograph, and the pixel module with the rescale and window that decode applies.
KEPT = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "BodyPartExamined",
    "ViewPosition", "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration", "NumberOfFrames", "PixelSpacing",
    "ImagerPixelSpacing", "RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth",
    "VOILUTFunction", "ModalityLUTSequence", "VOILUTSequence", "PixelIntensityRelationship",
    "PixelIntensityRelationshipSign", "LossyImageCompression", "PixelData",
)  # fmt: skip


def deidentify(ds: Dataset) -> Dataset:
    """A copy of `ds` with only the `KEPT` attributes (an allow-list: private and unknown tags never pass)."""
    out = Dataset()
    for keyword in KEPT:
        if keyword in ds:
            out[keyword] = ds[keyword]
    out.PatientIdentityRemoved = "YES"
    out.file_meta = ds.file_meta
    return out


class State:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.outbox, self.done = self.root / "outbox", self.root / "done"
        self.outbox.mkdir(parents=True, exist_ok=True)
        self.done.mkdir(parents=True, exist_ok=True)
        salt = self.root / "salt"
        if not salt.exists():
            fsync_write(salt, secrets.token_hex(16).encode())
        self._salt = salt.read_bytes()

    def key(self, uid: str) -> str:
        return hashlib.sha256(self._salt + uid.encode()).hexdigest()[:32]

    def known(self, key: str) -> bool:
        return (self.done / f"{key}.json").exists() or (self.outbox / f"{key}.json").exists()

    def enqueue(self, key: str, dicom: bytes) -> None:
        """The image, then its progress record (the record's presence is what makes it an outbox item)."""
        fsync_write(self.outbox / f"{key}.dcm", dicom)
        self.save(key, {"arrived": time.time(), "attempts": 0, "next": 0.0})

    def save(self, key: str, record: dict[str, Any]) -> None:
        fsync_write(self.outbox / f"{key}.json", json.dumps(record).encode())

    def image(self, key: str) -> bytes:
        return (self.outbox / f"{key}.dcm").read_bytes()

    def due(self, now: float | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Outbox items whose next attempt is due, oldest arrival first."""
        now = time.time() if now is None else now
        items = []
        for path in self.outbox.glob("*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("next", 0) <= now:
                items.append((record.get("arrived", 0), path.stem, record))
        for _, key, record in sorted(items):
            yield key, record

    def finish(self, key: str, record: dict[str, Any]) -> None:
        """The report is stored back: record it in the ledger, then drop the outbox item."""
        fsync_write(self.done / f"{key}.json", json.dumps(record).encode())
        for suffix in (".dcm", ".json"):
            (self.outbox / f"{key}{suffix}").unlink(missing_ok=True)

    def reports_for_study(self, study_key: str) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.done.glob("*.json")):
            record = json.loads(path.read_text())
            if record.get("study") == study_key:
                found.append(record)
        return found

    def pending(self) -> int:
        return sum(1 for _ in self.outbox.glob("*.json"))
