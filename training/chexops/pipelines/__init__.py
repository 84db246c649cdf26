"""Argo WorkflowTemplates run on this machine (`chexops pipeline run --local`) and a pipeline's recorded
outcome. May import tracking and core.
"""
