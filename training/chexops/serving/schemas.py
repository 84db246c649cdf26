"""The clinic API's request bodies (the OpenAPI document is generated from them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class FeedbackBody(BaseModel):
    """A clinician's verdict. `correct: false` needs `labels` that are not the prediction's own answer (one
    finding that differs, 1 present, 0 absent, or some left unsaid), or `unusable: true`."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    correct: StrictBool
    labels: dict[str, int] | None = None
    note: str | None = Field(None, max_length=2000)
    unusable: StrictBool = Field(
        False,
        description="the image cannot be read (wrong view, exposure, not a chest radiograph): with correct false",
    )
