"""sds-plugins-mesh: MESH mailbox resolution and ready-to-send MESH messages.

``router.route("mesh", org="X26", interaction="TEST_WORKFLOW")`` looks up the recipient mailbox
(``/messageexchange/endpointlookup``, cached like SDS lookups) and returns an envelope whose
request is the outbox POST with its ``mex-*`` headers and a fresh single-use NHSMESH token.
Public names are re-exported here; the work lives in private modules. The embedded mesh-sandbox
is in :mod:`sds_plugins_mesh.sandbox` (an optional extra).
"""

from ._adapter import DEFAULT_CONTENT_TYPE, ENVELOPE_TTL, MAX_REQUEST_BYTES, MeshAdapter
from ._auth import MeshAuth, nhsmesh_authorization
from ._chunks import DEFAULT_CHUNK_SIZE, ChunkedSend, chunk_requests, send_chunked
from ._config import MESH_ENVIRONMENTS, MeshCredentials, MeshSettings, MeshTls, resolve_mesh_url
from ._demo import demo
from ._errors import MeshRejectedError, MeshResendRefusedError, parse_send_response
from ._lookup import MailboxQuery, MeshLookupSource, MeshMailbox, parse_lookup_response
from ._recovery import (
    FirstPostOutcome,
    FirstPostRecovery,
    MeshTracking,
    recover_first_post,
    track_message,
)
from .plugin import MeshPlugin

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CONTENT_TYPE",
    "ENVELOPE_TTL",
    "MAX_REQUEST_BYTES",
    "MESH_ENVIRONMENTS",
    "ChunkedSend",
    "FirstPostOutcome",
    "FirstPostRecovery",
    "MailboxQuery",
    "MeshAdapter",
    "MeshAuth",
    "MeshCredentials",
    "MeshLookupSource",
    "MeshMailbox",
    "MeshPlugin",
    "MeshRejectedError",
    "MeshResendRefusedError",
    "MeshSettings",
    "MeshTls",
    "MeshTracking",
    "chunk_requests",
    "demo",
    "nhsmesh_authorization",
    "parse_lookup_response",
    "parse_send_response",
    "recover_first_post",
    "resolve_mesh_url",
    "send_chunked",
    "track_message",
]
