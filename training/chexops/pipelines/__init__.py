"""chexops.pipelines."""
