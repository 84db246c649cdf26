"""The findings of one radiograph as a DICOM Comprehensive SR (highdicom), filed into the radiograph's study.

The report's UIDs derive from the source's SOP Instance UID (its series from the study's UID): a report sent
again after a crash is the same object, which the PACS keeps once."""

from __future__ import annotations

from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from chexops.core.triage import PRIORITY_RULE

DECISION_SUPPORT = (
    "Computer-aided decision support, not a diagnosis: the probabilities are a model's estimates and every "
    "finding must be confirmed by a qualified reader."
)
SR_SERIES_NUMBER = 9901
_C = "99CHEXOPS"  # private coding scheme for what DCM and SCT do not name


def _code(value: str, meaning: str, scheme: str = _C) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning[:64])


FINDING = _code("finding", "Finding")
PROBABILITY = _code("probability", "Probability")
THRESHOLD = _code("threshold", "Operating threshold")
VERDICT = _code("verdict", "Verdict")
PRIORITY = _code("priority", "Triage priority")
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
PRIORITIES = {level: _code(level, level.capitalize()) for level in ("urgent", "review", "routine")}
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
TITLE = _code("cxr-ai-report", "Chest radiograph AI findings")


def report_uids(source_uid: str, study_uid: str) -> tuple[str, str]:
    """(SOP Instance UID, Series Instance UID) of the report: the same for the same source."""
    return generate_uid(entropy_srcs=["chexops-sr", source_uid]), generate_uid(entropy_srcs=["chexops-sr", study_uid])


def build_report(
    image: Dataset, study: Dataset, answer: dict[str, Any], model: dict[str, Any]
) -> hd.sr.ComprehensiveSR:
    """`image`: the (de-identified) radiograph; `study`: the study's patient and study attributes, as the PACS
    has them; `answer`: /predict's response; `model`: /model's description of the model that answered."""
    evidence = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        setattr(evidence, keyword, getattr(image, keyword))
    for keyword in (
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
        "AccessionNumber", "ReferringPhysicianName", "StudyID",
    ):  # fmt: skip
        setattr(evidence, keyword, study.get(keyword, "") or "")
    items = []
    for finding in answer["findings"]:
        group = hd.sr.ContainerContentItem(FINDING, relationship_type="CONTAINS")
        group.ContentSequence = [
            hd.sr.CodeContentItem(FINDING, _code(finding["label"], finding["label"]), relationship_type="CONTAINS"),
            hd.sr.NumContentItem(PROBABILITY, float(finding["probability"]), UNITLESS, relationship_type="CONTAINS"),
            hd.sr.NumContentItem(THRESHOLD, float(finding["threshold"]), UNITLESS, relationship_type="CONTAINS"),
            hd.sr.CodeContentItem(VERDICT, PRESENT if finding["positive"] else ABSENT, relationship_type="CONTAINS"),
            hd.sr.TextContentItem(
                VERDICT,
                f"{finding['label']}: {'present' if finding['positive'] else 'absent'} (probability "
                f"{finding['probability']:.3f}, threshold {finding['threshold']:.2f})",
                relationship_type="CONTAINS",
            ),
        ]
        items.append(group)
    level = answer["priority"]
    data = model.get("training_data") or {}
    facts = [
        hd.sr.CodeContentItem(PRIORITY, PRIORITIES[level], relationship_type="CONTAINS"),
        hd.sr.TextContentItem(
            PRIORITY, f"Triage priority: {level} ({PRIORITY_RULE})"[:1024], relationship_type="CONTAINS"
        ),
        hd.sr.TextContentItem(
            _code("model", "Algorithm"),
            f"Model {answer['model']['name']}, registry version {answer['model']['version']}, "
            f"run {model.get('run_id') or 'unknown'}, {answer['model'].get('precision', '')}; learnt from: "
            f"{data.get('description') or data.get('kind') or 'not stated'}; intended use: "
            f"{model.get('intended_use') or 'not stated'}. {model.get('warning') or ''}".strip()[:1024],
            relationship_type="CONTAINS",
        ),
        hd.sr.TextContentItem(_code("disclaimer", "Decision support statement"), DECISION_SUPPORT, "CONTAINS"),
        hd.sr.CompositeContentItem(
            codes.DCM.SourceImageForProcessing
            if hasattr(codes.DCM, "SourceImageForProcessing")
            else _code("source", "Source image"),
            image.SOPClassUID,
            image.SOPInstanceUID,
            relationship_type="CONTAINS",
        ),
    ]
    root = hd.sr.ContainerContentItem(TITLE)
    root.ContentSequence = facts + items
    sop_uid, series_uid = report_uids(str(image.SOPInstanceUID), str(image.StudyInstanceUID))
    return hd.sr.ComprehensiveSR(
        evidence=[evidence],
        content=root,
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="chexops",
        is_complete=True,
        series_description="chexops AI findings (decision support)",
    )


def read_findings(sr: Dataset) -> dict[str, tuple[float, float, bool]]:
    """label → (probability, threshold, positive) from a report `build_report` made (the tests read it back)."""
    found = {}
    for group in sr.ContentSequence:
        if group.ConceptNameCodeSequence[0].CodeValue != "finding" or group.ValueType != "CONTAINER":
            continue
        values: dict[str, Any] = {}
        for item in group.ContentSequence:
            name = item.ConceptNameCodeSequence[0].CodeValue
            if item.ValueType == "CODE":
                values[name] = item.ConceptCodeSequence[0]
            elif item.ValueType == "NUM":
                values[name] = float(item.MeasuredValueSequence[0].NumericValue)
        found[values["finding"].CodeMeaning] = (
            values["probability"],
            values["threshold"],
            values["verdict"].CodeValue == PRESENT.value,  # SNOMED codes are short
        )
    return found
