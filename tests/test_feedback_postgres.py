"""The feedback store on a real PostgreSQL server (production's backend), started by the test."""

from __future__ import annotations

import pytest

from chexops.serving.feedback_store import Conflict, FeedbackStore, NotFound
from mlflow_fixtures import postgres_cluster


def test_feedback_store_on_postgresql():
    with postgres_cluster() as url:
        store = FeedbackStore(url)
        findings = [{"label": "Edema", "probability": 0.8, "threshold": 0.5, "positive": True}]
        store.add_prediction("req-1", "clinic-a", "chexops-cxr", "3", findings, "urgent", {"format": "png", "width": 64, "height": 64})
        store.set_image("req-1", b"\x89PNG fake bytes")
        record, created = store.add_feedback("req-1", False, {"Edema": 0}, "no oedema")
        assert created and record.labels == {"Edema": 0}
        again, created_again = store.add_feedback("req-1", False, {"Edema": 0}, "no oedema")
        assert not created_again and again.created == record.created
        with pytest.raises(Conflict):
            store.add_feedback("req-1", True, None, None)
        with pytest.raises(NotFound):
            store.add_feedback("unknown", True, None, None)
        store.close()

        reopened = FeedbackStore(url)  # committed data survives a new connection (and the schema is idempotent)
        assert reopened.prediction("req-1")["has_image"] is True
        rows = list(reopened.export_rows())
        assert len(rows) == 1 and rows[0]["image_png"] == b"\x89PNG fake bytes" and rows[0]["labels"] == {"Edema": 0}
        assert reopened.agreement() == (0, 1)
        reopened.close()
