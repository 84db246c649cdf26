"""chexops.core."""
