"""Training-loader throughput: images/s decoded and preprocessed with 0, 2 and 8 DataLoader workers.

    python -m chexops.benchmarks.loader_throughput --images 256 --workers 0 2 8

Writes CheXpert-v1.0-small-like JPEGs (390×320, from the shared real radiographs when present,
else noise) to a temporary folder, then times the training loop's own loader (`train_loader`
over an uncached `RadiographDataset`, the paper's 320 px, 3 channels) for one pass after a warm-up
batch. Prints one JSON line per worker count.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from chexops.core.paths import shared_data
from chexops.data.splits import Split
from chexops.imaging.preprocessing import PreprocessSpec
from chexops.train.dataset import EpochBatches, RadiographDataset, train_loader


def make_images(folder: Path, n: int) -> list[Path]:
    sources = sorted((shared_data() / "real-cxr").glob("*.png"))
    rng = np.random.default_rng(0)
    bases = [Image.open(p).convert("L") for p in sources] or [
        Image.fromarray(rng.integers(0, 255, (512, 512), dtype=np.uint8))
    ]
    paths = []
    for i in range(n):
        image = bases[i % len(bases)].rotate(float(rng.uniform(-3, 3))).resize((320, 390), Image.Resampling.BILINEAR)
        path = folder / f"view{i:05d}_frontal.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def measure(paths: list[Path], workers: int, batch: int, size: int) -> dict:
    split = Split("bench", np.zeros((len(paths), 14), np.float32), np.ones((len(paths), 14), np.float32), paths=paths)
    ds = RadiographDataset(
        split, PreprocessSpec(size=size, channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)), cache=False
    )
    sampler = EpochBatches(len(ds), batch, seed=0)
    loader = train_loader(ds, sampler, workers, pin_memory=torch.cuda.is_available())
    sampler.set_epoch(0)
    next(iter(loader))  # warm-up: workers started (persistent from here on)
    sampler.set_epoch(1)
    start = time.perf_counter()
    seen = sum(len(x) for x, _, _ in loader)
    seconds = time.perf_counter() - start
    return {
        "workers": workers,
        "images": seen,
        "batch": batch,
        "size": size,
        "seconds": round(seconds, 2),
        "images_per_s": round(seen / seconds, 1),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 8])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=320)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.images)
        for workers in args.workers:
            print(json.dumps(measure(paths, workers, args.batch, args.size)), flush=True)


if __name__ == "__main__":
    main()
