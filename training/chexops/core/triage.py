"""The triage priority of a set of findings: one rule for the service, the simulated clinic and the reports."""

from __future__ import annotations


# Triage. "urgent": a positive finding that can need action within hours (air or fluid in the pleural
# space, pulmonary oedema, consolidation / pneumonia). "review": any other positive finding, except
# "No Finding" and "Support Devices" (a device is not a disease). "routine": nothing positive.
# A model with other labels: its labels named here keep their meaning, every other positive is "review".
URGENT = frozenset({"Pneumothorax", "Pleural Effusion", "Edema", "Consolidation", "Pneumonia"})


NOT_A_FINDING = frozenset({"No Finding", "Support Devices"})


PRIORITY_RULE = ("urgent if Pneumothorax, Pleural Effusion, Edema, Consolidation or Pneumonia is positive; "
                 "review if any other finding (not No Finding or Support Devices) is positive; routine otherwise")


def priority(findings: list[dict]) -> str:
    positive = {f["label"] for f in findings if f["positive"]}
    if positive & URGENT:
        return "urgent"
    if positive - NOT_A_FINDING:
        return "review"
    return "routine"
