"""The clinic endpoint's HTTP routes, a Starlette app that bentos/service.py mounts at `/`.

    POST /predict   multipart field `image` (PNG, JPEG or DICOM; type from content)  → findings JSON
    POST /explain   the same upload + form field `label`                             → heatmap PNG
    POST /feedback  JSON {request_id, correct, labels?, note?}                       → stored record
    GET  /          the clinicians' page (bentos/static/index.html); /static/* its files
    GET  /model     the model served: name, version, labels, thresholds, triage rule (no key needed)

While the feedback store cannot be reached, /predict still answers (the prediction is not stored,
`feedback_available` is false and the page says feedback is unavailable) and /feedback answers 503
with Retry-After: the findings never wait on the store. Feedback is accepted only from the clinic
whose key made the prediction (403 otherwise).

Every error is JSON `{"error": "..."}`: 4xx for the caller's mistakes (with the status each
`chexops.imaging.decode.ImageInputError` carries), never a traceback; an unexpected failure is a 500 with a
generic message and the traceback only in the server log. The routes reach the model, the store and
the metrics through `app.state.backend` (the BentoML service instance), set when it starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from collections import OrderedDict
from typing import Any

import numpy as np
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from chexops.core.errors import validation_problems
from chexops.core.freight import loads_annotation
from chexops.core.triage import PRIORITY_RULE, priority
from chexops.feedback.errors import Conflict, NotFound, Unavailable, WrongClinic
from chexops.imaging.decode import ImageInputError, decode
from chexops.serving.admission import Admission
from chexops.serving.auth import AuthError
from chexops.serving.faults import FaultInjection
from chexops.serving.inference import LOCALISATION_NOTE, heatmap_png
from chexops.serving.limits import FEEDBACK_BODY_LIMIT, UploadGuard
from chexops.serving.metrics import HttpMetrics
from chexops.serving.schemas import FeedbackBody
from chexops.serving.settings import Settings
from chexops.serving.stored_image import kept_image

log = logging.getLogger("chexops.serving")

MULTIPART_SLACK = 64 * 1024  # form boundaries and headers around the file
PLACEHOLDER = """<!doctype html><html><head><meta charset="utf-8"><title>chexops</title></head>
<body><h1>chexops</h1><p>The clinic endpoint is running. POST a radiograph to <code>/predict</code>
(multipart field <code>image</code>, header <code>Authorization: Bearer KEY</code>).</p></body></html>"""


class RequestError(Exception):
    """A caller's mistake: status and message for the JSON answer."""

    def __init__(self, message: str, status: int = 400, reason: str = "request", **extra: Any):
        super().__init__(message)
        self.status, self.reason, self.extra = status, reason, extra


def _too_large(limit: int) -> str:
    if limit <= FEEDBACK_BODY_LIMIT:
        return f"the request body is over the size limit of {limit // 1024} KiB."
    return f"the upload is over the size limit of {(limit - MULTIPART_SLACK) / 2**20:.0f} MiB."


def _error(message: str, status: int, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _rejected(request: Request, reason: str) -> None:
    backend = getattr(request.app.state, "backend", None)
    if backend is not None:
        backend.metrics.rejected.labels(reason=reason).inc()


# --- exception handlers ----------------------------------------------------------------------------


async def on_image_error(request: Request, exc: ImageInputError) -> Response:
    _rejected(request, "image")
    log.info("%s refused (%d): %s", request.url.path, exc.status, exc)
    return _error(str(exc), exc.status)


async def on_request_error(request: Request, exc: RequestError) -> Response:
    _rejected(request, exc.reason)
    log.info("%s refused (%d): %s", request.url.path, exc.status, exc)
    return _error(str(exc), exc.status, **exc.extra)


async def on_auth_error(request: Request, exc: AuthError) -> Response:
    _rejected(request, "rate" if exc.status == 429 else "auth")
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {"WWW-Authenticate": "Bearer"}
    return _error(str(exc), exc.status, headers)


async def on_store_unavailable(request: Request, exc: Unavailable) -> Response:
    log.warning("%s: the feedback store is unavailable (%s)", request.url.path, exc)
    return _error(
        "feedback is unavailable right now (the feedback store cannot be reached); findings are not affected. "
        "Retry later.",
        503,
        {"Retry-After": "30"},
    )


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("%s failed: %s", request.url.path, type(exc).__name__, exc_info=exc)
    return _error("an unexpected error occurred in the service; it is logged and the service keeps serving.", 500)


# --- request parts -----------------------------------------------------------------------------------


def _backend(request: Request):
    backend = getattr(request.app.state, "backend", None)
    if backend is None:
        raise RequestError("the model is still loading; retry in a moment.", 503, reason="loading")
    return backend


def _clinic(request: Request, backend) -> str:
    return backend.auth.clinic(request.headers.get("authorization"), request.client.host if request.client else "")


async def _upload(request: Request) -> tuple[bytes, dict[str, Any]]:
    """The `image` file of a multipart form, and the form's other (text) fields."""
    content_type = request.headers.get("content-type", "")
    if request.headers.get("content-length") == "0":
        raise RequestError(
            "the request body is empty: send multipart/form-data with the radiograph in a field named 'image'.",
            reason="upload",
        )
    if not content_type.lower().startswith("multipart/form-data"):
        raise RequestError(
            "send the radiograph as multipart/form-data in a field named 'image' "
            f"(the request's content type is {content_type.split(';')[0] or 'missing'}).",
            415,
            reason="upload",
        )
    try:
        form = await request.form(max_files=2, max_fields=20)
    except Exception as exc:  # noqa: BLE001 - the multipart parser fails in several ways on a malformed body
        raise RequestError(f"the multipart form cannot be read ({type(exc).__name__}).", reason="upload") from None
    try:
        image = form.get("image")
        if image is None:
            raise RequestError(
                "the form has no field named 'image': send the radiograph (PNG, JPEG or DICOM) in it.", reason="upload"
            )
        if isinstance(image, str):
            raise RequestError("the 'image' field must be a file upload, not text.", reason="upload")
        data = await image.read()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
    finally:
        await form.close()
    return data, fields


def _read(data: bytes, backend) -> tuple[Any, np.ndarray, dict[str, float]]:
    """Decode and preprocess (one trip to a worker thread)."""
    t0 = time.perf_counter()
    decoded = decode(data, backend.limits)
    t1 = time.perf_counter()
    x = backend.model.preprocess(decoded.grey)
    return decoded, x, {"decode_ms": (t1 - t0) * 1000, "preprocess_ms": (time.perf_counter() - t1) * 1000}


async def _decode(request: Request, backend) -> tuple[bytes, Any, np.ndarray, dict[str, float], dict[str, Any]]:
    data, fields = await _upload(request)
    decoded, x, timings = await run_in_threadpool(_read, data, backend)
    return data, decoded, x, timings, fields


def _store_image(backend, request_id: str, data: bytes, decoded) -> None:
    try:
        backend.store.set_image(request_id, kept_image(data, decoded, backend.settings.stored_image_side))
    except Unavailable as exc:
        log.warning("the image of %s is not stored: the feedback store is unavailable (%s)", request_id, exc)
    except Exception:  # noqa: BLE001 - after the answer: log, never crash the worker
        log.exception("storing the image of %s failed", request_id)


async def _keep_image(backend, request_id: str, data: bytes, decoded, done: asyncio.Event) -> None:
    """After the answer: the image stored; a feedback for it waits on `done` (so that an acknowledged
    feedback always has its image, which its durable commit then makes durable too)."""
    try:
        await run_in_threadpool(_store_image, backend, request_id, data, decoded)
    finally:
        done.set()
        backend.pending_images.pop(request_id, None)


# --- routes ------------------------------------------------------------------------------------------


async def predict(request: Request) -> Response:
    started = time.perf_counter()
    backend = _backend(request)
    clinic = _clinic(request, backend)
    data, decoded, x, timings, _ = await _decode(request, backend)
    t0 = time.perf_counter()
    probs = await backend.classify(x)
    timings["inference_ms"] = (time.perf_counter() - t0) * 1000
    model = backend.model
    if getattr(backend, "drift", None) is not None:  # chexops.imaging.drift.DriftMonitor: input statistics, drift score
        backend.drift.observe(x, probs, decoded.info)
    findings = model.findings(probs)
    level = priority(findings)
    request_id = uuid.uuid4().hex
    try:
        await run_in_threadpool(
            backend.store.add_prediction, request_id, clinic, model.name, model.version, findings, level, decoded.info
        )
        stored = True
    except Unavailable as exc:  # the findings do not wait on the store: answered, not kept, feedback unavailable
        log.warning("prediction %s answered but not stored: the feedback store is unavailable (%s)", request_id, exc)
        stored = False
        _remember_unstored(request.app, request_id)
    timings["total_ms"] = (time.perf_counter() - started) * 1000
    timings = {k: round(v, 2) for k, v in timings.items()}
    backend.metrics.observe_prediction(findings, level, timings)
    positives = [f["label"] for f in findings if f["positive"]]
    log.info(
        "predict %s clinic=%s %s %sx%s priority=%s positive=%d total=%.0fms",
        request_id,
        clinic,
        decoded.kind,
        decoded.info.get("width"),
        decoded.info.get("height"),
        level,
        len(positives),
        timings["total_ms"],
    )
    body = {
        "request_id": request_id,
        "model": {"name": model.name, "version": model.version, "precision": model.precision},
        "findings": findings,
        "priority": level,
        "timings": timings,
        "feedback_available": stored,
    }
    if not stored:
        return JSONResponse(body)
    done = asyncio.Event()
    backend.pending_images[request_id] = done
    return JSONResponse(body, background=BackgroundTask(_keep_image, backend, request_id, data, decoded, done))


async def explain(request: Request) -> Response:
    backend = _backend(request)
    clinic = _clinic(request, backend)
    _, decoded, x, _, fields = await _decode(request, backend)
    model = backend.model
    label = (fields.get("label") or "").strip()
    if label not in model.labels:
        raise RequestError(
            f"{'unknown label ' + repr(label) if label else 'a form field label is required'}: "
            f"choose one of {', '.join(model.labels)}.",
            422,
            reason="label",
            labels=model.labels,
        )
    probs, cams = await backend.explain(x)
    k = model.labels.index(label)
    png = await run_in_threadpool(heatmap_png, decoded.grey, cams[k], label, float(probs[k]), model.thresholds[label])
    log.info("explain clinic=%s %s label=%s", clinic, decoded.kind, label)
    return Response(
        png,
        media_type="image/png",
        headers={
            "X-Chexops-Localisation": "approximate",
            "X-Chexops-Note": LOCALISATION_NOTE,
            "X-Chexops-Label": label,
            "X-Chexops-Probability": f"{float(probs[k]):.6f}",
            "Cache-Control": "no-store",
        },
    )


async def feedback(request: Request) -> Response:
    backend = _backend(request)
    clinic = _clinic(request, backend)
    raw = await request.body()
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep (found by schemathesis)
        raise RequestError(
            "the feedback must be a JSON object {request_id, correct, labels?, note?}.", 400, reason="feedback"
        ) from None
    try:
        body = FeedbackBody.model_validate(payload)
    except ValidationError as exc:
        problems = validation_problems(exc, top="body")
        raise RequestError(f"the feedback is not valid: {problems}.", 422, reason="feedback") from None
    prediction = await run_in_threadpool(backend.store.prediction, body.request_id)
    if prediction is None and body.request_id in request.app.state.unstored:
        # answered while the store could not keep it (down, or its disk full): the store's failure, not a 404
        raise Unavailable(f"prediction {body.request_id} was answered while the store could not keep it")
    if prediction is None:
        raise RequestError(f"no prediction has request_id {body.request_id!r}.", 404, reason="feedback")
    if prediction["clinic"] != clinic:
        raise _other_clinic(body.request_id)
    known = [f["label"] for f in prediction["findings"]]
    if body.labels is not None:
        unknown = sorted(set(body.labels) - set(known))
        bad = sorted(k for k, v in body.labels.items() if v not in (0, 1))
        if unknown or bad:
            raise RequestError(
                "labels must map the prediction's labels to 0 or 1 "
                f"({'unknown: ' + _few(unknown) if unknown else 'not 0/1: ' + _few(bad)}).",
                422,
                reason="feedback",
                labels=known,
            )
    contradiction = _contradiction(body, prediction["findings"])
    if contradiction:
        raise RequestError(contradiction, 422, reason="feedback")
    pending = backend.pending_images.get(body.request_id)
    if pending is not None:  # the image is durable before its feedback is acknowledged
        await pending.wait()
    try:
        record, created = await run_in_threadpool(
            backend.store.add_feedback, body.request_id, body.correct, body.labels, body.note, clinic, body.unusable
        )
    except WrongClinic:
        raise _other_clinic(body.request_id) from None
    except NotFound:
        raise RequestError(f"no prediction has request_id {body.request_id!r}.", 404, reason="feedback") from None
    except Conflict:
        raise RequestError(
            f"request {body.request_id} already has a different feedback; it is kept as given.", 409, reason="feedback"
        ) from None
    if created:
        backend.metrics.observe_feedback(
            body.correct, await run_in_threadpool(backend.store.agreement), prediction["model"]["version"]
        )
    log.info(
        "feedback %s clinic=%s correct=%s labels=%d %s",
        body.request_id,
        clinic,
        body.correct,
        len(body.labels or {}),
        "stored" if created else "repeated",
    )
    return JSONResponse(
        {"request_id": body.request_id, "stored": True, "created": created, "feedback": record.to_dict()}
    )


UNSTORED_KEPT = 10_000  # request ids answered without the store, remembered so that their feedback is a 503


def _remember_unstored(app, request_id: str) -> None:
    unstored = app.state.unstored
    unstored[request_id] = None
    while len(unstored) > UNSTORED_KEPT:
        unstored.popitem(last=False)


def _few(names: list[str], shown: int = 5) -> str:
    """At most `shown` names, each cut to 40 characters: an error never echoes a large input back."""
    listed = ", ".join(repr(n[:40]) for n in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _contradiction(body: FeedbackBody, findings: list[dict]) -> str | None:
    """Why a feedback contradicts itself or the prediction it judges (None: it means what it says).
    "Incorrect" needs a label that differs from the prediction, labels that leave some finding unsaid (the
    error is there), or `unusable`: what it may not be is the prediction's own answer, every label agreeing
    (a form pre-ticked with the model's positives, sent unchanged), or nothing at all. "Correct" may carry
    labels (the triage was right; its findings as read), but cannot call the image unusable."""
    if body.correct and body.unusable:
        return "the feedback says the prediction is correct and the image unusable: send one or the other."
    if body.correct:
        return None
    if body.unusable:
        return None
    predicted = {f["label"]: int(bool(f["positive"])) for f in findings}
    labels = body.labels or {}
    differing = [k for k, v in labels.items() if predicted.get(k) != v]
    if not labels or (not differing and set(labels) >= set(predicted)):
        return (
            "the feedback says the prediction is incorrect, but its labels are the prediction's own: mark at least "
            "one finding as you read it (1 present, 0 absent) that differs from the prediction, or send "
            "unusable: true when the image cannot be read."
        )
    return None


def _other_clinic(request_id: str) -> RequestError:
    return RequestError(
        f"request {request_id} was made with another clinic's API key; only that clinic can give its feedback.",
        403,
        reason="clinic",
    )


async def index(request: Request) -> Response:
    page = request.app.state.settings.static_dir / "index.html"
    if page.is_file():
        return FileResponse(page, media_type="text/html")
    return HTMLResponse(PLACEHOLDER)


async def model_info(request: Request) -> Response:
    backend = _backend(request)
    model = backend.model
    return JSONResponse(
        {
            **model.describe(),
            "thresholds": model.thresholds,
            # What pipeline run put this model here: commit, images, data and registry versions ({} outside one).
            "freight": loads_annotation(backend.settings.freight),
            "priority_rule": PRIORITY_RULE,
            "localisation": LOCALISATION_NOTE,
            "runtime": {
                "threads": backend.settings.threads,
                "batching": backend.settings.batching,
                "providers": backend.model.session.get_providers(),
                "max_upload_mb": round(backend.settings.max_upload_bytes / 2**20, 1),
                "torch_imported": "torch" in sys.modules,
                "feedback_store": await run_in_threadpool(_store_facts, backend.store),
            },
        }
    )


def _store_facts(store) -> dict[str, Any]:
    """What /model says of the feedback store: reachable or not, and the durability its connections run with."""
    try:
        return {"kind": store.kind, "available": True, **store.durability()}
    except Unavailable:
        return {"kind": store.kind, "available": False}


def create_app(settings: Settings) -> Starlette:
    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/explain", explain, methods=["POST"]),
            Route("/feedback", feedback, methods=["POST"]),
            Route("/", index, methods=["GET"]),
            Route("/model", model_info, methods=["GET"]),
            Mount("/static", StaticFiles(directory=settings.static_dir, check_dir=False), name="static"),
        ],
        exception_handlers={
            ImageInputError: on_image_error,
            RequestError: on_request_error,
            AuthError: on_auth_error,
            Unavailable: on_store_unavailable,
            Exception: on_unexpected,
        },
    )
    app.state.settings = settings
    app.state.backend = None
    app.state.unstored = OrderedDict()  # request_id → None, the predictions answered but not stored
    app.add_middleware(
        Admission,
        limits=settings.admission_limits(),  # bounded work in flight (503 + Retry-After)
        on_refuse=lambda path: app.state.backend and app.state.backend.metrics.rejected.labels(reason="overload").inc(),
    )
    app.add_middleware(  # outside admission: a body is read whole before it may take an inference slot
        UploadGuard,
        default=settings.max_upload_bytes + MULTIPART_SLACK,
        limits={"/feedback": FEEDBACK_BODY_LIMIT},
        timeout_s=settings.upload_timeout_s,
        min_rate=settings.min_upload_kib_per_s * 1024,
        per_client=settings.max_uploads_per_client,
        too_large=_too_large,
        on_refuse=lambda reason: app.state.backend and app.state.backend.metrics.rejected.labels(reason=reason).inc(),
    )
    if settings.faults is not None:  # tests of the canary analysis only (refused in production)
        app.add_middleware(FaultInjection, spec=settings.faults, owner=app)
    app.add_middleware(HttpMetrics, owner=app)  # outermost: sees injected faults as clients do
    return app


class InternalOnly:
    """ASGI middleware for the BentoML app: the batchable `/infer` API exists for the service's own
    adaptive batching (its routes call it in-process); from outside it answers 403."""

    HEADER = "x-chexops-internal"

    def __init__(self, app, paths: tuple[str, ...], token: str):
        self.app, self.paths, self.token = app, paths, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path") in self.paths:
            given = dict(scope.get("headers") or []).get(self.HEADER.encode(), b"")
            import hmac

            if not hmac.compare_digest(given, self.token):
                response = JSONResponse(
                    {"error": "this endpoint is internal to the service; use POST /predict."}, status_code=403
                )
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)
