"""The clinic endpoint's logic (bentos/service.py is the thin BentoML shell): settings, routes, inference,
auth, admission, metrics. May import feedback, export.files, imaging and core; never torch, MLflow or click.
"""
