"""The demo's last step: start the clinic endpoint on the exported model and send it radiographs.

The real samples in `../shared/data/real-cxr/` (PNG and DICOM) when they are there, otherwise
images of the generated dataset. The service runs as `chexops serve`, exactly as a user starts it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from chexops.core import paths
from chexops.core.errors import ChexopsError
from chexops.core.processes import ServerProcess, free_port
from chexops.data.samples import sample_images
from chexops.serving.settings import DEV_KEYS

log = logging.getLogger(__name__)


def query_service(model_ref: str, data_root: Path, timeout: float = 240) -> dict[str, Any]:
    """Serve `model_ref` (a registry reference), predict each sample image over HTTP, stop the service; returns the
    findings."""
    port, key = free_port(), DEV_KEYS.split(":")[1]
    url = f"http://127.0.0.1:{port}"
    log_path = paths.home() / "demo" / "service.log"
    env = {**os.environ, "CHEXOPS_HOME": str(paths.home()), "CHEXOPS_API_KEYS": DEV_KEYS}
    log.info("$ chexops serve --port %d --model %s   (log: %s)", port, model_ref, log_path)
    argv = [sys.executable, "-m", "chexops", "serve", "--port", str(port), "--model", model_ref]
    server = ServerProcess(argv, log_path, url=url, env=env, timeout=timeout, name="chexops serve")
    with server, httpx.Client(base_url=url, timeout=60) as client:
        results = []
        for image in sample_images(data_root):
            started = time.monotonic()
            response = client.post(
                "/predict",
                files={"image": (image.name, image.read_bytes())},
                headers={"Authorization": f"Bearer {key}"},
            )
            if response.status_code != 200:
                raise ChexopsError(f"/predict answered {response.status_code} for {image.name}: {response.text[:300]}")
            body = response.json()
            positives = sorted((f for f in body["findings"] if f["positive"]), key=lambda f: -f["probability"])
            name = str(image.relative_to(data_root)) if data_root in image.parents else image.name
            results.append(
                {
                    "file": name,
                    "request_id": body["request_id"],
                    "priority": body["priority"],
                    "positive": [
                        {
                            "label": f["label"],
                            "probability": round(f["probability"], 3),
                            "threshold": round(f["threshold"], 3),
                        }
                        for f in positives
                    ],
                    "latency_ms": round(1000 * (time.monotonic() - started), 1),
                }
            )
        model = body["model"] if results else {}
    return {
        "url": url,
        "reference": model_ref,
        "model": model,
        "api_key_note": f"development key for clinic {DEV_KEYS.split(':')[0]!r}",
        "images": results,
        "log": str(log_path),
    }


def format_findings(service: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"clinic endpoint  {service['model'].get('name')} v{service['model'].get('version')} "
        f"(served by `chexops serve`, development API key)",
        "                 (the demo model learnt synthetic images: on real radiographs its findings show the plumbing, "
        "not medicine)",
    ]
    for item in service["images"]:
        found = (
            ", ".join(f"{f['label']} {f['probability']:.2f}" for f in item["positive"][:4])
            or "no finding above threshold"
        )
        lines.append(f"  {item['file']:<36} {item['priority']:<8} {found}")
    return lines
