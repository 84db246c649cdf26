"""The service's own Prometheus series, next to BentoML's on /metrics.

prometheus_client is imported when `ServiceMetrics` is built (in the service's __init__), never at
module import: BentoML sets PROMETHEUS_MULTIPROC_DIR in its workers after importing the service
module, and prometheus_client picks its storage when first imported.

- chexops_predictions_total{priority}
- chexops_findings_positive_total{finding}: positive findings, by label
- chexops_finding_probability{finding}: histogram of each label's probability
- chexops_feedback_total{verdict="correct"|"incorrect"}
- chexops_feedback_agreement_ratio: correct / all feedback in the store (since it was created)
- chexops_model_info{name,version,precision,run_id} 1
- chexops_stage_seconds{stage="decode"|"preprocess"|"inference"}
- chexops_rejected_requests_total{reason}: 4xx answers by cause (auth, rate, upload, ...)
"""

from __future__ import annotations

BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))


class ServiceMetrics:
    def __init__(self, model_name: str, version: str, precision: str, run_id: str):
        import prometheus_client as prom

        self.predictions = prom.Counter("chexops_predictions", "Predictions answered, by triage priority", ["priority"])
        self.positive = prom.Counter("chexops_findings_positive", "Positive findings predicted, by label", ["finding"])
        self.probability = prom.Histogram("chexops_finding_probability", "Predicted probability, by label", ["finding"],
                                          buckets=BUCKETS)
        self.feedback = prom.Counter("chexops_feedback", "Feedback received, by verdict", ["verdict"])
        self.agreement = prom.Gauge("chexops_feedback_agreement_ratio", "Share of feedback saying the prediction was correct",
                                    multiprocess_mode="mostrecent")
        self.info = prom.Gauge("chexops_model_info", "The model this service runs", ["name", "version", "precision", "run_id"],
                               multiprocess_mode="max")
        self.stage = prom.Histogram("chexops_stage_seconds", "Time per request stage", ["stage"],
                                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.rejected = prom.Counter("chexops_rejected_requests", "Requests answered 4xx, by cause", ["reason"])
        self.info.labels(name=model_name, version=version, precision=precision, run_id=run_id).set(1)

    def observe_prediction(self, findings: list[dict], priority: str, timings_ms: dict[str, float]) -> None:
        self.predictions.labels(priority=priority).inc()
        for f in findings:
            self.probability.labels(finding=f["label"]).observe(f["probability"])
            if f["positive"]:
                self.positive.labels(finding=f["label"]).inc()
        for stage in ("decode", "preprocess", "inference"):
            self.stage.labels(stage=stage).observe(timings_ms[f"{stage}_ms"] / 1000)

    def observe_feedback(self, correct: bool, counts: tuple[int, int]) -> None:
        self.feedback.labels(verdict="correct" if correct else "incorrect").inc()
        self.set_agreement(counts)

    def set_agreement(self, counts: tuple[int, int]) -> None:
        total = sum(counts)
        if total:
            self.agreement.set(counts[0] / total)
