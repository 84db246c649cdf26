"""The feedback store's refusals, without SQLAlchemy: the service's routes import these, the store itself
(`chexops.feedback.store`) only where it is opened."""

from __future__ import annotations

from chexops.core.errors import ChexopsError


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


class WrongClinic(Exception):
    """The feedback comes from another clinic than the prediction's."""


class Unavailable(ChexopsError):
    """The store cannot be reached (down, restarting, refusing connections)."""
