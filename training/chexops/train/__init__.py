"""The training loop (read it top to bottom in loop.py), the checkpoint format, the torch dataset, the networks,
the per-label metrics. May import data, tracking, config, imaging and core.
"""
