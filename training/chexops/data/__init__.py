"""CheXpert-layout data: reading and policies, splits, extra sources, the prepare step and its manifest,
synthetic data, sample images. May import chexops.config, imaging and core; no torch.
"""
