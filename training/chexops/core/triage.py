"""The triage priority of a set of findings: one rule for the service, the simulated clinic and the reports."""

from __future__ import annotations

# Triage. "urgent": a positive finding that can need action within hours (air or fluid in the pleural
# space, pulmonary oedema, consolidation / pneumonia). "review": any other positive finding, except
# "No Finding" and "Support Devices" (a device is not a disease). "routine": nothing positive.
# A model with other labels: its labels named here keep their meaning, every other positive is "review".
URGENT_FINDINGS = ("Pneumothorax", "Pleural Effusion", "Edema", "Consolidation", "Pneumonia")  # as the rule reads
URGENT = frozenset(URGENT_FINDINGS)
NOT_A_FINDING = frozenset({"No Finding", "Support Devices"})


PRIORITY_RULE = (
    f"urgent if {', '.join(URGENT_FINDINGS[:-1])} or {URGENT_FINDINGS[-1]} is positive; "
    f"review if any other finding (not {' or '.join(sorted(NOT_A_FINDING))}) is positive; "
    "routine otherwise"
)


def priority(findings: list[dict]) -> str:
    positive = {f["label"] for f in findings if f["positive"]}
    if positive & URGENT:
        return "urgent"
    if positive - NOT_A_FINDING:
        return "review"
    return "routine"
