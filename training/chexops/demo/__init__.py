"""chexops.demo."""
