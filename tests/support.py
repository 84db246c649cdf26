"""Test helpers: the CLI as a subprocess, hand-made CheXpert CSVs. (Plain functions live here, not in
conftest.py: tests/infra has a conftest of its own, and `import conftest` would be ambiguous.)"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from chexops.core.labels import CHEXPERT_LABELS, META_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`chexops ARGS` in a child process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "chexops", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, **(env or {})})


def write_chexpert(root: Path, rows: list[dict], name: str = "train.csv", images: bool = True) -> Path:
    """A CheXpert-layout CSV under root/CheXpert-v1.0-small with (optionally) small JPEGs."""
    folder = root / "CheXpert-v1.0-small"
    folder.mkdir(parents=True, exist_ok=True)
    columns = [*META_COLUMNS, *CHEXPERT_LABELS]
    with open(folder / name, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    if images:
        rng = np.random.default_rng(0)
        for row in rows:
            path = root / row["Path"]
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path)
    return folder / name


def make_rows(n_patients: int = 6, studies: int = 2) -> list[dict]:
    rows = []
    for p in range(1, n_patients + 1):
        for s in range(1, studies + 1):
            row = {"Path": f"CheXpert-v1.0-small/train/patient{p:05d}/study{s}/view1_frontal.jpg", "Sex": "Female" if p % 2 else "Male",
                   "Age": str(40 + p), "Frontal/Lateral": "Frontal", "AP/PA": "AP" if s % 2 else "PA"}
            for j, label in enumerate(CHEXPERT_LABELS):
                row[label] = ["1.0", "0.0", "-1.0", ""][(p + s + j) % 4]
            rows.append(row)
    rows.append({**rows[0], "Path": "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg", "Frontal/Lateral": "Lateral", "AP/PA": ""})
    return rows


def dicom_dataset(values: np.ndarray | None, modality: str = "DX", bits: int = 12, photometric: str = "MONOCHROME2",
                  rescale: tuple[float, float] | None = None):
    """A DICOM Part 10 dataset carrying patient identifiers, with `values` (uint16, H×W) as pixel data."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Modality, ds.PatientName, ds.PatientID = modality, "Doe^Jane", "ID-12345"
    if values is not None:
        ds.Rows, ds.Columns = values.shape
        ds.SamplesPerPixel = 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
        ds.PhotometricInterpretation = photometric
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.PixelData = values.astype(np.uint16).tobytes()
    return ds


def dicom_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
