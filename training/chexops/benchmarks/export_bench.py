"""fp32 vs static QDQ int8 vs dynamic int8 under ONNX Runtime: latency (batch 1, N intra-op
threads, median of R runs), size, agreement and, for a trained model, validation mean AUROC.

    # an architecture at a size, seeded random init: latency, size, agreement with fp32
    python -m chexops.benchmarks.export_bench --model densenet121 --size 224
    python -m chexops.benchmarks.export_bench --model small --size 64 --width 32
    # a trained model (what `chexops export` measures: AUROC delta on its validation split too)
    python -m chexops.benchmarks.export_bench --reference models:/chexops-cxr@candidate

Static int8 is calibrated on real radiographs: with --reference, the model's own training images;
otherwise the shared PneumoniaMNIST training images (`shared_data()/real-cxr`), resized by the
model's preprocessing. `--sweep` also times other static variants (per-tensor weights, uint8
activations). Prints one JSON object on stdout; `--markdown` also prints table rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from chexops.benchmarks import emit

log = logging.getLogger("chexops.benchmarks.export_bench")


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in flags]
    except OSError:
        isa = []
    return {
        "cpu": cpu,
        "isa": isa,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def real_calibration_images(spec, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) sets of real radiographs from the shared PneumoniaMNIST subset."""
    from PIL import Image

    from chexops.core.paths import shared_data
    from chexops.imaging.preprocessing import preprocess

    path = shared_data() / "real-cxr" / "pneumoniamnist_subset.npz"
    if not path.exists():
        raise SystemExit(f"{path} is missing: give --reference to calibrate on a model's own training images")
    with np.load(path) as data:
        train, val = data["train_images"], data["val_images"]
    rng = np.random.default_rng(seed)

    def pick(images, k):
        chosen = rng.choice(len(images), k, replace=False)
        return np.stack([preprocess(Image.fromarray(images[i]), spec) for i in chosen])

    return pick(train, n), pick(val, min(64, len(val)))


def architecture(args) -> dict[str, Any]:
    """Export a seeded random-init network and compare its three ONNX variants."""
    import torch

    from chexops.config import ModelConfig
    from chexops.export import quantize
    from chexops.export.files import DYNAMIC_FILE, FP32_FILE, INT8_FILE, session
    from chexops.export.onnx import export_onnx
    from chexops.imaging.preprocessing import PreprocessSpec
    from chexops.train.models import build_model

    torch.manual_seed(0)
    spec = PreprocessSpec(size=args.size, channels=args.channels, mean=(0.5,), std=(0.25,))
    model = build_model(ModelConfig(name=args.model, width=args.width), args.labels, spec).eval()
    calib, held_out = real_calibration_images(spec, args.calibration)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        fp32 = export_onnx(model, spec, out / FP32_FILE)
        variants = {
            "fp32": fp32,
            "static_int8": quantize.quantize_static_qdq(fp32, out / INT8_FILE, calib),
            "dynamic_int8": quantize.quantize_dynamic_int8(fp32, out / DYNAMIC_FILE),
        }
        if args.sweep:
            variants["static_int8_per_tensor"] = quantize.quantize_static_qdq(
                fp32, out / "pt.onnx", calib, per_channel=False
            )
            variants["static_uint8_activations"] = quantize.quantize_static_qdq(
                fp32, out / "u8.onnx", calib, activation="uint8"
            )
        results: dict[str, Any] = {}
        reference = None
        for key, path in variants.items():
            probs = quantize.run_batches(session(path), held_out)["probabilities"]
            reference = probs if reference is None else reference
            results[key] = {
                "latency_ms": quantize.latency_ms(path, held_out[:1], runs=args.runs, threads=args.threads),
                "size_bytes": path.stat().st_size,
                "max_abs_prob_diff_vs_fp32": float(np.abs(probs - reference).max()),
            }
            log.info("%-26s %8.2f ms  %7.1f kB", key, results[key]["latency_ms"], results[key]["size_bytes"] / 1024)
    fp = results["fp32"]["latency_ms"]
    for value in results.values():
        value["latency_ratio"] = value["latency_ms"] / fp
    return {
        "model": args.model,
        "size": args.size,
        "weights": "random init (seed 0)",
        "calibration_images": len(calib),
        "calibration_source": "shared PneumoniaMNIST training images (real radiographs)",
        "variants": results,
    }


def trained(args) -> dict[str, Any]:
    """`chexops export` of a trained model, without logging or Bento import."""
    from chexops.export.onnx import export_model

    with tempfile.TemporaryDirectory() as tmp:
        e = export_model(
            args.reference,
            Path(tmp),
            calibration=args.calibration,
            runs=args.runs,
            threads=args.threads,
            activations=args.activations,
            log_to_run=False,
            bento=False,
        ).export
    variants = {
        "fp32": {
            "latency_ms": e.fp32_latency_ms,
            "latency_ratio": 1.0,
            "mean_auroc": e.fp32_mean_auroc,
            "auroc_delta": 0.0,
            "size_bytes": e.sizes_bytes["fp32"],
        }
    }
    for key, name in (("int8", "static_int8"), ("dynamic_int8", "dynamic_int8")):
        delta = getattr(e, f"{key}_auroc_delta")
        variants[name] = {
            "latency_ms": getattr(e, f"{key}_latency_ms"),
            "latency_ratio": getattr(e, f"{key}_latency_ratio"),
            "mean_auroc": e.fp32_mean_auroc + delta,
            "auroc_delta": delta,
            "size_bytes": e.sizes_bytes[key],
            "max_abs_prob_diff_vs_fp32": getattr(e, f"{key}_max_abs_prob_diff"),
        }
    return {
        "reference": args.reference,
        "model": e.model,
        "validation_images": e.validation_images,
        "calibration_images": e.calibration_images,
        "int8_scheme": e.int8_scheme,
        "calibration_source": "the model's own training images",
        "parity_max_abs_diff": e.parity_max_abs_diff,
        "variants": variants,
    }


def files(args) -> dict[str, Any]:
    """Latency of existing ONNX files (e.g. a `chexops export` directory), on one real radiograph
    preprocessed by the first file's own metadata."""
    from chexops.export import quantize
    from chexops.export.files import read_metadata
    from chexops.imaging.preprocessing import PreprocessSpec

    paths = [Path(p) for p in args.files]
    spec = PreprocessSpec.from_json(read_metadata(paths[0])["preprocessing"])
    _, held_out = real_calibration_images(spec, 1)
    results = {
        f"{p.parent.name}/{p.name}": {
            "latency_ms": quantize.latency_ms(p, held_out[:1], runs=args.runs, threads=args.threads),
            "size_bytes": p.stat().st_size,
        }
        for p in paths
    }
    base = next(iter(results.values()))["latency_ms"]
    for value in results.values():
        value["latency_ratio"] = value["latency_ms"] / base
    return {"files": [str(p) for p in paths], "size": spec.size, "variants": results}


def markdown(result: dict[str, Any]) -> str:
    name = result.get("reference") or (
        f"{result['model']} {result['size']} px (random init)"
        if "model" in result
        else f"exported files, {result['size']} px"
    )
    rows = []
    for key, v in result["variants"].items():
        delta = f"{v['auroc_delta']:+.4f}" if "auroc_delta" in v else "n/a"
        rows.append(
            f"| {name} | {key} | {v['latency_ms']:.2f} | {v['latency_ratio']:.2f}× | {delta} | "
            f"{v['size_bytes'] / 1e6:.2f} MB |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["small", "densenet121"], default="densenet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=1, choices=[1, 3])
    parser.add_argument("--width", type=int, default=32, help="small CNN width")
    parser.add_argument("--labels", type=int, default=14)
    parser.add_argument("--reference", help="a trained model (models:/NAME@ALIAS or runs:/ID) instead of --model")
    parser.add_argument("--files", nargs="+", help="time these ONNX files instead (the first is the baseline)")
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--activations", choices=["int8", "uint8"], default="uint8", help="static int8 activations (--reference)"
    )
    parser.add_argument("--sweep", action="store_true", help="also time other static int8 variants")
    parser.add_argument("--markdown", action="store_true", help="also print Markdown table rows (stderr)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    result = files(args) if args.files else trained(args) if args.reference else architecture(args)
    result.update(
        {"batch": 1, "intra_op_threads": args.threads, "runs": args.runs, "statistic": "median", "machine": machine()}
    )
    emit(result, "export_bench", argv, started, markdown if args.markdown else None)


if __name__ == "__main__":
    main()
