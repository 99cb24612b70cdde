"""The service's OpenAPI 3.1 document (``GET /openapi.json``), written out rather than derived:
it is the contract integration engines code against, so changes to it should be deliberate."""

from __future__ import annotations

import functools
from typing import Any

from ._problems import PROBLEM_TYPES

__all__ = ["openapi_document"]

_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problem_response(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": _PROBLEM}},
    }
    if retry_after:
        response["headers"] = {
            "Retry-After": {
                "description": "Whole seconds to wait before trying again.",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return response


def _status_text(slug: str) -> str:
    return PROBLEM_TYPES[slug][1]


@functools.cache
def _document() -> dict[str, Any]:
    from .._plugins import _own_version

    unauthorised = _problem_response(_status_text("unauthorized"))
    json_object = {"type": "object", "additionalProperties": True}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sds-plugins routing service",
            "version": _own_version(),
            "description": (
                "Resolves where and how to send an NHS England message: SDS directory lookups "
                "turned into a ready-to-send routing envelope. Errors are RFC 9457 problem "
                "documents. See docs/operations.md."
            ),
        },
        "paths": {
            "/route/{adapter}": {
                "post": {
                    "operationId": "route",
                    "summary": "Resolve a routing envelope",
                    "security": [{"serviceToken": []}, {}],
                    "parameters": [
                        {
                            "name": "adapter",
                            "in": "path",
                            "required": True,
                            "description": "An adapter name (GET /adapters lists them).",
                            "schema": {"type": "string", "minLength": 1},
                        },
                        {
                            "name": "traceparent",
                            "in": "header",
                            "required": False,
                            "description": "W3C trace context: the parent of the route's span.",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "X-Correlation-ID",
                            "in": "header",
                            "required": False,
                            "description": "Used when the body has no correlation_id.",
                            "schema": {"type": "string", "format": "uuid"},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RouteRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The routing envelope (credentials masked unless "
                            "the service runs with --with-secrets).",
                            "content": {"application/json": {"schema": json_object}},
                        },
                        "400": _problem_response(_status_text("invalid-input")),
                        "401": unauthorised,
                        "403": _problem_response(
                            f"{_status_text('vetoed')}; or {_status_text('patient-restricted')}"
                        ),
                        "404": _problem_response(
                            f"{_status_text('not-found')}; or "
                            f"{_status_text('patient-not-found')} (with a reason); or "
                            f"{_status_text('unknown-adapter')}"
                        ),
                        "408": _problem_response(_status_text("request-timeout")),
                        "409": _problem_response(_status_text("ambiguous")),
                        "410": _problem_response(_status_text("patient-invalidated")),
                        "413": _problem_response(_status_text("too-large")),
                        "415": _problem_response(
                            f"{_status_text('unsupported-media-type')}: send "
                            "Content-Type: application/json"
                        ),
                        "431": _problem_response(_status_text("headers-too-large")),
                        "500": _problem_response(_status_text("internal")),
                        "502": _problem_response(_status_text("bad-directory-answer")),
                        "503": _problem_response(
                            _status_text("directory-unavailable"), retry_after=True
                        ),
                    },
                }
            },
            "/adapters": {
                "get": {
                    "operationId": "adapters",
                    "summary": "The installed adapters and their options",
                    "security": [{"serviceToken": []}, {}],
                    "responses": {
                        "200": {
                            "description": "Adapters by name.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Adapters"}
                                }
                            },
                        },
                        "401": unauthorised,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the process answers",
                    "responses": {
                        "200": {
                            "description": "Alive.",
                            "content": {"application/json": {"schema": json_object}},
                        }
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: the router started; directory, breakers and Redis "
                    "reported",
                    "responses": {
                        "200": {
                            "description": "Ready: status ok, or degraded (the directory "
                            "failing, a breaker open, Redis unreachable: the reasons say which) "
                            "while what the cache holds is still served.",
                            "content": {"application/json": {"schema": json_object}},
                        },
                        "503": {
                            "description": "Not ready: the router has not started, or the "
                            "service is stopping.",
                            "content": {"application/json": {"schema": json_object}},
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (text exposition format)",
                    "responses": {
                        "200": {
                            "description": "Metrics.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "404": _problem_response(_status_text("not-enabled")),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1.",
                            "content": {"application/json": {"schema": json_object}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "serviceToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token of --token-file, when the service has one.",
                }
            },
            "schemas": {
                "RouteRequest": {
                    "type": "object",
                    "required": ["interaction"],
                    "oneOf": [{"required": ["org"]}, {"required": ["patient"]}],
                    "additionalProperties": False,
                    "properties": {
                        "org": {"type": "string", "description": "ODS code of the target."},
                        "patient": {
                            "type": "string",
                            "description": "NHS number of a patient: the route goes to the "
                            "practice PDS names (instead of org).",
                        },
                        "requesting_org": {
                            "type": ["string", "null"],
                            "description": "ODS code of the organisation a patient route is "
                            "made for (PDS's NHSD-End-User-Organisation-ODS).",
                        },
                        "interaction": {
                            "type": "string",
                            "description": "Interaction id (or MESH workflow id).",
                        },
                        "options": {
                            "type": "object",
                            "additionalProperties": True,
                            "description": "Adapter options (GET /adapters lists them).",
                        },
                        "encounter": {
                            "type": ["string", "null"],
                            "description": "Cache scope, for adapters that need one.",
                        },
                        "correlation_id": {
                            "type": ["string", "null"],
                            "maxLength": 200,
                            "description": "The caller's id, echoed as given; SDS is sent it "
                            "as X-Correlation-ID when it is a UUID, else a UUID derived from it.",
                        },
                    },
                },
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail", "error", "retryable"],
                    "properties": {
                        "type": {"type": "string", "format": "uri"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "error": {"type": "string", "description": "The error class."},
                        "correlation_id": {"type": ["string", "null"]},
                        "retryable": {"type": "boolean"},
                        "retry_after_s": {"type": ["number", "null"]},
                        "field": {"type": "string"},
                        "reason": {"type": "string"},
                        "candidates": {"type": "array", "items": json_object},
                    },
                },
                "Adapters": {
                    "type": "object",
                    "required": ["adapters"],
                    "properties": {
                        "adapters": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "description", "options"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "description": {"type": "string"},
                                    "accepts_any_options": {"type": "boolean"},
                                    "options": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["name", "type", "required"],
                                            "properties": {
                                                "name": {"type": "string"},
                                                "type": {"type": "string"},
                                                "required": {"type": "boolean"},
                                                "description": {"type": "string"},
                                                "default": {},
                                            },
                                        },
                                    },
                                },
                            },
                        }
                    },
                },
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of ``sds-plugins serve``."""
    return _document()
