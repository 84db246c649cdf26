"""The closed loop's commands: `chexops simulate` (clinic traffic) and `chexops report business`
(two model versions on the same simulated clinic). The work is in `chexops.loop.simulate` and
`chexops.loop.business`."""

from __future__ import annotations

from pathlib import Path

import click
from pydantic import ValidationError

from chexops.cli.output import Output, result_output
from chexops.core.errors import UserInputError, validation_problems
from chexops.loop.simulate import PATTERNS, SimulateConfig, human, simulate


@click.command("simulate")
@click.option("--url", required=True, help="The endpoint, e.g. http://127.0.0.1:3000.")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="A CheXpert-layout CSV of held-out studies (e.g. valid.csv).",
)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="The folder its paths are relative to.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Report folder.")
@click.option("--pattern", type=click.Choice(PATTERNS), default="poisson", show_default=True)
@click.option("--rate", type=float, default=2.0, show_default=True, help="Studies per second, on average.")
@click.option("--duration", type=float, default=60.0, show_default=True, help="Seconds of traffic.")
@click.option("--max-requests", type=int, default=1000, show_default=True)
@click.option("--burst-size", type=int, default=8, show_default=True, help="Studies per burst (pattern burst).")
@click.option(
    "--review-share", type=float, default=0.0, show_default=True, help="Share of studies a clinician reviews."
)
@click.option("--error-rate", type=float, default=0.0, show_default=True, help="The clinician's per-label error rate.")
@click.option("--shift", default="none", show_default=True, help="none, invert or scale:F: alter every image.")
@click.option(
    "--judge",
    type=click.Choice(["triage", "findings"]),
    default="triage",
    show_default=True,
    help="The clinician's 'correct': the triage priority agrees, or every finding does.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True, help="Seconds per request.")
@click.option("--concurrency", type=int, default=16, show_default=True, help="Requests in flight at most.")
@click.option("--api-key-env", default="CHEXOPS_API_KEY", show_default=True, help="Environment variable with the key.")
@result_output
def simulate_command(csv_path, api_key_env, **options) -> Output:
    """Send held-out studies to an endpoint as clinics would; answer as clinicians; report."""
    try:
        cfg = SimulateConfig(csv=csv_path, **options)
    except ValidationError as exc:
        raise UserInputError(f"invalid simulation settings: {validation_problems(exc)}.") from None
    report = simulate(cfg, api_key_env)
    return Output(report.summary, human(report.summary))


@click.group("report")
def report() -> None:
    """Reports across runs: the business evaluation of two model versions."""


@report.command("business")
@click.option(
    "--a",
    "a_path",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="The simulate report (simulate.json or its folder) of model version A.",
)
@click.option(
    "--b",
    "b_path",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="The simulate report of version B, on the same clinic (same --csv and --seed).",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Report folder.")
@click.option("--arrivals-per-hour", type=float, default=10.0, show_default=True, help="Studies arriving per hour.")
@click.option("--reading-minutes", type=float, default=5.0, show_default=True, help="Mean reading time of a study.")
@click.option("--reading-shape", type=float, default=4.0, show_default=True, help="Gamma shape of reading times.")
@click.option("--readers", type=int, default=1, show_default=True, help="Radiologists reading in parallel.")
@click.option("--replications", type=int, default=200, show_default=True, help="Simulated days (bootstrap of studies).")
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Resamples for the rates' intervals.")
@click.option("--seed", type=int, default=0, show_default=True)
@result_output
def business(a_path, b_path, out, **parameters) -> Output:
    """Compare two model versions on the same simulated clinic: time to read abnormal studies (priority
    worklist vs FIFO), sensitivity/specificity, agreement with clinicians; Markdown report with plots."""
    from chexops.loop.business import ClinicParameters, business_report
    from chexops.loop.business import human as business_human

    try:
        params = ClinicParameters(**parameters)
    except ValidationError as exc:
        raise UserInputError(f"invalid clinic parameters: {validation_problems(exc)}.") from None
    result = business_report(a_path, b_path, out, params)
    return Output(result, business_human(result))


@report.command("agreement-ci")
@click.option("--rate", type=click.FloatRange(0, 1), default=0.85, show_default=True, help="The true agreement rate.")
@click.option("--n", "sizes", default="20,50,200,1000", show_default=True, help="Reviewed studies, comma-separated.")
@result_output
def agreement_ci(rate, sizes) -> Output:
    """The 95% interval of the agreement rate at feedback volumes (by simulation): a canary threshold's noise."""
    from chexops.loop.business import agreement_interval

    try:
        ns = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise UserInputError(f"--n must be whole numbers separated by commas, got {sizes!r}.") from None
    if not ns or min(ns) < 1:
        raise UserInputError("--n needs at least one number of reviewed studies, each at least 1.")
    rows = [agreement_interval(n, rate) for n in ns]
    text = "\n".join(
        f"n={r['n']:>5}: agreement {rate:.2f} is measured within [{r['low']:.3f}, {r['high']:.3f}] "
        f"(± {r['half_width']:.3f})"
        for r in rows
    )
    return Output({"rate": rate, "intervals": rows}, text)
