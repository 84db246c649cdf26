"""chexops.delivery."""
