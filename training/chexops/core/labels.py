"""The CheXpert label set: the 14 observations and the five competition findings; the default threshold."""

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# The findings the CheXpert competition scores (Irvin et al., 2019).
COMPETITION_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)

# The operating threshold of a label without an evaluated one, and the rule recorded with such thresholds.
DEFAULT_THRESHOLD = 0.5
DEFAULT_THRESHOLD_RULE = f"default-{DEFAULT_THRESHOLD}"

# Columns that precede the observations in a CheXpert CSV.
META_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")


def metric_key(label: str) -> str:
    """A label as it appears in metric names: 'Pleural Effusion' -> 'Pleural_Effusion'."""
    return label.replace(" ", "_")
