"""The MLflow Model Registry: model references, `chexops register` (gate, then a version), promotion evidence
kept as version tags. May import evaluation and everything below it.
"""
