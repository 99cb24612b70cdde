"""The sandbox's own controls under ``/_sandbox/``: stats, faults, reset."""

from __future__ import annotations

import json
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._common import CONTROL_PREFIX, _bounded_body, _control_json
from ._config import MAX_CONTROL_BODY, MAX_STATS_PATHS, OTHER_PATHS, _updated_faults
from ._state import _State

PDS_PATIENT = "/personal-demographics/FHIR/R4/Patient/"


class Controls:
    """``GET /_sandbox/stats``, ``GET|POST /_sandbox/faults``, ``POST /_sandbox/reset``."""

    def __init__(self, state: _State) -> None:
        self.state = state

    async def stats(self, request: Request) -> Response:
        if request.method != "GET":
            return _control_json({"error": "use GET"}, 405)
        state = self.state
        return _control_json(
            {
                "requests": dict(state.requests),
                "statuses": dict(state.statuses),
                "gateway": state.gateway.stats(),
                "ldap_timeouts": state.ldap_timeouts,
            }
        )

    async def faults(self, request: Request) -> Response:
        if request.method == "GET":
            return _control_json(asdict(self.state.faults))
        if request.method != "POST":
            return _control_json({"error": "use GET or POST"}, 405)
        raw = await _bounded_body(request, MAX_CONTROL_BODY)
        if raw is None:
            return _control_json({"error": f"body larger than {MAX_CONTROL_BODY} bytes"}, 413)
        try:
            body = json.loads(raw or b"null")
        except (ValueError, RecursionError):
            return _control_json({"error": "body must be a JSON object"}, 400)
        try:
            updated = _updated_faults(self.state.faults, body)
        except ValueError as error:
            return _control_json({"error": str(error)}, 400)
        self.state.faults = updated
        return _control_json(asdict(updated))

    async def reset(self, request: Request) -> Response:
        if request.method != "POST":
            return _control_json({"error": "use POST"}, 405)
        self.state.reset()
        return _control_json({"reset": True, "faults": asdict(self.state.faults)})


class _StatsMiddleware:
    """Counts every request outside the control endpoints by path and response status."""

    def __init__(self, app: ASGIApp, state: _State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        state = self.state

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                path = scope["path"]
                if path.startswith(PDS_PATIENT):
                    path = PDS_PATIENT + "{id}"  # one counter, and no NHS number in the stats
                if path not in state.requests and len(state.requests) >= MAX_STATS_PATHS:
                    path = OTHER_PATHS  # bounded: one entry per unique path would grow for ever
                state.requests[path] += 1
                state.statuses[str(message["status"])] += 1
            await send(message)

        await self.app(scope, receive, counting_send)
