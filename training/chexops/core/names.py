"""Names every stage shares: the registered model, the reference served by default, the environments."""

from __future__ import annotations

import re

DEFAULT_MODEL_NAME = "chexops-cxr"  # the registered model
DEFAULT_SERVE_REF = f"models:/{DEFAULT_MODEL_NAME}@candidate"  # what `chexops serve` serves unless told
ENVIRONMENTS = ("staging", "canary", "production")  # each an overlay in k8s/chexops/overlays and an MLflow alias

# A registry reference: `models:/NAME@ALIAS` or `models:/NAME/VERSION` (resolved by chexops.registry.refs).
REGISTRY_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?$")


def is_registry_ref(uri: str) -> bool:
    return bool(REGISTRY_REF.match(uri.strip()))
