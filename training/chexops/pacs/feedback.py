"""A radiologist's verdict on a report, by its study: sent to the service's /feedback for each image of the
study the gateway reported (the same store, checks and clinic as the page's feedback)."""

from __future__ import annotations

from typing import Any

import httpx

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.results import Result
from chexops.pacs.state import State


class PacsFeedbackResult(Result):
    study: str  # the study's salted hash, as the gateway's ledger names it
    correct: bool
    sent: list[dict[str, Any]]


def send_feedback(
    state: State, service: str, api_key: str, study_uid: str, correct: bool,
    labels: dict[str, int] | None = None, unusable: bool = False, note: str | None = None,
) -> PacsFeedbackResult:  # fmt: skip
    study = state.key(study_uid)
    reports = [r for r in state.reports_for_study(study) if r.get("request_id")]
    if not reports:
        raise UserInputError("the gateway has reported no image of that study (check --study and --state).")
    body: dict[str, Any] = {"correct": correct}
    if labels:
        body["labels"] = labels
    if unusable:
        body["unusable"] = True
    if note:
        body["note"] = note
    sent = []
    with httpx.Client(base_url=service.rstrip("/"), timeout=30) as client:
        for report in reports:
            try:
                answer = client.post(
                    "/feedback",
                    json={"request_id": report["request_id"], **body},
                    headers={"Authorization": f"Bearer {api_key}"},
                )
            except httpx.HTTPError as exc:
                raise ChexopsError(f"the service at {service} cannot be reached ({type(exc).__name__}).") from None
            if 400 <= answer.status_code < 500:
                raise UserInputError(f"the service refused the feedback: {answer.json().get('error', answer.text)}")
            if answer.status_code >= 500:
                raise ChexopsError(f"the service could not store the feedback ({answer.status_code}); try again.")
            sent.append({"request_id": report["request_id"], "status": answer.status_code})
    return PacsFeedbackResult(study=study, correct=correct, sent=sent)
