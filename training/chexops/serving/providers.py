"""`CHEXOPS_PROVIDERS` (read by `chexops.serving.settings`): which ONNX Runtime execution providers the
service's session uses.

A comma-separated list in order of preference, short or full names: `cpu` (the default), `cuda`,
`tensorrt`, `rocm`, `openvino`, `dnnl` (`CUDAExecutionProvider`, ...). An unknown name stops the
service at start (ConfigError). A known provider that this ONNX Runtime build lacks (`cuda` needs
the onnxruntime-gpu package and a GPU) is skipped with a warning, so `cuda,cpu` serves on a GPU
where there is one and on the CPU elsewhere. The CPU provider always comes last, as ONNX Runtime's
fallback for operators another provider cannot run.
"""

from __future__ import annotations

import logging

from chexops.core.errors import ConfigError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
KNOWN = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
}


def parse(raw: str) -> list[str]:
    """Full provider names, in order, CPU last; ConfigError for an unknown or empty entry."""
    by_full = {v.lower(): v for v in KNOWN.values()}
    chosen: list[str] = []
    for item in (raw or "cpu").split(","):
        name = item.strip().lower()
        full = KNOWN.get(name) or by_full.get(name)
        if full is None:
            raise ConfigError(
                f"CHEXOPS_PROVIDERS: unknown execution provider {item.strip()!r}; "
                f"use a comma-separated list of {', '.join(KNOWN)}."
            )
        if full not in chosen:
            chosen.append(full)
    return [p for p in chosen if p != CPU] + [CPU]


def available(requested: list[str], present: list[str] | None = None) -> list[str]:
    """`requested` less the providers this ONNX Runtime build does not have (a warning each)."""
    if present is None:
        import onnxruntime

        present = onnxruntime.get_available_providers()
    usable = [p for p in requested if p in present or p == CPU]
    for missing in [p for p in requested if p not in usable]:
        log.warning(
            "CHEXOPS_PROVIDERS asks for %s, which this ONNX Runtime build lacks (it has %s): skipped",
            missing,
            ", ".join(present),
        )
    return usable
