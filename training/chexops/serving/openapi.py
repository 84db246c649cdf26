"""The one OpenAPI 3.1 document of the clinic endpoint: the clinic API, the model, the page, health and
metrics, and no internal route. Served where BentoML users look, `GET /docs.json` (also `/openapi.json`), and
rendered at `GET /docs` by the Swagger UI that BentoML ships (`/static_content`, no CDN). `/schema.json` stays
BentoML's: it is not OpenAPI but the route list BentoML's own clients (`bentoml.SyncHTTPClient`) read.

BentoML's own `/docs.json` describes only its typed APIs (here the internal `/infer`) and its health routes;
`OpenApiRoutes`, a middleware on the BentoML app, answers those paths first. Every documented 4xx/5xx
answer is the JSON `Error` object `{"error": "..."}`; tests/test_api_properties.py drives the running
service from this document with schemathesis and checks that the service keeps to it.
"""

from __future__ import annotations

from typing import Any

from chexops import __version__

ERROR = {"$ref": "#/components/schemas/Error"}
TEXT = {"type": "string"}
PATHS = ("/docs.json", "/openapi.json")
DOCS_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>chexops clinic endpoint: API</title>
<link rel="stylesheet" href="/static_content/swagger-ui.css"></head><body><div id="swagger-ui"></div>
<script src="/static_content/swagger-ui-bundle.js"></script><script>
window.ui = SwaggerUIBundle({url: "/docs.json", dom_id: "#swagger-ui"});</script>
<noscript>The API document is at <a href="/docs.json">/docs.json</a>.</noscript></body></html>"""


def _health(name: str, summary: str, *more: int) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "ok", "content": {"text/plain": {"schema": TEXT}}}}
    for code in more:
        responses[str(code)] = {"description": "not ready", "content": {"text/plain": {"schema": TEXT}}}
    return {"get": {"operationId": name, "summary": summary, "responses": responses}}


def _errors(*codes: int) -> dict[str, Any]:
    why = {
        400: "malformed request or damaged image",
        401: "no or bad API key",
        404: "unknown request_id",
        408: "the body arrived too slowly (connection closed)",
        409: "a different feedback is already stored",
        413: "upload or pixel count over the limit",
        415: "not multipart, or not a PNG/JPEG/DICOM",
        422: "valid format, unusable content",
        429: "over the key's rate, or too many uploads at once from one client (Retry-After)",
        431: "request headers over the limit (connection closed)",
        500: "a bug (logged; generic message)",
        503: "at capacity or still loading (Retry-After)",
    }
    return {str(c): {"description": why[c], "content": {"application/json": {"schema": ERROR}}} for c in codes}


def _upload(extra: dict[str, Any] | None = None, required: tuple[str, ...] = ("image",)) -> dict[str, Any]:
    properties = {
        "image": {
            "type": "string",
            "format": "binary",
            "description": "the radiograph: PNG, JPEG or DICOM Part 10 (type from content)",
        },
        **(extra or {}),
    }
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": list(required), "properties": properties}}
        },
    }


def document(feedback_schema: dict[str, Any]) -> dict[str, Any]:
    """The document; `feedback_schema` is the JSON Schema of the /feedback body (the app's pydantic model)."""
    finding = {
        "type": "object",
        "required": ["label", "probability", "threshold", "positive"],
        "properties": {
            "label": {"type": "string"},
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
            "threshold": {"type": "number"},
            "positive": {"type": "boolean"},
        },
    }
    prediction = {
        "type": "object",
        "required": ["request_id", "model", "findings", "priority", "timings"],
        "properties": {
            "request_id": {"type": "string"},
            "model": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "precision": {"type": "string"},
                },
            },
            "findings": {"type": "array", "items": {"$ref": "#/components/schemas/Finding"}},
            "priority": {"type": "string", "enum": ["urgent", "review", "routine"]},
            "timings": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    }
    stored = {
        "type": "object",
        "required": ["request_id", "stored", "created", "feedback"],
        "properties": {
            "request_id": {"type": "string"},
            "stored": {"type": "boolean"},
            "created": {"type": "boolean"},
            "feedback": {"type": "object"},
        },
    }
    secured = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chexops clinic endpoint",
            "version": __version__,
            "description": "Chest radiograph findings, triage priority, heatmaps and clinicians' feedback.",
        },
        "paths": {
            "/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": "Findings and triage priority for one radiograph",
                    "security": secured,
                    "requestBody": _upload(),
                    "responses": {
                        "200": {
                            "description": "the findings",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Prediction"}}},
                        },
                        **_errors(400, 401, 408, 413, 415, 422, 429, 500, 503),
                    },
                }
            },
            "/explain": {
                "post": {
                    "operationId": "explain",
                    "summary": "The class-activation map of one label over the radiograph",
                    "security": secured,
                    "requestBody": _upload(
                        {"label": {"type": "string", "description": "one of the model's labels (GET /model)"}},
                        required=("image", "label"),
                    ),
                    "responses": {
                        "200": {
                            "description": "PNG heatmap (approximate localisation)",
                            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        **_errors(400, 401, 408, 413, 415, 422, 429, 500, 503),
                    },
                }
            },
            "/feedback": {
                "post": {
                    "operationId": "feedback",
                    "summary": "A clinician's verdict on a prediction (idempotent per request_id)",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Feedback"}}},
                    },
                    "responses": {
                        "200": {
                            "description": "the stored feedback",
                            "content": {"application/json": {"schema": stored}},
                        },
                        **_errors(400, 401, 404, 408, 409, 413, 415, 422, 429, 500, 503),
                    },
                }
            },
            "/model": {
                "get": {
                    "operationId": "model",
                    "summary": "The model served: name, version, labels, thresholds, triage rule",
                    "responses": {
                        "200": {
                            "description": "the model",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["name", "version", "labels", "thresholds"],
                                    }
                                }
                            },
                        },
                        **_errors(500, 503),
                    },
                }
            },
            "/": {
                "get": {
                    "operationId": "page",
                    "summary": "The clinicians' web page",
                    "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": TEXT}}}},
                }
            },
            "/livez": _health("livez", "The process is alive"),
            "/readyz": _health("readyz", "The model is loaded and the service answers (503 while loading)", 503),
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus series: the service's chexops_* and BentoML's own",
                    "responses": {
                        "200": {"description": "text exposition format", "content": {"text/plain": {"schema": TEXT}}}
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a clinic's API key (CHEXOPS_API_KEYS)"}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Finding": finding,
                "Prediction": prediction,
                "Feedback": feedback_schema,
            },
        },
    }


def feedback_document() -> dict[str, Any]:
    from chexops.serving.schemas import FeedbackBody

    return document(FeedbackBody.model_json_schema())


class OpenApiRoutes:
    """ASGI middleware for the BentoML app: GET /docs.json and /openapi.json answer this
    document, GET /docs its Swagger UI page (no key needed: they describe, they reveal nothing)."""

    def __init__(self, app):
        self.app = app
        self.body = None

    async def __call__(self, scope, receive, send):
        path = scope.get("path")
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") and (path in PATHS or path == "/docs"):
            from starlette.responses import HTMLResponse, JSONResponse

            if path == "/docs":
                return await HTMLResponse(DOCS_PAGE)(scope, receive, send)
            if self.body is None:
                self.body = feedback_document()
            return await JSONResponse(self.body)(scope, receive, send)
        return await self.app(scope, receive, send)
