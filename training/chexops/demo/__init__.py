"""`make demo`: the lifecycle on one machine through the training WorkflowTemplate, then the served model.
May import every stage below it (through processes: each step is a `chexops` command).
"""
