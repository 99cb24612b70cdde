"""A local, faithful imitation of NHS England's Spine Directory Service (SDS) FHIR API.

``Sandbox`` serves it over real sockets from a background thread (the test double and demo
backend); ``serve`` runs it in the foreground; ``create_app`` gives the bare Starlette app;
``SandboxConfig`` sets data, faults, limits and security; ``SandboxProcess`` runs it in a process
of its own (for measurements and timing-sensitive tests). ``AppServer`` serves any ASGI app
the same way (handy for a test's stub services). ``SANDBOX_PATIENTS`` names the NHS numbers of
the PDS patients it serves, one per case (registered, superseded, invalidated, restricted...).
"""

from __future__ import annotations

from ._sandbox._app import SandboxConfig, create_app
from ._sandbox._pds import SANDBOX_PATIENTS
from ._sandbox._server import AppServer, Sandbox, SandboxProcess, serve

__all__ = [
    "SANDBOX_PATIENTS",
    "AppServer",
    "Sandbox",
    "SandboxConfig",
    "SandboxProcess",
    "create_app",
    "serve",
]
