"""Errors with meaning, mapped to the exit codes every chexops command shares.

0 done, 1 failed, 2 the user's input is wrong (usage, config, data), 3 a gate refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class ChexopsError(Exception):
    """Base class: an error whose message is written for the user, without traceback."""

    exit_code = 1


class UserInputError(ChexopsError):
    """The user's input (config, data, arguments) is wrong."""

    exit_code = 2


class ConfigError(UserInputError):
    """A configuration file or override is invalid."""


class DataError(UserInputError):
    """A dataset is malformed: a column, a value or an image."""


class GateRefused(ChexopsError):
    """A quality gate refused a model."""

    exit_code = 3


def validation_problems(err: ValidationError, top: str = "(top level)") -> str:
    """A pydantic ValidationError as `field.sub: message; other: message`; an empty location reads `top`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in item['loc']) or top}: {item['msg'].removeprefix('Value error, ')}"
        for item in err.errors()
    )
