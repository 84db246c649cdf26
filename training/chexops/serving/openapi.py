"""The OpenAPI 3.1 document of the clinic endpoint's own routes, served at `GET /openapi.json`.

BentoML's `/docs.json` describes only its typed APIs and FastAPI apps; the Starlette routes of
`chexops.serving.app` are described here. Every documented 4xx/5xx answer is the JSON `Error`
object `{"error": "..."}`; tests/test_api_properties.py drives the running service from this
document with schemathesis and checks that the service keeps to it.
"""

from __future__ import annotations

from typing import Any

from chexops import __version__

ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    why = {
        400: "malformed request or damaged image",
        401: "no or bad API key",
        404: "unknown request_id",
        409: "a different feedback is already stored",
        413: "upload or pixel count over the limit",
        415: "not multipart, or not a PNG/JPEG/DICOM",
        422: "valid format, unusable content",
        429: "over the key's rate (Retry-After)",
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
                        **_errors(400, 401, 413, 415, 422, 429, 500, 503),
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
                        **_errors(400, 401, 413, 415, 422, 429, 500, 503),
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
                        **_errors(400, 401, 404, 409, 413, 415, 422, 429, 500, 503),
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


async def serve(request):  # noqa: ARG001 - Starlette's endpoint signature
    """GET /openapi.json (no key needed: it describes, it reveals nothing)."""
    from starlette.responses import JSONResponse

    from chexops.serving.schemas import FeedbackBody

    return JSONResponse(document(FeedbackBody.model_json_schema()))
