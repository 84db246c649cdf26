"""GitOps delivery: `chexops promote` (commits on the overlays, MLflow aliases), its git side, the load test
and S3 credentials for steps. May import registry, data, tracking and core.
"""
