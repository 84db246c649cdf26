"""`chexops evaluate`: held-out metrics with intervals, thresholds, calibration, slices, reports; the records
it writes and the quality gate that judges them. May import train and everything below it.
"""
