"""Classifiers: a backbone's feature map, global average pooling, one linear layer.

Because the head is linear over pooled features, a class-activation map is the head's weights
applied to the feature map: exporters return both the probabilities and that map.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from chexops.config import ModelConfig
from chexops.core.errors import ConfigError
from chexops.imaging.preprocessing import PreprocessSpec

log = logging.getLogger(__name__)


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """B×C×h×w features, the last map before pooling."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.feature_map(x).mean(dim=(2, 3))
        return self.head(self.dropout(pooled))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def small_cnn(in_channels: int, width: int) -> tuple[nn.Module, int]:
    """A fast CNN for CPU runs: three double-conv blocks (width, 2·width, 4·width), two poolings."""
    backbone = nn.Sequential(
        _block(in_channels, width),
        nn.MaxPool2d(2),
        _block(width, 2 * width),
        nn.MaxPool2d(2),
        _block(2 * width, 4 * width),
    )
    return backbone, 4 * width


def densenet121(in_channels: int) -> tuple[nn.Module, int]:
    """DenseNet-121 (the CheXpert paper's network) from MONAI, without its classifier."""
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1, pretrained=False)
    return nn.Sequential(net.features, nn.ReLU(inplace=False)), 1024


class _ViTGrid(nn.Module):
    """MONAI's ViT with its patch tokens laid back out as a B×hidden×h×w map."""

    def __init__(self, in_channels: int, size: int, cfg: ModelConfig):
        super().__init__()
        from monai.networks.nets import ViT

        if size % cfg.vit_patch_size:
            raise ConfigError(f"preprocess.size {size} must be a multiple of model.vit_patch_size {cfg.vit_patch_size}")
        if cfg.vit_hidden_size % cfg.vit_heads:
            raise ConfigError("model.vit_hidden_size must be a multiple of model.vit_heads")
        self.grid = size // cfg.vit_patch_size
        self.vit = ViT(
            in_channels=in_channels,
            img_size=(size, size),
            patch_size=(cfg.vit_patch_size,) * 2,
            hidden_size=cfg.vit_hidden_size,
            mlp_dim=4 * cfg.vit_hidden_size,
            num_layers=cfg.vit_layers,
            num_heads=cfg.vit_heads,
            classification=False,
            spatial_dims=2,
            dropout_rate=cfg.dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.vit(x)
        b, n, d = tokens.shape
        return tokens.transpose(1, 2).reshape(b, d, self.grid, self.grid)


def build_model(cfg: ModelConfig, num_classes: int, spec: PreprocessSpec) -> Classifier:
    """The configured network for `num_classes` labels on inputs shaped by `spec`."""
    if cfg.name == "small":
        backbone, features = small_cnn(spec.channels, cfg.width)
    elif cfg.name == "densenet121":
        backbone, features = densenet121(spec.channels)
    else:
        backbone, features = _ViTGrid(spec.channels, spec.size, cfg), cfg.vit_hidden_size
    model = Classifier(backbone, features, num_classes, cfg.dropout)
    if cfg.pretrained_weights is not None:
        load_pretrained(model, cfg.pretrained_weights)
    return model


def load_pretrained(model: Classifier, path: Path) -> None:
    """Start the backbone from a local state dict (e.g. ImageNet weights); the head stays fresh.
    Keys may carry a `backbone.` prefix or none; tensors of another shape are left out."""
    if not Path(path).is_file():
        raise ConfigError(f"model.pretrained_weights: {path} does not exist (weights are never downloaded).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's file
        raise ConfigError(f"model.pretrained_weights: {path} is not a readable state dict: {exc}") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    own = model.backbone.state_dict()
    matched = {}
    for key, tensor in state.items():
        key = key.removeprefix("backbone.")
        if key in own and own[key].shape == tensor.shape:
            matched[key] = tensor
    if not matched:
        raise ConfigError(
            f"model.pretrained_weights: no tensor in {path} matches the {type(model.backbone).__name__} backbone."
        )
    model.backbone.load_state_dict(matched, strict=False)
    log.info("Loaded %d of %d backbone tensors from %s", len(matched), len(own), path)
