"""Clinicians' feedback: the store the service writes (SQLite or PostgreSQL) and its export as the next
training set. May import data, imaging and core; never torch, MLflow or click.
"""
