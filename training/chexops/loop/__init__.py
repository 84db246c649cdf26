"""chexops.loop."""
