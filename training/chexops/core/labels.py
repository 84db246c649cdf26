"""The CheXpert label set: the 14 observations and the five competition findings."""

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

# Columns that precede the observations in a CheXpert CSV.
META_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")


def metric_key(label: str) -> str:
    """A label as it appears in metric names: 'Pleural Effusion' -> 'Pleural_Effusion'."""
    return label.replace(" ", "_")
