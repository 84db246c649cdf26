"""The networks: shapes for 1 and 3 channels, CAM consistency, pretrained loading."""

from __future__ import annotations

import pytest
import torch

from chexops.config import ModelConfig
from chexops.core.errors import ConfigError
from chexops.imaging.preprocessing import PreprocessSpec
from chexops.train.models import build_model

SMALL_VIT = {"vit_hidden_size": 64, "vit_heads": 4, "vit_layers": 2, "vit_patch_size": 8}


@pytest.mark.parametrize("name,size", [("small", 28), ("densenet121", 64), ("vit", 64)])
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_and_cam(name, size, channels):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, **SMALL_VIT), 5, PreprocessSpec(size=size, channels=channels)).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        logits = model(x)
        fmap = model.feature_map(x)
        # the head is linear over pooled features, so the mean of the CAM equals the logit
        cam = torch.einsum("kc,bchw->bkhw", model.head.weight, fmap) + model.head.bias[None, :, None, None]
    assert logits.shape == (2, 5) and fmap.ndim == 4
    assert torch.allclose(cam.mean(dim=(2, 3)), logits, atol=1e-4)


def test_pretrained_weights_load_backbone_only(tmp_path):
    spec = PreprocessSpec(size=28)
    source = build_model(ModelConfig(name="small", width=8), 3, spec)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = build_model(ModelConfig(name="small", width=8, pretrained_weights=tmp_path / "w.pt"), 7, spec)
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(target.backbone.state_dict()[key], value)
    assert target.head.weight.shape == (7, 32)


def test_pretrained_weights_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_model(ModelConfig(name="small", pretrained_weights=tmp_path / "none.pt"), 2, PreprocessSpec(size=28))
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="no tensor"):
        build_model(ModelConfig(name="small", pretrained_weights=tmp_path / "other.pt"), 2, PreprocessSpec(size=28))


def test_vit_needs_divisible_size():
    with pytest.raises(ConfigError, match="multiple"):
        build_model(ModelConfig(name="vit", **{**SMALL_VIT, "vit_patch_size": 6}), 2, PreprocessSpec(size=64))
