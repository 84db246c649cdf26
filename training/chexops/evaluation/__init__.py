"""chexops.evaluation."""
