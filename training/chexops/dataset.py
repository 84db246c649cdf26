"""The torch side of the data: splits as tensors, preprocessed by `chexops.preprocessing`."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .data.loading import Split
from .preprocessing import PreprocessSpec, load_image, preprocess


class RadiographDataset(torch.utils.data.Dataset):
    """(image C×H×W, targets, mask) triples. With `cache`, every image is preprocessed once up front."""

    def __init__(self, split: Split, spec: PreprocessSpec, cache: bool = True, progress: bool = True):
        self.split, self.spec = split, spec
        self.targets = torch.from_numpy(np.ascontiguousarray(split.targets, dtype=np.float32))
        self.mask = torch.from_numpy(np.ascontiguousarray(split.mask, dtype=np.float32))
        self.cached: torch.Tensor | None = None
        if cache:
            items = (self._load(i) for i in range(len(split)))
            bar = tqdm(items, total=len(split), desc=f"preprocess {split.name}", unit="img", disable=None if progress else True, leave=False)
            self.cached = torch.from_numpy(np.stack(list(bar)))

    def _load(self, i: int) -> np.ndarray:
        if self.split.images is not None:
            return preprocess(Image.fromarray(self.split.images[i]), self.spec)
        return preprocess(load_image(self.split.paths[i]), self.spec)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.cached[i] if self.cached is not None else torch.from_numpy(self._load(i))
        return x, self.targets[i], self.mask[i]


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's sample order for an epoch: a permutation fixed by (seed, epoch), padded so every
    rank gets the same count. Resuming mid-epoch replays exactly the same order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_rank = -(-n // world)
    order += order[: per_rank * world - n]
    return order[rank::world]
