"""`chexops feedback export`: the clinicians' feedback as a dataset in CheXpert layout.

    DIR/CheXpert-v1.0-small/train.csv
    DIR/CheXpert-v1.0-small/feedback/patientNNNNN/study1/view1_frontal.png   (or .jpg: the image kept, pixels only)

One row per feedback whose prediction has a stored image, oldest first. The labels of a row:

- the feedback's `labels` (label → 0/1) where given, as 1.0 / 0.0;
- for the other labels: when the clinician said the prediction was `correct`, the prediction itself
  (positive → 1.0, negative → 0.0); when `incorrect`, blank (unknown: what was wrong was not said);
- a feedback `incorrect` without any `labels` says nothing usable about any label: it is skipped.

A blank here means "nobody said", never "absent": next to the CSV, `train.csv.policy.yaml` says
`blank: ignore`, and the training reader (`chexops.data.chexpert`) then masks every blank out of the
loss whatever `data.policy.blank` is configured to.

The store is read twice, streamed: once without images (the label columns), once with them, one
row in memory at a time.

Sex and Age are blank (the service keeps no patient data). Each image is its own "patient": the
service never knows who the patient is, so images of one patient cannot be grouped (split such a set
by time or clinic, not by patient). Frontal/Lateral and AP/PA come from a DICOM's ViewPosition when
it had one (AP, PA, LL/LATERAL), else Frontal and blank.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Any

from chexops.core.errors import UserInputError
from chexops.core.labels import CHEXPERT_LABELS, META_COLUMNS
from chexops.core.results import Result
from chexops.data.chexpert import DATASET_DIR, source_policy_path
from chexops.feedback.store import FeedbackStore
from chexops.imaging.decode import JPEG_MAGIC


class FeedbackExport(Result):
    """What `export_feedback` wrote: the dataset root and its CSV, its rows out of all feedback, the feedback
    skipped (`incorrect_without_labels`, `no_image`), the label columns and the store read."""

    out: str
    csv: str
    rows: int
    feedback: int
    skipped: dict[str, int]
    labels: list[str]
    store: str


def _view(info: dict[str, Any]) -> tuple[str, str]:
    view = str(info.get("view_position", "")).strip().upper()
    if view in ("LL", "RL", "LATERAL", "LAT"):
        return "Lateral", ""
    return "Frontal", view if view in ("AP", "PA") else ""


def row_labels(record: dict[str, Any]) -> dict[str, str] | None:
    """label → "1.0" / "0.0" / "" for one feedback, or None when it says nothing usable."""
    given = record["labels"] or {}
    if not record["correct"] and not given:
        return None
    values: dict[str, str] = {}
    for finding in record["findings"]:
        label = finding["label"]
        if label in given:
            values[label] = "1.0" if int(given[label]) == 1 else "0.0"
        elif record["correct"]:
            values[label] = "1.0" if finding["positive"] else "0.0"
        else:
            values[label] = ""
    return values


def export_feedback(store: FeedbackStore, out: Path, overwrite: bool = False) -> FeedbackExport:
    out = Path(out)
    folder = out / DATASET_DIR
    if folder.exists():
        if not overwrite:
            raise UserInputError(f"{folder} already exists; pass --overwrite to replace it.")
        shutil.rmtree(folder)
    labels = list(CHEXPERT_LABELS)
    feedback = 0
    for record in store.export_rows(images=False):
        feedback += 1
        labels += [f["label"] for f in record["findings"] if f["label"] not in labels]
    skipped = {"incorrect_without_labels": 0, "no_image": 0}
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "train.csv"
    rows = 0
    written: list[str] = []
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*META_COLUMNS, *labels])
        writer.writeheader()
        for record in store.export_rows():
            values = row_labels(record)
            if values is None:
                skipped["incorrect_without_labels"] += 1
                continue
            if not record["image_png"]:
                skipped["no_image"] += 1
                continue
            rows += 1
            lateral, ap_pa = _view(record["image_info"])
            suffix = ".jpg" if record["image_png"].startswith(JPEG_MAGIC) else ".png"
            relative = f"{DATASET_DIR}/feedback/patient{rows:05d}/study1/view1_{lateral.lower()}{suffix}"
            path = out / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(record["image_png"])
            written.append(record["request_id"])
            writer.writerow(
                {
                    "Path": relative,
                    "Sex": "",
                    "Age": "",
                    "Frontal/Lateral": lateral,
                    "AP/PA": ap_pa,
                    **{label: values.get(label, "") for label in labels},
                }
            )
        fh.flush()
        os.fsync(fh.fileno())
    source_policy_path(csv_path).write_text(
        "# chexops feedback export: a blank label is one nobody gave; never a negative.\nblank: ignore\n"
    )
    store.mark_exported(written)  # only once the training set is complete: the retention clock of their images
    return FeedbackExport(
        out=str(out),
        csv=str(csv_path),
        rows=rows,
        feedback=feedback,
        skipped=skipped,
        labels=labels,
        store=store.location,
    )
