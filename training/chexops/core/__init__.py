"""Foundations every stage shares: errors and exit codes, paths, atomic files, processes, console output,
typed results, bootstrap statistics, labels, names, triage. Imports nothing of chexops; no torch, MLflow or click.
"""
