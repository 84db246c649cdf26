"""`chexops pacs serve`: the DICOM gateway between a PACS and the clinic endpoint; `chexops pacs feedback`: a
radiologist's verdict on a report, by its study."""

from __future__ import annotations

import os
from pathlib import Path

import click

from chexops.cli.output import Output, result_output
from chexops.core.errors import UserInputError


@click.group()
def pacs() -> None:
    """The hospital's PACS as the clinic's client (DICOM in, Structured Reports back)."""


@pacs.command("serve")
@click.option(
    "--listen", default=None, help="HOST:PORT of the C-STORE SCP [default: $CHEXOPS_PACS_LISTEN or 0.0.0.0:11112]."
)
@click.option("--ae-title", default=None, help="The gateway's AE title [default: $CHEXOPS_PACS_AE_TITLE or CHEXOPS].")
@click.option("--send-to", default=None, help="AET@HOST:PORT of the PACS that receives the reports (C-STORE).")
@click.option("--service", default=None, help="The clinic endpoint's URL [default: $CHEXOPS_PACS_SERVICE].")
@click.option("--api-key-env", default=None, help="Variable holding the clinic's API key [default: CHEXOPS_API_KEY].")
@click.option("--api-key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File with the API key (over --api-key-env) [default: $CHEXOPS_PACS_API_KEY_FILE].")  # fmt: skip
@click.option("--state", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="State directory (outbox, ledger) [default: $CHEXOPS_HOME/pacs].")  # fmt: skip
@click.option("--metrics", default=None, help="HOST:PORT to serve Prometheus /metrics on.")
@click.option("--orthanc-url", default=None, help="Orthanc's REST API, to flag each study's triage priority.")
@click.option("--json-log", is_flag=True, default=None, help="One JSON object per log line.")
def pacs_serve(**given) -> None:
    """Receive radiographs over DICOM, read them with the clinic endpoint, store the findings back as SRs."""
    from chexops.pacs.flags import OrthancFlag
    from chexops.pacs.gateway import serve
    from chexops.pacs.settings import PacsSettings

    settings = PacsSettings.load(**given)
    flag = None
    if settings.orthanc_url:
        user, _, password = os.environ.get(settings.orthanc_auth_env, "").partition(":")
        flag = OrthancFlag(settings.orthanc_url, (user, password) if user else None)
    serve(settings, flag)


@pacs.command("feedback")
@click.option("--study", "study_uid", required=True, help="The study's Study Instance UID.")
@click.option("--correct/--wrong", required=True, help="The report is right, or it is not.")
@click.option("--label", "labels", multiple=True, help="With --wrong: a finding as read, LABEL=1 or LABEL=0 (repeat).")
@click.option("--unusable", is_flag=True, help="With --wrong: the image cannot be read.")
@click.option("--note", default=None)
@click.option("--state", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The gateway's state directory [default: $CHEXOPS_PACS_STATE or $CHEXOPS_HOME/pacs].")  # fmt: skip
@click.option("--service", default=None, help="The clinic endpoint's URL [default: $CHEXOPS_PACS_SERVICE].")
@click.option("--api-key-env", default=None, help="Variable holding the clinic's API key [default: CHEXOPS_API_KEY].")
@result_output
def pacs_feedback(study_uid, correct, labels, unusable, note, state, service, api_key_env) -> Output:
    """Confirm or reject the gateway's report on a study: stored with the page's feedback."""
    from chexops.pacs.feedback import send_feedback
    from chexops.pacs.settings import PacsSettings
    from chexops.pacs.state import State

    parsed: dict[str, int] = {}
    for item in labels:
        label, sep, value = item.rpartition("=")
        if not sep or value not in ("0", "1") or not label:
            raise UserInputError(f"--label must be LABEL=1 or LABEL=0, got {item!r}.")
        parsed[label] = int(value)
    settings = PacsSettings.load(send_to="-@-:1", state=state, service=service, api_key_env=api_key_env)
    if not Path(settings.state).is_dir():
        raise UserInputError(f"there is no gateway state at {settings.state} (check --state).")
    result = send_feedback(
        State(settings.state), settings.service, settings.api_key(), study_uid, correct, parsed, unusable, note
    )
    return Output(result, f"feedback ({'correct' if correct else 'wrong'}) sent for {len(result.sent)} report(s)")
