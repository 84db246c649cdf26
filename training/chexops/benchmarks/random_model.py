"""A seeded random-init network exported as a real chexops model (fp32 + static int8, the full metadata) into
the Bento store of the current CHEXOPS_HOME: benchmarks of an architecture without a trained model."""

from __future__ import annotations

import numpy as np


def random_init_model(name: str, size: int, width: int, calibration: int = 8) -> str:
    """Export a seeded random-init network (fp32 + static int8, real chexops metadata) into the Bento
    store of the current CHEXOPS_HOME; returns its tag. Needs torch (the training extra)."""
    import torch

    from chexops.config import ModelConfig
    from chexops.core.labels import CHEXPERT_LABELS, DEFAULT_THRESHOLD
    from chexops.core.paths import home
    from chexops.export.bento import import_onnx
    from chexops.export.files import FP32_FILE, INT8_FILE
    from chexops.export.onnx import build_metadata, export_onnx, write_metadata
    from chexops.export.quantize import quantize_static_qdq
    from chexops.imaging.preprocessing import PreprocessSpec
    from chexops.train.models import build_model

    torch.manual_seed(0)
    labels = list(CHEXPERT_LABELS)
    spec = PreprocessSpec(size=size, channels=1, mean=(0.5,), std=(0.25,))
    model = build_model(ModelConfig(name=name, width=width, pretrained_weights=None), len(labels), spec).eval()
    out = home() / "exports" / f"bench-{name}-{size}"
    fp32 = export_onnx(model, spec, out / FP32_FILE)
    metadata = build_metadata(
        labels=labels,
        thresholds={label: DEFAULT_THRESHOLD for label in labels},
        rule="benchmark (random init)",
        spec=spec,
        model_name=f"bench-{name}-{size}",
        registry_version="1",
        run_id="0" * 32,
        data_version="none",
        head_weight=model.head.weight.detach().numpy(),
        head_bias=model.head.bias.detach().numpy(),
    )
    write_metadata(fp32, metadata)
    x = np.random.default_rng(0).normal(0, 1, (calibration, 1, size, size)).astype(np.float32)
    int8 = quantize_static_qdq(fp32, out / INT8_FILE, x)
    write_metadata(int8, {**metadata, "precision": "int8-static-qdq"})
    return import_onnx(fp32, int8).tag
