"""chexops.train."""
