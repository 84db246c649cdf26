"""`chexops loadtest`: the clinic's traffic (chexops/delivery/locustfile.py) against an endpoint, headless
Locust in a child process, judged by pass criteria; exit 3 when they fail.

Reports in --out: Locust's output (`locust.log`), its CSVs (`locust_stats.csv`, `locust_failures.csv`, ...), its HTML
report
(`report.html`) and `result.json`. `--record models:/NAME/N` stores the result on that registry
version as `loadtest.*` tags: the staging evidence `chexops promote --to canary` requires.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.results import Result
from chexops.registry import evidence as ev

log = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")
_RECORD = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


class Criteria(BaseModel):
    """Pass criteria: p95 latency over all requests, and the share of failed requests."""

    model_config = ConfigDict(extra="forbid")
    max_p95_ms: float = Field(1000.0, gt=0)
    max_error_ratio: float = Field(0.0, ge=0, le=1)
    expect_version: str | None = Field(None, pattern=r"^\d+$")  # every /predict answer from this registry version


class LoadTestResult(Result):
    """A load test: totals (latency percentiles in ms; None when nothing was answered), the criteria and
    their verdicts ({criterion, value, limit, passed}), per endpoint, failures, reports, and where it was
    recorded (`--record`)."""

    omit_unset = frozenset({"recorded", "expected_version"})

    passed: bool
    host: str
    users: int
    duration_s: int
    requests: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    rps: float
    error_ratio: float | None
    max_p95_ms: float
    max_error_ratio: float
    checks: list[dict[str, Any]]
    endpoints: dict[str, dict[str, Any]]
    failure_reasons: list[dict[str, Any]]
    versions: dict[str, int]  # model version -> /predict answers: which model this load test measured
    expected_version: str | None = None
    at: str
    reports: dict[str, str]
    recorded: str | None = None


def parse_duration(text: str) -> int:
    """`60s`, `2m`, `1h30m`, `90` → seconds."""
    m = _DURATION.match(text.strip())
    seconds = m and sum(int(g or 0) * f for g, f in zip(m.groups(), (3600, 60, 1)))
    if not seconds:
        raise UserInputError(f"--duration {text!r} is not a positive duration such as 60s, 2m or 1h30m.")
    return seconds


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


def load_images(out: Path, given: tuple[Path, ...] = ()) -> list[Path]:
    """The images named (files or folders), else the team's real radiographs (PNG and DICOM) when
    present, else a generated PNG and DICOM."""
    from chexops.data.samples import sample_images

    if given:
        files = sorted(
            f for p in given for f in ([p] if p.is_file() else p.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise UserInputError(f"--images names no PNG, JPEG or DICOM file ({', '.join(map(str, given))}).")
        return files

    found = [p for p in sample_images(out / "no-dataset") if p.suffix in (".png", ".dcm")]
    if found:
        return found
    import io

    import numpy as np
    from PIL import Image

    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:512, 0:512]
    chest = (128 + 80 * np.cos((x - 256) / 90.0) * np.cos((y - 256) / 120.0)).clip(0, 255)
    grey = (chest + np.random.default_rng(0).normal(0, 8, chest.shape)).clip(0, 255).astype(np.uint8)
    png = folder / "generated_chest.png"
    Image.fromarray(grey).save(png)
    files = [png]
    try:
        import pydicom
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        meta = FileMetaDataset()
        meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, "1.2.840.10008.5.1.4.1.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = pydicom.Dataset()
        ds.file_meta, ds.Modality = meta, "DX"
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 512, 512, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (grey.astype(np.uint16) * 16).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        (dcm := folder / "generated_chest.dcm").write_bytes(buffer.getvalue())
        files.append(dcm)
    except ImportError:
        pass
    log.info("No shared radiographs: sending generated images %s", ", ".join(p.name for p in files))
    return files


def _num(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_stats(out: Path) -> dict[str, Any]:
    """Locust's `locust_stats.csv` → totals (the Aggregated row) and per endpoint."""
    path = out / "locust_stats.csv"
    if not path.is_file():
        raise ChexopsError(f"Locust wrote no {path.name}; see its output above.")
    rows = list(csv.DictReader(path.open()))
    endpoints, total = {}, None
    for row in rows:
        entry = {
            "requests": int(row["Request Count"]),
            "failures": int(row["Failure Count"]),
            "p50_ms": _num(row["50%"]),
            "p95_ms": _num(row["95%"]),
            "max_ms": _num(row["Max Response Time"]),
            "rps": round(float(row["Requests/s"]), 2),
        }
        if row["Name"] == "Aggregated":
            total = entry
        else:
            endpoints[f"{row['Type']} {row['Name']}"] = entry
    failures = []
    if (out / "locust_failures.csv").is_file():
        failures = [
            {"endpoint": f"{r['Method']} {r['Name']}", "error": r["Error"][:300], "count": int(r["Occurrences"])}
            for r in csv.DictReader((out / "locust_failures.csv").open())
        ]
    return {
        "total": total or {"requests": 0, "failures": 0, "p50_ms": None, "p95_ms": None, "max_ms": None, "rps": 0.0},
        "endpoints": endpoints,
        "failure_reasons": failures,
    }


def judge(total: dict[str, Any], criteria: Criteria, versions: dict[str, int] | None = None) -> list[dict[str, Any]]:
    requests, failures, p95 = total["requests"], total["failures"], total["p95_ms"]
    ratio = failures / requests if requests else None
    checks = [
        {"criterion": "requests", "value": requests, "limit": "> 0", "passed": requests > 0},
        {
            "criterion": "max_error_ratio",
            "value": ratio,
            "limit": criteria.max_error_ratio,
            "passed": ratio is not None and ratio <= criteria.max_error_ratio,
        },
        {
            "criterion": "max_p95_ms",
            "value": p95,
            "limit": criteria.max_p95_ms,
            "passed": p95 is not None and p95 <= criteria.max_p95_ms,
        },
    ]
    if criteria.expect_version is not None:
        seen = sorted(versions or {})
        checks.append(
            {
                "criterion": "expect_version",
                "value": seen,
                "limit": [criteria.expect_version],
                "passed": seen == [criteria.expect_version],
            }
        )
    return checks


def read_versions(out: Path) -> dict[str, int]:
    """The model versions that answered /predict (written by the locustfile when the test stopped)."""
    path = out / "versions.json"
    if not path.is_file():
        raise ChexopsError(f"locust wrote no {path.name}: the locustfile did not run to its end (see locust.log).")
    return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}


def run_loadtest(
    host: str,
    *,
    users: int,
    spawn_rate: float,
    duration: str,
    criteria: Criteria,
    out: Path,
    api_key: str | None,
    images: tuple[Path, ...] = (),
) -> LoadTestResult:
    """Run Locust headless against `host`; the result with its verdicts (the caller exits 3 on a failure)."""
    if not re.match(r"^https?://[^/\s]+", host):
        raise UserInputError(f"--host {host!r} must be an http(s):// URL of the clinic endpoint.")
    seconds = parse_duration(duration)
    out.mkdir(parents=True, exist_ok=True)
    images = load_images(out, images)
    env = {
        **os.environ,
        "CHEXOPS_LOADTEST_IMAGES": os.pathsep.join(map(str, images)),
        "CHEXOPS_LOADTEST_API_KEY": api_key or "",
        "CHEXOPS_LOADTEST_VERSIONS": str(out / "versions.json"),
    }
    (out / "versions.json").unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host.rstrip("/"),
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate),
        "--run-time",
        f"{seconds}s",
        "--stop-timeout",
        "10",
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "report.html"),
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
    ]
    log.info(
        "Load test: %d users for %d s against %s (%d images); reports in %s", users, seconds, host, len(images), out
    )
    with open(out / "locust.log", "w") as output:
        done = subprocess.run(cmd, env=env, stdout=output, stderr=subprocess.STDOUT, timeout=seconds + 120)
    if done.returncode != 0:
        raise ChexopsError(f"locust exited with code {done.returncode}:\n{(out / 'locust.log').read_text()[-3000:]}")
    stats = read_stats(out)
    total = stats["total"]
    versions = read_versions(out)
    checks = judge(total, criteria, versions)
    result = LoadTestResult(
        passed=all(c["passed"] for c in checks),
        host=host,
        users=users,
        duration_s=seconds,
        **{k: total[k] for k in ("requests", "failures", "p50_ms", "p95_ms", "rps")},
        error_ratio=round(total["failures"] / total["requests"], 6) if total["requests"] else None,
        max_p95_ms=criteria.max_p95_ms,
        max_error_ratio=criteria.max_error_ratio,
        checks=checks,
        endpoints=stats["endpoints"],
        failure_reasons=stats["failure_reasons"],
        versions=versions,
        **({"expected_version": criteria.expect_version} if criteria.expect_version else {}),
        at=ev.now(),
        reports={"html": str(out / "report.html"), "csv": str(out / "locust_stats.csv")},
    )
    (out / "result.json").write_text(json.dumps(result.model_dump(mode="json"), indent=2))
    return result


def recorded_version(ref: str) -> str:
    m = _RECORD.match(ref.strip())
    if not m:
        raise UserInputError(f"--record {ref!r} must be models:/NAME/VERSION (a version number, not an alias).")
    return m["version"]


def record(ref: str, result: LoadTestResult) -> str:
    """Store the result on models:/NAME/N as `loadtest.*` tags."""
    from chexops.tracking import mlflow_client

    m = _RECORD.match(ref.strip())
    if not m:
        raise UserInputError(f"--record {ref!r} must be models:/NAME/VERSION (a version number, not an alias).")
    client = mlflow_client()
    ev.version_or_fail(client, m["name"], m["version"])
    ev.record(client, m["name"], m["version"], ev.loadtest_tags(result.model_dump()))
    log.info("Recorded the load test on %s", ref)
    return ref


def format_result(result: LoadTestResult) -> str:
    lines = [f"{'endpoint':<16}{'requests':>9}{'failures':>9}{'p50 ms':>8}{'p95 ms':>8}{'req/s':>7}"]
    for name, e in sorted(result.endpoints.items()):
        lines.append(
            f"{name:<16}{e['requests']:>9}{e['failures']:>9}"
            f"{e['p50_ms'] or 0:>8.0f}{e['p95_ms'] or 0:>8.0f}{e['rps']:>7.1f}"
        )
    for c in result.checks:
        lines.append(f"{c['criterion']}: {c['value']} (limit {c['limit']}) {'PASS' if c['passed'] else 'FAIL'}")
    for f in result.failure_reasons[:5]:
        lines.append(f"failure x{f['count']} {f['endpoint']}: {f['error']}")
    lines.append(f"Load test {'PASSED' if result.passed else 'FAILED'}; report {result.reports['html']}")
    return "\n".join(lines)


def loadtest(
    host: str,
    *,
    users: int,
    spawn_rate: float,
    duration: str,
    out: Path,
    api_key_env: str,
    images: tuple[Path, ...],
    record_ref: str | None,
    criteria: Criteria,
) -> LoadTestResult:
    """Run the load test with the key in `$api_key_env`; with `record_ref` (models:/NAME/N) keep its result on that
    version."""
    if record_ref and not _RECORD.match(record_ref.strip()):
        raise UserInputError(f"--record {record_ref!r} must be models:/NAME/VERSION (a version number, not an alias).")
    api_key = os.environ.get(api_key_env)
    if not api_key:
        log.warning("$%s is not set: requests go without an API key", api_key_env)
    result = run_loadtest(
        host,
        users=users,
        spawn_rate=spawn_rate,
        duration=duration,
        out=out,
        api_key=api_key,
        images=images,
        criteria=criteria,
    )
    if record_ref:
        result.recorded = record(record_ref, result)
    return result
