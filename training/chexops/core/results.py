"""The base of the typed results that domain functions return and commands print.

A command prints `model_dump(mode="json")` of its result (`chexops.core.console.as_dict`) and writes
it to `$CHEXOPS_OUTPUTS`, so a result's field names, order and types are its JSON's.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_serializer


class Result(BaseModel):
    """A step's result: no unknown field, assignments checked, NaN and infinities kept as numbers.

    The fields named in `omit_unset` appear in the JSON only once given or assigned: keys that a
    result has on some paths only (a canary's replicas, a recorded load test), never as null."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, ser_json_inf_nan="constants")
    omit_unset: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler) -> dict[str, Any]:
        data = handler(self)
        if not self.omit_unset:
            return data
        return {k: v for k, v in data.items() if k not in self.omit_unset or k in self.model_fields_set}
