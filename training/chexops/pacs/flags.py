"""Urgent studies flagged where the PACS worklist shows them, behind one small interface per PACS."""

from __future__ import annotations

import logging
from typing import Protocol

import httpx

log = logging.getLogger(__name__)

PRIORITY_METADATA = "ChexopsPriority"  # declared in Orthanc's "UserMetadata" (docs/operations.md)
URGENT_LABEL = "chexops-urgent"


class StudyFlag(Protocol):
    def flag(self, study_uid: str, priority: str) -> None:
        """Mark the study with its triage priority; raises on failure (the worker retries)."""


class OrthancFlag:
    """Orthanc's REST API: the study's metadata `ChexopsPriority` = the priority, and (Orthanc ≥ 1.12, which has
    labels) the label `chexops-urgent` on urgent studies."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None, timeout: float = 10):
        # no keep-alive: Orthanc closes idle connections after a second (KeepAliveTimeout), a reuse may race it
        limits = httpx.Limits(max_keepalive_connections=0)
        self.client = httpx.Client(base_url=url.rstrip("/"), auth=auth, timeout=timeout, limits=limits)

    def study_id(self, study_uid: str) -> str:
        found = self.client.post("/tools/lookup", content=study_uid)
        found.raise_for_status()
        ids = [item["ID"] for item in found.json() if item.get("Type") == "Study"]
        if not ids:
            raise LookupError("the study is not (yet) in Orthanc")
        return ids[0]

    def flag(self, study_uid: str, priority: str) -> None:
        study = self.study_id(study_uid)
        self.client.put(f"/studies/{study}/metadata/{PRIORITY_METADATA}", content=priority).raise_for_status()
        if priority == "urgent":
            labelled = self.client.put(f"/studies/{study}/labels/{URGENT_LABEL}", content="")
            if labelled.status_code not in (200, 404):  # 404: an Orthanc before labels (1.12)
                labelled.raise_for_status()

    def priority(self, study_uid: str) -> str | None:
        got = self.client.get(f"/studies/{self.study_id(study_uid)}/metadata/{PRIORITY_METADATA}")
        return got.text if got.status_code == 200 else None
