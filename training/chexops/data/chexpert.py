"""Reading CheXpert CSVs (v1.0-small and full size): validation, uncertainty policies, views, splits."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chexops.config import PolicyConfig
from chexops.core.errors import DataError
from chexops.core.labels import META_COLUMNS

log = logging.getLogger(__name__)

DATASET_DIR = "CheXpert-v1.0-small"  # the dataset folder of the small CheXpert: train.csv, valid.csv, images

_ALLOWED = {1.0, 0.0, -1.0}
_PATIENT = re.compile(r"(patient\d+)")


def source_policy_path(csv: str | Path) -> Path:
    """A CSV's own statement of what its blanks mean: `train.csv.policy.yaml` holding `blank: ignore`
    (written by `chexops feedback export`, whose blanks are labels nobody gave)."""
    return Path(f"{csv}.policy.yaml")


def _source_blank(csv: Path) -> str | None:
    path = source_policy_path(csv)
    if not path.is_file():
        return None
    import yaml

    try:
        declared = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(declared, dict) or set(declared) != {"blank"} or declared["blank"] not in ("ignore", "negative"):
        raise DataError(f"{path} must hold exactly `blank: ignore` or `blank: negative`, got {declared!r}.")
    return declared["blank"]


@dataclass
class ChexpertTable:
    """A validated CheXpert CSV: `frame` keeps the meta columns; `values` is rows × labels with
    1.0 / 0.0 / -1.0 and NaN for blank; `blank`: what the CSV itself says its blanks mean (None: as configured)."""

    path: Path
    frame: pd.DataFrame
    labels: list[str]
    values: np.ndarray
    blank: str | None = None

    def policy(self, configured: PolicyConfig) -> PolicyConfig:
        """The configured policy, with the blank rule this CSV declares for itself."""
        return configured if self.blank is None else configured.model_copy(update={"blank": self.blank})

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, rows: np.ndarray) -> "ChexpertTable":
        return ChexpertTable(
            self.path, self.frame.iloc[rows].reset_index(drop=True), self.labels, self.values[rows], self.blank
        )


def _row_error(path: Path, bad: pd.Series, column: str, what: str, count_noun: str = "rows") -> DataError:
    first = bad.index[0]
    value = bad.iloc[0]
    return DataError(
        f"{path}: row {first + 1} (line {first + 2}), column {column!r}: {what}, got {value!r}. "
        f"{len(bad)} {count_noun} in this column have this problem"
        + (
            f" (rows {', '.join(str(i + 1) for i in bad.index[:5])}{', ...' if len(bad) > 5 else ''})."
            if len(bad) > 1
            else "."
        )
        + " Fix the CSV and run again."
    )


def read_chexpert_csv(path: str | Path, labels: list[str]) -> ChexpertTable:
    """Read and validate a CheXpert CSV; every problem is a `DataError` naming the row and column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path} is not a readable CSV file: {str(exc).strip()}.") from None
    frame.columns = [c.strip() for c in frame.columns]
    missing = [c for c in (*META_COLUMNS, *labels) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)}. "
            f"A CheXpert CSV has the columns {', '.join(META_COLUMNS)} followed by the observations "
            f"({', '.join(labels[:3])}, ...); the header found was: {', '.join(frame.columns[:8])}"
            f"{', ...' if len(frame.columns) > 8 else ''}."
        )
    if frame.empty:
        raise DataError(f"{path} has a header but no rows.")

    paths = frame["Path"].str.strip()
    empty = paths[paths == ""]
    if len(empty):
        raise _row_error(path, empty, "Path", "the image path is empty")

    values = np.empty((len(frame), len(labels)), dtype=np.float32)
    for j, label in enumerate(labels):
        raw = frame[label].str.strip()
        parsed = pd.to_numeric(raw.where(raw != "", None), errors="coerce")
        bad = raw[(raw != "") & ~parsed.isin(_ALLOWED)]
        if len(bad):
            raise _row_error(path, bad, label, "a label must be 1.0, 0.0, -1.0 or blank")
        values[:, j] = parsed.to_numpy(dtype=np.float32, na_value=np.nan)

    age_raw = frame["Age"].str.strip()
    age = pd.to_numeric(age_raw.where(age_raw != "", None), errors="coerce")
    bad_age = age_raw[(age_raw != "") & (age.isna() | (age < 0) | (age > 130))]
    if len(bad_age):
        raise _row_error(path, bad_age, "Age", "Age must be a number of years (0-130)")
    view = frame["Frontal/Lateral"].str.strip()
    bad_view = view[~view.isin(["Frontal", "Lateral"])]
    if len(bad_view):
        raise _row_error(path, bad_view, "Frontal/Lateral", "must be 'Frontal' or 'Lateral'")

    meta = pd.DataFrame(
        {
            "Path": paths,
            "Sex": frame["Sex"].str.strip(),
            "Age": age.astype("float64"),
            "Frontal/Lateral": view,
            "AP/PA": frame["AP/PA"].str.strip(),
        }
    )
    meta["csv_row"] = np.arange(1, len(meta) + 1)
    meta["patient"] = patient_ids(meta["Path"])
    meta["study"] = meta["Path"].map(lambda p: str(Path(p).parent))
    return ChexpertTable(path, meta, list(labels), values, _source_blank(path))


def patient_ids(paths: pd.Series) -> pd.Series:
    """The patient of each image: the `patientNNNNN` folder, else the folder above the study."""
    found = paths.str.extract(_PATIENT, expand=False)
    fallback = paths.map(lambda p: str(Path(p).parent.parent))
    return found.fillna(fallback)


def filter_view(table: ChexpertTable, view: str) -> ChexpertTable:
    """Keep `frontal`, `ap`, `pa` or `all` images."""
    frame = table.frame
    if view == "all":
        keep = np.ones(len(frame), dtype=bool)
    elif view == "frontal":
        keep = (frame["Frontal/Lateral"] == "Frontal").to_numpy()
    elif view in ("ap", "pa"):
        keep = ((frame["Frontal/Lateral"] == "Frontal") & (frame["AP/PA"].str.upper() == view.upper())).to_numpy()
    else:
        raise DataError(f"unknown view filter {view!r}: use frontal, ap, pa or all")
    return table.subset(np.flatnonzero(keep))


def apply_policy(values: np.ndarray, labels: list[str], policy: PolicyConfig) -> tuple[np.ndarray, np.ndarray]:
    """Targets and a loss mask from raw labels: uncertain per label U-Ones/U-Zeros/U-Ignore, blank
    as negative or ignored."""
    targets = np.nan_to_num(values, nan=0.0).astype(np.float32)
    mask = np.ones_like(targets)
    blank = np.isnan(values)
    if policy.blank == "ignore":
        mask[blank] = 0.0
    for j, label in enumerate(labels):
        uncertain = values[:, j] == -1.0
        rule = policy.for_label(label)
        if rule == "ones":
            targets[uncertain, j] = 1.0
        elif rule == "zeros":
            targets[uncertain, j] = 0.0
        else:
            targets[uncertain, j] = 0.0
            mask[uncertain, j] = 0.0
    return targets, mask


def split_by_patient(patients: pd.Series, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of a train/validation split in which no patient is on both sides (deterministic)."""
    unique = np.array(sorted(set(patients)))
    if len(unique) < 2:
        raise DataError(f"a patient-level split needs at least 2 patients; the data has {len(unique)}.")
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val = min(max(1, round(len(unique) * val_fraction)), len(unique) - 1)
    val_patients = set(unique[order[:n_val]])
    is_val = patients.isin(val_patients).to_numpy()
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def image_paths(table: ChexpertTable, root: str | Path | None = None) -> list[Path]:
    """Absolute image paths. The CSV's paths are relative to `root` (default: the folder above the
    CSV's dataset folder); a root that points at the dataset folder itself is accepted too."""
    base = Path(root) if root is not None else table.path.parent.parent
    rel = [Path(p) for p in table.frame["Path"]]
    first = rel[0]
    if not (base / first).exists() and len(first.parts) > 1 and (base / Path(*first.parts[1:])).exists():
        return [base / Path(*p.parts[1:]) if len(p.parts) > 1 else base / p for p in rel]
    return [base / p for p in rel]


def check_images(paths: list[Path], verify: bool = True) -> tuple[list[int], list[int]]:
    """Indices of images that are missing and of those that cannot be decoded."""
    from PIL import Image

    missing, unreadable = [], []
    for i, p in enumerate(paths):
        if not p.is_file():
            missing.append(i)
            continue
        if verify:
            try:
                with Image.open(p) as im:
                    im.verify()
            except Exception:  # noqa: BLE001 - any decoder failure means unreadable
                unreadable.append(i)
    return missing, unreadable
