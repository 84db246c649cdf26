"""chexops.registry."""
