"""`chexops data stats`: what a CheXpert CSV holds, before and after the uncertainty policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chexops.config import PolicyConfig
from chexops.core.results import Result
from chexops.data.chexpert import apply_policy, check_images, image_paths, read_chexpert_csv
from chexops.data.splits import label_counts, policy_counts


class Views(Result):
    """Rows per Frontal/Lateral and per AP/PA value (blank AP/PA counted as `blank`)."""

    frontal_lateral: dict[str, int]
    ap_pa: dict[str, int]


class ImageCheck(Result):
    """The images a CSV names under a root: how many are missing or unreadable, a few of their CSV paths."""

    root: str
    missing: int
    unreadable: int
    examples: list[str]


class CsvStats(Result):
    """What a CheXpert CSV holds: rows, patients, studies, views, the policy applied and per label the raw
    counts (positive, negative, uncertain, blank) and after the policy (positive, negative, ignored)."""

    omit_unset = frozenset({"images"})

    csv: str
    rows: int
    patients: int
    studies: int
    views: Views
    policy: dict[str, Any]
    labels: dict[str, dict[str, dict[str, int]]]
    images: ImageCheck | None = None


def csv_stats(
    csv: str | Path, labels: list[str], policy: PolicyConfig, root: str | Path | None = None, verify_images: bool = True
) -> CsvStats:
    table = read_chexpert_csv(csv, labels)
    frame = table.frame
    policy = table.policy(policy)
    targets, mask = apply_policy(table.values, labels, policy)
    ap_pa = frame["AP/PA"].where(frame["AP/PA"] != "", "blank")
    out = CsvStats(
        csv=str(csv),
        rows=len(frame),
        patients=int(frame["patient"].nunique()),
        studies=int(frame["study"].nunique()),
        views=Views(
            frontal_lateral={k: int(v) for k, v in frame["Frontal/Lateral"].value_counts().items()},
            ap_pa={k: int(v) for k, v in ap_pa.value_counts().items()},
        ),
        policy=policy.model_dump(),
        labels={
            label: {"raw": raw, "after_policy": after}
            for (label, raw), after in zip(
                label_counts(table.values, labels).items(), policy_counts(targets, mask, labels).values()
            )
        },
    )
    if root is not None:
        missing, unreadable = check_images(image_paths(table, root), verify=verify_images)
        out.images = ImageCheck(
            root=str(root),
            missing=len(missing),
            unreadable=len(unreadable),
            examples=[str(frame["Path"].iloc[i]) for i in (missing + unreadable)[:5]],
        )
    return out


def format_stats(stats: CsvStats) -> str:
    """A human-readable table of `csv_stats`."""
    lines = [
        f"{stats.csv}: {stats.rows:,} rows, {stats.patients:,} patients, {stats.studies:,} studies",
        "views: " + ", ".join(f"{k} {v:,}" for k, v in {**stats.views.frontal_lateral, **stats.views.ap_pa}.items()),
        "",
        f"{'label':<28}{'1':>9}{'0':>9}{'-1':>9}{'blank':>9}  | {'pos':>9}{'neg':>9}{'ignored':>9}",
    ]
    for label, counts in stats.labels.items():
        r, a = counts["raw"], counts["after_policy"]
        lines.append(
            f"{label:<28}{r['positive']:>9,}{r['negative']:>9,}{r['uncertain']:>9,}{r['blank']:>9,}  | "
            f"{a['positive']:>9,}{a['negative']:>9,}{a['ignored']:>9,}"
        )
    if stats.images is not None:
        im = stats.images
        lines += [
            "",
            f"images under {im.root}: {im.missing:,} missing, {im.unreadable:,} unreadable"
            + (f" (e.g. {', '.join(im.examples[:3])})" if im.examples else ""),
        ]
    return "\n".join(lines)
