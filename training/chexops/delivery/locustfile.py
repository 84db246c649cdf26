"""The clinic's traffic for Locust (`chexops loadtest` runs `locust -f` on this file, headless).

A clinician uploads a radiograph for a prediction, now and then asks for a heatmap of a finding,
and sometimes says whether the prediction was right (one in ten "incorrect", deterministically, so
that the disagreement rate is the same for every model and a canary is judged on the model alone).

Read from the environment (set by `chexops loadtest`): CHEXOPS_LOADTEST_IMAGES (files, separated by
os.pathsep), CHEXOPS_LOADTEST_API_KEY, CHEXOPS_LOADTEST_WAIT ("min,max" seconds between tasks),
CHEXOPS_LOADTEST_VERSIONS (a file: the model versions that answered `/predict`, counted, written when
the test stops: the evidence says which model it measured).
Imported only inside the Locust process (gevent patches the standard library there).
"""

from __future__ import annotations

import collections
import itertools
import json
import os
from pathlib import Path

from locust import HttpUser, between, events, task

IMAGES = [Path(p) for p in os.environ.get("CHEXOPS_LOADTEST_IMAGES", "").split(os.pathsep) if p]
_WAIT = [float(x) for x in os.environ.get("CHEXOPS_LOADTEST_WAIT", "0.2,1.0").split(",")]
INCORRECT_EVERY = 10
VERSIONS: collections.Counter[str] = collections.Counter()  # model version -> /predict answers


@events.test_stop.add_listener
def _write_versions(**_kwargs) -> None:
    path = os.environ.get("CHEXOPS_LOADTEST_VERSIONS")
    if path:
        Path(path).write_text(json.dumps(dict(VERSIONS), sort_keys=True))


class Clinician(HttpUser):
    wait_time = between(_WAIT[0], _WAIT[-1])

    def on_start(self) -> None:
        if not IMAGES:
            raise RuntimeError("CHEXOPS_LOADTEST_IMAGES names no image")
        self.images = itertools.cycle([(p.name, p.read_bytes()) for p in IMAGES])
        key = os.environ.get("CHEXOPS_LOADTEST_API_KEY", "")
        self.client.headers.update({"Authorization": f"Bearer {key}"} if key else {})
        self.predicted: collections.deque[tuple[str, str]] = collections.deque(maxlen=50)  # (request_id, a finding)
        self.feedback_sent = 0

    @task(10)
    def predict(self) -> None:
        name, data = next(self.images)
        with self.client.post("/predict", files={"image": (name, data)}, name="/predict", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
                return
            body = r.json()
            if not body.get("findings") or "request_id" not in body:
                r.failure("answer without findings or request_id")
                return
            VERSIONS[str((body.get("model") or {}).get("version", "unknown"))] += 1
            top = max(body["findings"], key=lambda f: f["probability"])
            self.predicted.append((body["request_id"], top["label"]))
            r.success()

    @task(2)
    def explain(self) -> None:
        if not self.predicted:
            return
        label = self.predicted[-1][1]
        name, data = next(self.images)
        with self.client.post(
            "/explain", files={"image": (name, data)}, data={"label": label}, name="/explain", catch_response=True
        ) as r:
            if r.status_code != 200 or r.headers.get("content-type") != "image/png":
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            else:
                r.success()

    @task(3)
    def feedback(self) -> None:
        if not self.predicted:
            return
        request_id, _ = self.predicted.popleft()
        self.feedback_sent += 1
        correct = self.feedback_sent % INCORRECT_EVERY != 0
        with self.client.post(
            "/feedback", json={"request_id": request_id, "correct": correct}, name="/feedback", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            else:
                r.success()
