"""chexops: a chest X-ray classifier from CheXpert data to clinics."""

__version__ = "0.1.0"
