"""`chexops demo --pacs`: the clinic's PACS flow end to end on this machine. A local Orthanc, the clinic endpoint
on the demo's model and `chexops pacs serve`; the sample radiographs (DICOM; a generated image wrapped as a CR
where the shared files are absent) are uploaded to Orthanc, routed to the gateway, and each report is read back
from its study in Orthanc. Without Orthanc it says how to install it."""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom

from chexops.core import paths
from chexops.core.processes import ServerProcess, free_port
from chexops.data.samples import sample_images
from chexops.pacs.orthanc import INSTALL, LocalOrthanc
from chexops.pacs.report import read_findings
from chexops.serving.settings import DEV_KEYS

log = logging.getLogger(__name__)
GATEWAY_AET = "CHEXOPS"


def _wrapped(image: Path) -> bytes:
    """A generated JPEG as a minimal CR chest DICOM (8-bit, uncompressed)."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(Image.open(image).convert("L"), dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality, ds.BodyPartExamined = "Demo^Synthetic", "DEMO-1", "CR", "CHEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _radiographs(data_root: Path) -> list[tuple[str, bytes]]:
    found = sample_images(data_root)
    dicoms = [(p.name, p.read_bytes()) for p in found if p.suffix == ".dcm"]
    if not dicoms:
        dicoms = [(f"{p.name} (as CR)", _wrapped(p)) for p in found[:2]]
    seen, unique = set(), []
    for name, data in dicoms:  # one SOP Instance each (two shared files share theirs)
        uid = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
        if uid not in seen:
            seen.add(uid)
            unique.append((name, data))
    return unique


def pacs_flow(model_ref: str, data_root: Path, timeout: float = 240) -> dict[str, Any]:
    if not shutil.which("Orthanc"):
        return {"skipped": f"Orthanc is not installed: {INSTALL}"}
    root = paths.home() / "demo" / "pacs"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    key = DEV_KEYS.split(":")[1]
    port, gateway_port, metrics_port = free_port(), free_port(), free_port()
    env = {**os.environ, "CHEXOPS_HOME": str(paths.home()), "CHEXOPS_API_KEYS": DEV_KEYS, "CHEXOPS_API_KEY": key}
    service = ServerProcess(
        [sys.executable, "-m", "chexops", "serve", "--port", str(port), "--model", model_ref],
        root / "service.log", url=f"http://127.0.0.1:{port}", env=env, timeout=timeout, name="chexops serve",
    )  # fmt: skip
    orthanc = LocalOrthanc(root, GATEWAY_AET, gateway_port)
    argv = [
        sys.executable, "-m", "chexops", "pacs", "serve", "--listen", f"127.0.0.1:{gateway_port}", "--ae-title",
        GATEWAY_AET, "--send-to", orthanc.send_to, "--service", f"http://127.0.0.1:{port}", "--state", root / "state",
        "--metrics", f"127.0.0.1:{metrics_port}", "--orthanc-url", orthanc.url,
    ]  # fmt: skip
    log.info("$ %s", " ".join(str(a) for a in argv[2:]))
    gateway = ServerProcess(
        argv, root / "gateway.log", url=f"http://127.0.0.1:{metrics_port}", ready_path="/metrics", env=env,
        name="chexops pacs serve",
    )  # fmt: skip
    reports = []
    limits = httpx.Limits(max_keepalive_connections=0)
    with orthanc, service, gateway, httpx.Client(base_url=orthanc.url, timeout=60, limits=limits) as client:
        for name, data in _radiographs(data_root):
            uploaded = client.post("/instances", content=data).raise_for_status().json()
            started = time.monotonic()
            client.post("/modalities/chexops/store", json={"Resources": [uploaded["ID"]]}).raise_for_status()
            sr = None
            while sr is None and time.monotonic() - started < 60:
                for instance in client.get(f"/studies/{uploaded['ParentStudy']}/instances").json():
                    got = pydicom.dcmread(io.BytesIO(client.get(f"/instances/{instance['ID']}/file").content))
                    if got.Modality == "SR":
                        sr = got
                time.sleep(0.2)
            if sr is None:
                reports.append({"file": name, "report": None})
                continue
            findings = read_findings(sr)
            flagged = client.get(f"/studies/{uploaded['ParentStudy']}/metadata/ChexopsPriority")
            while flagged.status_code != 200 and time.monotonic() - started < 60:  # the flag follows the report
                time.sleep(0.1)
                flagged = client.get(f"/studies/{uploaded['ParentStudy']}/metadata/ChexopsPriority")
            reports.append(
                {
                    "file": name,
                    "seconds": round(time.monotonic() - started, 2),
                    "priority": flagged.text if flagged.status_code == 200 else "not flagged",
                    "positive": [label for label, (_, _, positive) in findings.items() if positive],
                    "series": sr.SeriesDescription,
                }
            )
    return {"orthanc": "Orthanc 1.x on loopback (stopped)", "log": str(root / "gateway.log"), "reports": reports}


def format_pacs(result: dict[str, Any]) -> list[str]:
    if "skipped" in result:
        return ["", f"PACS flow    skipped: {result['skipped']}"]
    lines = ["", "PACS flow    Orthanc → chexops pacs serve → /predict → DICOM SR back in the study"]
    for item in result["reports"]:
        if item.get("report", True) is None:
            lines.append(f"  {item['file']:<36} no report within 60 s (see {result['log']})")
            continue
        found = ", ".join(item["positive"][:4]) or "no finding above threshold"
        lines.append(f"  {item['file']:<36} SR in {item['seconds']:.1f} s, {item['priority']:<8} {found}")
    return lines
