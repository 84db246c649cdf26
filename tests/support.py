"""Test helpers: the CLI (as a subprocess, `run_cli`, or in this process, `chexops`), a child's clean
environment, hand-made CheXpert CSVs and DICOM files. (Plain functions live here, not in conftest.py:
tests/infra has a conftest of its own, and `import conftest` would be ambiguous.)"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from chexops.core.labels import CHEXPERT_LABELS, META_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def child_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a chexops / bentoml child on `home`, without inherited locations."""
    inherited = ("MLFLOW_TRACKING_URI", "BENTOML_HOME", "PROMETHEUS_MULTIPROC_DIR")
    env = {k: v for k, v in os.environ.items() if k not in inherited and not k.startswith("CHEXOPS_")}
    env.update(
        {
            "CHEXOPS_HOME": str(home),
            "BENTOML_HOME": str(home / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key in ("CHEXOPS_SHARED_DATA",):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra)
    return env


def run_cli(
    *args: str,
    env: dict[str, str | None] | None = None,
    home: Path | None = None,
    timeout: float = 600,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess:
    """`chexops ARGS` in a child process, as a user runs it: in this process's environment, or, with `home`, in a
    clean one on `home` (`child_env`); `env` sets more variables (None removes one)."""
    merged = {**(dict(os.environ) if home is None else child_env(home)), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "chexops", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={k: v for k, v in merged.items() if v is not None},
    )


@contextlib.contextmanager
def environment(**env: str | None):
    """Variables set (or, when None, removed) for the duration."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            if value is None:
                mp.delenv(key, raising=False)
            else:
                mp.setenv(key, value)
        yield


def chexops(*args: str, **env: str | None) -> tuple[int, str, str]:
    """`chexops ARGS` through the real entry point (`chexops.cli.main`) in this process, under `env` (None
    removes a variable): (exit code, stdout, stderr). Faster than `run_cli`; the same exit codes and messages."""
    from chexops.cli import main

    out, err = io.StringIO(), io.StringIO()
    with environment(**env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def chexops_json(*args: str, **env: str | None) -> dict:
    """`chexops ARGS --json` in this process: the JSON it printed; fails the test on a non-zero exit."""
    code, out, err = chexops(*args, "--json", **env)
    assert code == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


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
            row = {
                "Path": f"CheXpert-v1.0-small/train/patient{p:05d}/study{s}/view1_frontal.jpg",
                "Sex": "Female" if p % 2 else "Male",
                "Age": str(40 + p),
                "Frontal/Lateral": "Frontal",
                "AP/PA": "AP" if s % 2 else "PA",
            }
            for j, label in enumerate(CHEXPERT_LABELS):
                row[label] = ["1.0", "0.0", "-1.0", ""][(p + s + j) % 4]
            rows.append(row)
    rows.append(
        {
            **rows[0],
            "Path": "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg",
            "Frontal/Lateral": "Lateral",
            "AP/PA": "",
        }
    )
    return rows


def dicom_dataset(
    values: np.ndarray | None,
    modality: str = "DX",
    bits: int = 12,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
):
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


def reset_moto(endpoint: str) -> None:
    """moto keeps its state per process, across servers: every test starts from an empty S3."""
    import httpx

    httpx.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()


@contextlib.contextmanager
def moto_s3(directory: Path, buckets: list[str], extra_config: str = ""):
    """A real S3-compatible server (moto's server mode) on a free loopback port, in this process's environment
    while open. Credentials as the cluster gives them: the Secret's files, read by boto3 through
    `chexops s3-credentials` (the image's AWS config names it as credential_process); moto accepts any.
    `extra_config` adds to the AWS config file (profiles). Yields {"env", "client", "endpoint"}."""
    import boto3
    from moto.server import ThreadedMotoServer

    from chexops.core.processes import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    reset_moto(f"http://127.0.0.1:{port}")
    secret = directory / "s3-secret"
    secret.mkdir(parents=True, exist_ok=True)
    (secret / "access-key-id").write_text("moto-key-id\n")
    (secret / "secret-access-key").write_text("moto-any-value\n")
    aws_config = directory / "aws-config"
    aws_config.write_text(
        f"[default]\ncredential_process = {sys.executable} -m chexops s3-credentials --dir {secret}\n{extra_config}"
    )
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_CONFIG_FILE": str(aws_config),
           "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        with environment(**env):
            client = boto3.Session().client("s3")  # boto3's default session may hold an earlier test's config
            for bucket in buckets:
                client.create_bucket(Bucket=bucket)
            yield {"env": env, "client": client, "endpoint": env["AWS_ENDPOINT_URL"]}
    finally:
        server.stop()
