"""The endpoint under abuse: bytes kept per prediction, and what slow clients and header floods cost the service.

    python -m chexops.benchmarks.abuse_bench [--images ../shared/data/real-cxr] [--seconds 10]

- bytes per prediction, per upload (the team's real radiographs: PNG, DICOM, and JPEG made from the PNGs):
  the image kept as it was before the image store (a 16-bit PNG of the pixels whenever it is re-encoded) and as it
  is now (`chexops.serving.stored_image.kept_image`), and the SQLite store's growth per prediction (record and
  image, measured on a real store file);
- with a started service (a seeded random-init model in a temporary home, the service's default limits but no
  admission queue): two clients sending a multipart body at 1 byte/s while a third sends real requests
  (its answers by status and latency, and when and how each slow client is cut off); and 8 connections sending
  40 MB request heads, with the worker's RSS before, at its peak, and after; and the same flood on a service
  whose head limit is 1 GiB (in effect none, as the service had before).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import socket
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from chexops.benchmarks.harness import server, service_env
from chexops.benchmarks.serve_report import machine
from chexops.core import paths


def uploads(folder: Path) -> dict[str, bytes]:
    """The real radiographs (PNG, DICOM) and a JPEG (quality 90) of each PNG."""
    from PIL import Image

    found: dict[str, bytes] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in (".png", ".dcm"):
            found[path.name] = path.read_bytes()
        if path.suffix.lower() == ".png":
            buffer = io.BytesIO()
            Image.open(path).convert("L").save(buffer, "JPEG", quality=90)
            found[path.stem + ".jpg"] = buffer.getvalue()
    return found


def bytes_per_prediction(images: dict[str, bytes], side: int = 1024) -> list[dict[str, Any]]:
    from chexops.feedback.store import FeedbackStore
    from chexops.imaging.decode import ImageLimits, decode, to_png
    from chexops.serving.stored_image import (
        NotKeptAsIs,
        _scaled,
        jpeg_without_metadata,
        kept_image,
        png_without_metadata,
    )

    limits = ImageLimits(max_bytes=64 * 2**20, max_pixels=4096 * 4096, modalities=frozenset({"CR", "DX"}))
    rows = []
    for name, data in images.items():
        decoded = decode(data, limits)
        height, width = decoded.grey.shape
        before = None
        if max(height, width) <= side:  # before: as-is when it fit, else the 16-bit PNG
            try:
                before = {"png": png_without_metadata, "jpeg": jpeg_without_metadata}.get(decoded.kind, None)
                before = before(data) if before else None
            except NotKeptAsIs:
                before = None
        before = before if before is not None else to_png(_scaled(decoded.grey, side))
        after = kept_image(data, decoded, side)
        with tempfile.TemporaryDirectory() as tmp:  # the store's own growth per prediction, 20 of this upload
            db = Path(tmp) / "feedback.db"
            store = FeedbackStore(f"sqlite:///{db}")
            findings = [{"label": "Edema", "probability": 0.5, "threshold": 0.4, "positive": True}] * 14
            empty = _store_bytes(db)
            for i in range(20):
                store.add_prediction(f"r{i}", "bench", "m", "1", findings, "urgent", decoded.info)
                store.set_image(f"r{i}", after)
            store.close()
            with sqlite3.connect(db) as conn:  # the WAL folded into the file: what stays on disk
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            stored = (_store_bytes(db) - empty) / 20
            images = sum(f.stat().st_size for f in (Path(tmp) / "images").rglob("*") if f.is_file()) / 20
        rows.append(
            {
                "upload": name,
                "kind": decoded.kind,
                "pixels": f"{width}×{height}",
                "upload_bytes": len(data),
                "kept_before": len(before),
                "kept_after": len(after),
                "database_bytes_per_prediction": round(stored),
                "image_store_bytes_per_prediction": round(images),
            }
        )
    return rows


def _store_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


# --- against a running service ---------------------------------------------------------------------


def slow_clients(url: str, key: str, port: int, png: bytes, seconds: float) -> dict[str, Any]:
    import httpx

    cut: list[dict[str, Any]] = []

    def slow() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n".encode()
            )
            started, sent = time.monotonic(), 0
            sock.settimeout(1.0)
            while time.monotonic() - started < seconds + 60:
                try:
                    sock.send(b"-")
                    sent += 1
                    answer = sock.recv(4096)
                    cut.append(
                        {
                            "after_s": round(time.monotonic() - started, 2),
                            "bytes_sent": sent,
                            "status": answer[9:12].decode(),
                        }
                    )
                    return
                except TimeoutError:
                    continue
                except OSError as exc:
                    cut.append({"after_s": round(time.monotonic() - started, 2), "error": type(exc).__name__})
                    return

    def attack() -> None:  # two at a time, reconnecting when cut, for `seconds`
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            slow()

    attackers = [threading.Thread(target=attack) for _ in range(2)]
    for thread in attackers:
        thread.start()
    time.sleep(0.3)
    codes: dict[int, int] = {}
    latencies = []
    end = time.monotonic() + seconds
    with httpx.Client(timeout=60) as client:
        while time.monotonic() < end:
            started = time.monotonic()
            response = client.post(
                f"{url}/predict", files={"image": ("x.png", png)}, headers={"Authorization": f"Bearer {key}"}
            )
            latencies.append(time.monotonic() - started)
            codes[response.status_code] = codes.get(response.status_code, 0) + 1
            time.sleep(0.2)
    for thread in attackers:
        thread.join()
    return {
        "clinic_answers": codes,
        "clinic_p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
        "clinic_max_ms": round(max(latencies) * 1000, 1),
        "slow_clients_cut": len(cut),
        "cut_after_s": sorted({c["after_s"] for c in cut})[:3] + ["..."]
        if len(cut) > 3
        else [c["after_s"] for c in cut],
        "cut_status": sorted({c.get("status", c.get("error", "")) for c in cut}),
    }


def header_flood(port: int, pid: int, connections: int = 8, megabytes: int = 40) -> dict[str, Any]:
    import psutil

    def worker_rss() -> int:
        family = psutil.Process(pid).children(recursive=True)
        return max(p.memory_info().rss for p in family)

    before = worker_rss()
    peak, refused = before, []

    def flood() -> None:
        chunk = b"a" * 1_000_000
        try:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"GET /model HTTP/1.1\r\nHost: x\r\nX-Big: ")
                for _ in range(megabytes):
                    sock.sendall(chunk)
                sock.settimeout(5)
                refused.append(sock.recv(64)[9:12].decode())
        except OSError as exc:
            refused.append(type(exc).__name__)

    threads = [threading.Thread(target=flood) for _ in range(connections)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, worker_rss())
        time.sleep(0.05)
    time.sleep(1)
    return {
        "connections": connections,
        "head_mb_each": megabytes,
        "worker_rss_mb_before": round(before / 2**20),
        "worker_rss_mb_peak": round(peak / 2**20),
        "worker_rss_mb_after": round(worker_rss() / 2**20),
        "answers": sorted(set(refused)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=paths.shared_data() / "real-cxr")
    parser.add_argument("--seconds", type=float, default=10.0, help="the slow-client attack's length")
    parser.add_argument("--no-service", action="store_true", help="bytes per prediction only")
    args = parser.parse_args(argv)
    images = uploads(args.images)
    report: dict[str, Any] = {"machine": machine(), "bytes_per_prediction": bytes_per_prediction(images)}
    if not args.no_service:
        png = next(data for name, data in images.items() if name.endswith(".png"))
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["CHEXOPS_HOME"] = tmp
            from chexops.benchmarks.random_model import random_init_model

            tag = random_init_model("small", 64, 8)
            key = secrets.token_urlsafe(16)
            options = argparse.Namespace(service_env=[], model=tag, precision="fp32", threads=1)
            env = service_env(options, key, Path(tmp), batching=False)
            env.update({"CHEXOPS_MAX_INFLIGHT": "2", "CHEXOPS_MAX_QUEUE": "0"})  # slots are all there is
            with server(env, Path(tmp) / "service.log") as svc:
                port = int(svc.url.rsplit(":", 1)[1])
                report["slow_clients"] = slow_clients(svc.url, key, port, png, args.seconds)
                report["header_flood"] = header_flood(port, svc.process.pid)
            # the same flood without a working limit (1 GiB: as before the limit, when heads were read whole)
            env["CHEXOPS_MAX_HEADER_KB"] = str(2**20)
            with server(env, Path(tmp) / "service-unlimited.log") as svc:
                port = int(svc.url.rsplit(":", 1)[1])
                report["header_flood_without_limit"] = header_flood(port, svc.process.pid)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
