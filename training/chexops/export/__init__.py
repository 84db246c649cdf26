"""chexops.export."""
