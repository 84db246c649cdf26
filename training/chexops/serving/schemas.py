"""The clinic API's request bodies (the OpenAPI document is generated from them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    correct: StrictBool
    labels: dict[str, int] | None = None
    note: str | None = Field(None, max_length=2000)
