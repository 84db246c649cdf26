"""chexops clinic endpoint: the exported chest X-ray classifier in ONNX Runtime, as a BentoML service.

    bentoml serve bentos/service.py:Chexops      (or: chexops serve)

Routes (chexops.serving.app, mounted at /): POST /predict, POST /explain, POST /feedback, GET /,
GET /model; the one OpenAPI document at /docs.json (and /openapi.json, /docs; chexops.serving.openapi);
BentoML's own: /livez, /readyz, /metrics, /schema.json (its clients' route list).
Configuration: CHEXOPS_* environment variables (chexops.serving.settings). The model: CHEXOPS_MODEL, a
registry reference or an exact Bento tag, resolved by chexops.export.bento.serving_tag (`chexops serve`
resolves it first and passes the tag). No torch here: ONNX Runtime, numpy, Pillow, pydicom.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from typing import Annotated

import anyio
import bentoml
import numpy as np
from bentoml.validators import DType

from chexops.core.processes import watch_parent
from chexops.export.bento import serving_tag
from chexops.export.files import FILES
from chexops.feedback.errors import Unavailable
from chexops.imaging.drift import DriftMonitor
from chexops.serving import providers
from chexops.serving.app import InternalOnly, create_app
from chexops.serving.bentoml_fixes import cancel_traffic_timers
from chexops.serving.inference import OnnxModel
from chexops.serving.limits import limit_header_size
from chexops.serving.metrics import ServiceMetrics, own_metrics_dir
from chexops.serving.openapi import OpenApiRoutes
from chexops.serving.settings import Settings

cancel_traffic_timers()  # BentoML's request timeout kept every request's context alive for 60 s
SETTINGS = Settings.from_env()
limit_header_size(SETTINGS.max_header_kb * 1024)  # uvicorn's httptools protocol reads heads of any size
os.environ["FORWARDED_ALLOW_IPS"] = SETTINGS.trusted_proxies  # uvicorn's default trusts 127.0.0.1; empty: no one
own_metrics_dir()  # this server's series only, never another's on the same CHEXOPS_HOME
PROVIDERS = providers.available(SETTINGS.execution_providers())  # those this ONNX Runtime build has
INTERNAL_TOKEN = secrets.token_urlsafe(24)
app = create_app(SETTINGS)
log = logging.getLogger("chexops.serving")


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="chexops", workers=1, traffic={"timeout": 60})
class Chexops:
    bento_model = bentoml.models.BentoModel(serving_tag(SETTINGS.model_tag).tag)

    def __init__(self) -> None:
        logging.getLogger("chexops").setLevel(logging.INFO)  # through BentoML's log handlers
        watch_parent()  # this worker stops when `bentoml serve` (its arbiter) is gone, even after a SIGKILL
        self.settings = SETTINGS
        self.model = OnnxModel.load(
            self.bento_model.path_of(FILES[SETTINGS.precision]), threads=SETTINGS.threads, providers=PROVIDERS
        )
        self.limits = SETTINGS.image_limits()
        self.auth = SETTINGS.authenticator()
        self.store = SETTINGS.open_feedback_store()  # SQLAlchemy: in the worker only, not in the arbiter
        self.metrics = ServiceMetrics(
            self.model.name,
            self.model.version,
            self.model.precision,
            self.model.run_id,
            environment=SETTINGS.environment,
            track=SETTINGS.track,
        )
        self.drift = DriftMonitor.for_model(self.model, SETTINGS.drift_window, SETTINGS.drift_min_images)
        try:
            self.metrics.set_agreement(self.store.agreement())
        except Unavailable:
            pass  # logged by the store; predictions are served without it
        self.pending_images: dict[str, asyncio.Event] = {}  # request_id → set once its image is stored
        self.session_lock = anyio.CapacityLimiter(1)  # one session run at a time outside the batcher
        log.info(
            "Serving %s (%s) from %s; feedback store %s (%s), images in %s; %d API key(s); batching %s",
            self.bento_model.tag,
            SETTINGS.precision,
            self.bento_model.path,
            self.store.location,
            self.store.kind,
            self.store.images.location,
            len(self.auth.keys),
            "on" if SETTINGS.batching else "off",
        )
        app.state.backend = self

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
    def infer(self, images: Annotated[np.ndarray, DType("float32")]) -> np.ndarray:
        """B×C×H×W preprocessed images → B×K probabilities (internal: /predict batches through it)."""
        self.metrics.batch.labels().observe(len(images))
        return self.model.probabilities(images)

    async def classify(self, x: np.ndarray) -> np.ndarray:
        """K probabilities for one preprocessed image, through adaptive batching unless it is off."""
        if not SETTINGS.batching:
            self.metrics.batch.labels().observe(1)
            return (await anyio.to_thread.run_sync(self.model.probabilities, x[None], limiter=self.session_lock))[0]
        self.to_async.default_headers[InternalOnly.HEADER] = INTERNAL_TOKEN  # the in-process client's sessions send it
        try:
            return np.asarray(await self.to_async.infer(images=x[None]), dtype=np.float32)[0]
        except Exception as exc:  # noqa: BLE001 - the batcher refused (latency budget) or its local hop broke
            log.warning("adaptive batching failed (%s: %s); this request runs alone", type(exc).__name__, exc)
            self.metrics.batch.labels().observe(1)
            return (await anyio.to_thread.run_sync(self.model.probabilities, x[None], limiter=self.session_lock))[0]

    async def explain(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await anyio.to_thread.run_sync(self.model.probabilities_and_cams, x, limiter=self.session_lock)

    def __is_ready__(self) -> bool:
        return app.state.backend is self


Chexops.add_asgi_middleware(InternalOnly, paths=("/infer",), token=INTERNAL_TOKEN)
Chexops.add_asgi_middleware(OpenApiRoutes)  # one document, at /docs.json (BentoML's lists only /infer)
