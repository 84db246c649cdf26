"""Names every stage shares: the registered model, the reference served by default, the environments."""

from __future__ import annotations

DEFAULT_MODEL_NAME = "chexops-cxr"  # the registered model
DEFAULT_SERVE_REF = f"models:/{DEFAULT_MODEL_NAME}@candidate"  # what `chexops serve` serves unless told
ENVIRONMENTS = ("staging", "canary", "production")  # each an overlay in k8s/chexops/overlays and an MLflow alias
