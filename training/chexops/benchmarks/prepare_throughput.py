"""`chexops data prepare` throughput: full-size CheXpert-like JPEGs (about 2320×2828) to 320 px.

    python -m chexops.benchmarks.prepare_throughput --images 24 --size 320

Makes full-size inputs by upscaling the shared real radiographs (`../shared/data/real-cxr/*.png`),
then times, in one process (images/s per core): the naive path (full decode, then the same grey and
resize code) against `prepare`'s own (`resize_bytes`: JPEG draft mode, then the same code); and the
whole command end to end with `--workers` processes. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from chexops.core.paths import shared_data
from chexops.data.prepare import prepare, resize_bytes
from chexops.imaging.preprocessing import open_image, resize_grey, shorter_side_to, to_grey

FULL = (2320, 2828)


def make_full_size(root: Path, n: int) -> list[Path]:
    sources = sorted((shared_data() / "real-cxr").glob("*.png"))
    if not sources:
        raise SystemExit(f"no PNG radiographs under {shared_data() / 'real-cxr'}")
    folder = root / "CheXpert-v1.0" / "train"
    rows = ["Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding"]
    paths = []
    for i in range(n):
        base = Image.open(sources[i % len(sources)]).convert("L").rotate(i * 0.7, resample=Image.Resampling.BILINEAR)
        path = folder / f"patient{i:05d}" / "study1" / "view1_frontal.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        base.resize(FULL, Image.Resampling.BICUBIC).save(path, quality=95)
        rows.append(f"CheXpert-v1.0/train/patient{i:05d}/study1/view1_frontal.jpg,Female,50,Frontal,PA,1.0")
        paths.append(path)
    (root / "CheXpert-v1.0" / "train.csv").write_text("\n".join(rows) + "\n")
    return paths


def naive(data: bytes, size: int) -> bytes:
    grey = to_grey(open_image(io.BytesIO(data)))
    width, height = shorter_side_to(grey.shape[1], grey.shape[0], size)
    out = io.BytesIO()
    Image.fromarray(np.round(resize_grey(grey, width, height) * 255).astype(np.uint8)).save(
        out, format="JPEG", quality=95
    )
    return out.getvalue()


def per_core(name: str, func, blobs: list[bytes], size: int) -> dict:
    func(blobs[0], size)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for blob in blobs:
        func(blob, size)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    # per CPU-second: what one core does, whatever else the machine runs meanwhile
    return {
        "what": name,
        "images": len(blobs),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "images_per_s_per_core": round(len(blobs) / cpu, 1),
        "images_per_wall_s": round(len(blobs) / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_full_size(Path(tmp) / "src", args.images)
        blobs = [p.read_bytes() for p in paths]
        print(
            json.dumps(
                {
                    "input": f"{FULL[0]}x{FULL[1]} JPEG q95",
                    "mean_bytes": int(np.mean([len(b) for b in blobs])),
                    "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()[0],
                }
            ),
            flush=True,
        )
        print(json.dumps(per_core("naive full decode", naive, blobs, args.size)), flush=True)
        print(
            json.dumps(per_core("prepare (draft mode)", lambda b, s: resize_bytes(b, s, ".jpg"), blobs, args.size)),
            flush=True,
        )
        start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        summary = prepare(str(Path(tmp) / "src"), str(Path(tmp) / "out"), args.size, workers=args.workers)
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)  # the worker processes
        print(
            json.dumps(
                {
                    "what": f"chexops data prepare --workers {args.workers}",
                    "images": summary.images,
                    "seconds": round(seconds, 2),
                    "images_per_wall_s": round(summary.images / seconds, 1),
                    "worker_cpu_seconds": round(cpu, 2),
                    "images_per_s_per_core": round(summary.images / cpu, 1) if cpu else None,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
