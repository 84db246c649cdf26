"""Training-step throughput of a network: fp32 against bf16 autocast, with and without channels-last.

    python -m chexops.benchmarks.train_throughput --model densenet121 --size 320 --batch 16

Runs the training loop's own pieces (`build_model`, `masked_bce`, AdamW) on random inputs, so it
measures the compute of a step, not data loading. Prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch

from chexops.config import ModelConfig
from chexops.imaging.preprocessing import PreprocessSpec
from chexops.train.loop import masked_bce
from chexops.train.models import build_model


def measure(
    model_name: str, size: int, batch: int, amp: bool, channels_last: bool, steps: int, warmup: int, device: str
) -> dict:
    torch.manual_seed(0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    spec = PreprocessSpec(size=size, channels=3, mean=(0.5,), std=(0.25,))
    model = build_model(ModelConfig(name=model_name), 14, spec).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 14, device=device) > 0.7).float()
    m = torch.ones_like(y)
    cuda = device.startswith("cuda")

    def step() -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16) if (amp and cuda) else nullcontext():
            loss = masked_bce(model(x), y, m)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "model": model_name,
        "size": size,
        "batch": batch,
        "amp_bf16": amp,
        "channels_last": channels_last,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "steps": steps,
        "images_per_s": round(steps * batch / seconds, 1),
        "ms_per_step": round(1000 * seconds / steps, 2),
        "final_loss": round(float(loss), 4),
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="densenet121", choices=["small", "densenet121", "vit"])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    settings = [(False, False), (True, False), (True, True)] if args.device.startswith("cuda") else [(False, False)]
    for amp, cl in settings:
        print(
            json.dumps(measure(args.model, args.size, args.batch, amp, cl, args.steps, args.warmup, args.device)),
            flush=True,
        )


if __name__ == "__main__":
    main()
