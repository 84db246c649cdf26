"""chexops.imaging."""
