"""chexops.feedback."""
