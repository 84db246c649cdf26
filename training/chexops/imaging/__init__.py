"""Clinical images to model inputs: decoding (PNG, JPEG, DICOM), the preprocessing training and serving share,
drift scores. May import chexops.core only; no torch.
"""
