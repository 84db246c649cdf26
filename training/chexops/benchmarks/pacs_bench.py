"""Arrival-to-report time of the DICOM gateway: a real Orthanc on loopback, the service and
`chexops pacs serve`, all started here; N radiographs (copies of one DICOM file, each with a SOP Instance UID of
its own) uploaded to Orthanc and routed to the gateway one after the other, or all at once with --burst.

    python -m chexops.benchmarks.pacs_bench --image ../shared/data/real-cxr/siim_cr_chest_pa.dcm --count 40
    python -m chexops.benchmarks.pacs_bench --image ... --architecture densenet121 --size 224 --count 40

The time is the gateway's own (arrival of the C-STORE → the report's C-STORE answered by Orthanc, from its
ledger, what the metric chexops_pacs_arrival_to_report_seconds observes); p50/p95 and the route → report seen in
Orthanc time as the client sees it are printed as JSON. The model is a seeded random-init network of the given
architecture (latency does not depend on the weights): `small` width 32 at 64 px is the demo model's."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from chexops.benchmarks.harness import server
from chexops.benchmarks.random_model import random_init_model
from chexops.core import paths
from chexops.core.processes import ServerProcess, free_port
from chexops.pacs.orthanc import LocalOrthanc

KEY = "bench-pacs-key-0123456789"


def _copies(data: bytes, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        buffer = io.BytesIO()
        ds.save_as(buffer)
        out.append(buffer.getvalue())
    return out


def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="pacs-bench-"))
    os.environ["CHEXOPS_HOME"] = str(tmp / "home")
    tag = random_init_model(args.architecture, args.size, args.width)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHEXOPS_")}
    env.update(
        CHEXOPS_HOME=str(paths.home()), BENTOML_HOME=str(paths.bentoml_home()), BENTOML_DO_NOT_TRACK="True",
        CHEXOPS_MODEL=tag, CHEXOPS_API_KEYS=f"bench:{KEY}", CHEXOPS_RATE_LIMIT="1000000", CHEXOPS_RATE_BURST="100000",
        CHEXOPS_FEEDBACK_URL=f"sqlite:///{tmp / 'feedback.db'}", CHEXOPS_THREADS=str(args.threads),
    )  # fmt: skip
    gateway_port, metrics_port = free_port(), free_port()
    orthanc = LocalOrthanc(tmp, "CHEXOPS", gateway_port)
    orthanc_url = orthanc.url
    with orthanc, server(env, tmp / "service.log") as service:
        gateway_env = {**env, "CHEXOPS_API_KEY": KEY}
        argv = [
            sys.executable, "-m", "chexops", "pacs", "serve", "--listen", f"127.0.0.1:{gateway_port}",
            "--send-to", orthanc.send_to, "--service", service.url, "--state", tmp / "state",
            "--metrics", f"127.0.0.1:{metrics_port}", "--orthanc-url", orthanc_url,
        ]  # fmt: skip
        gateway = ServerProcess(
            argv, tmp / "gateway.log", url=f"http://127.0.0.1:{metrics_port}", ready_path="/metrics",
            env=gateway_env, cwd=paths.ROOT, name="chexops pacs serve",
        )  # fmt: skip
        with (
            gateway,
            httpx.Client(base_url=orthanc_url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as client,
        ):
            images = _copies(Path(args.image).read_bytes(), args.warmup + args.count)
            seen = []
            for i, data in enumerate(images):
                uploaded = client.post("/instances", content=data).raise_for_status().json()
                t0 = time.perf_counter()
                client.post("/modalities/chexops/store", json={"Resources": [uploaded["ID"]]}).raise_for_status()
                while len(client.get(f"/studies/{uploaded['ParentStudy']}/series").json()) < 2:
                    time.sleep(0.01)
                if i >= args.warmup:
                    seen.append(time.perf_counter() - t0)
            deadline = time.monotonic() + 30  # the ledger entry follows the report (and the flag) by a moment
            while len(list((tmp / "state" / "done").glob("*.json"))) < len(images) and time.monotonic() < deadline:
                time.sleep(0.05)
            done = [json.loads(p.read_text()) for p in (tmp / "state" / "done").glob("*.json")]
    done.sort(key=lambda r: r["arrived"])
    gateway_s = np.array([r["reported"] - r["arrived"] for r in done[args.warmup :]])
    seen_s = np.array(seen)
    steps = {
        name: round(float(np.median([r["steps_ms"].get(name, 0) for r in done[args.warmup :]])), 1)
        for name in ("predict", "find", "build", "store", "flag")
    }
    waited = round(float(np.median([r["waited_ms"] for r in done[args.warmup :]])), 1)
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "model": f"{args.architecture} width {args.width} at {args.size} px (random init), fp32, "
        f"{args.threads} threads",
        "image": Path(args.image).name,
        "count": len(gateway_s),
        "arrival_to_report_ms": {
            "p50": round(float(np.percentile(gateway_s, 50)) * 1000, 1),
            "p95": round(float(np.percentile(gateway_s, 95)) * 1000, 1),
        },  # fmt: skip
        "median_ms": {"waited_in_outbox": waited, **steps},
        "route_to_report_in_orthanc_ms": {
            "p50": round(float(np.percentile(seen_s, 50)) * 1000, 1),
            "p95": round(float(np.percentile(seen_s, 95)) * 1000, 1),
        },  # fmt: skip
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="a DICOM chest radiograph (copied with fresh UIDs)")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--architecture", default="small")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    print(json.dumps(run(parser.parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
