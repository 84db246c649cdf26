"""The torch side of the data: splits as tensors, preprocessed by `chexops.imaging.preprocessing`, and the
loaders that decode them in worker processes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm.auto import tqdm

from chexops.data.splits import Split
from chexops.imaging.preprocessing import PreprocessSpec, load_image, preprocess


class RadiographDataset(torch.utils.data.Dataset):
    """(image C×H×W, targets, mask) triples. With `cache`, every image is preprocessed once up front
    (in `num_workers` worker processes when given); without, each item is decoded when asked for."""

    def __init__(
        self, split: Split, spec: PreprocessSpec, cache: bool = True, progress: bool = True, num_workers: int = 0
    ):
        self.split, self.spec = split, spec
        self.targets = torch.from_numpy(np.ascontiguousarray(split.targets, dtype=np.float32))
        self.mask = torch.from_numpy(np.ascontiguousarray(split.mask, dtype=np.float32))
        self.cached: torch.Tensor | None = None
        if cache:
            loader = DataLoader(self, batch_size=64, num_workers=num_workers, generator=own_generator())
            bar = tqdm(
                loader,
                total=len(loader),
                desc=f"preprocess {split.name}",
                unit="batch",
                disable=None if progress else True,
                leave=False,
            )
            self.cached = torch.cat([x for x, _, _ in bar]) if len(split) else torch.empty(0)

    def _load(self, i: int) -> np.ndarray:
        if self.split.images is not None:
            return preprocess(Image.fromarray(self.split.images[i]), self.spec)
        return preprocess(load_image(self.split.paths[i]), self.spec)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.cached[i] if self.cached is not None else torch.from_numpy(self._load(i))
        return x, self.targets[i], self.mask[i]


def own_generator() -> torch.Generator:
    """A loader's own random generator: creating a loader's iterator draws a seed from it, and drawing
    from the global one would shift model initialisation and dropout with the loader settings."""
    return torch.Generator().manual_seed(0)


class EpochBatches(Sampler[list[int]]):
    """This rank's batches for one epoch, from a `DistributedSampler` (a permutation fixed by seed and
    epoch, padded so that every rank gets the same count), starting at a given batch: resuming
    mid-epoch replays exactly the batches an uninterrupted run would have seen."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.sampler = DistributedSampler(
            range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.batch_size = batch_size
        self.start = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.start = start_batch

    def batches(self) -> list[list[int]]:
        order = list(self.sampler)
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches()[self.start :])

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)


def train_loader(ds: RadiographDataset, batches: EpochBatches, num_workers: int, pin_memory: bool) -> DataLoader:
    """The training loader: `num_workers` persistent decoding processes (none for a cached dataset,
    where an item is a tensor index), pinned memory for a CUDA device."""
    workers = 0 if ds.cached is not None else num_workers
    return DataLoader(
        ds,
        batch_sampler=batches,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        generator=own_generator(),
    )
