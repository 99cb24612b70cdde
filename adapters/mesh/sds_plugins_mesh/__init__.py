"""sds-plugins-mesh: MESH mailbox resolution and ready-to-send MESH messages.

``router.route("mesh", org="X26", interaction="TEST_WORKFLOW")`` looks up the recipient mailbox
(``/messageexchange/endpointlookup``, cached like SDS lookups) and returns an envelope whose
request is the outbox POST with its ``mex-*`` headers and a fresh single-use NHSMESH token.
``routing="demographic"`` addresses the patient instead (MESH's automated routing to the
registered GP, as GP Connect Messaging's Send Document requires), ``routing="mailbox"`` a
mailbox the sender knows (an acknowledgement's); :func:`validate_mailbox` is MESH's daily
handshake. Public names are re-exported here; the work lives in private modules. The embedded
mesh-sandbox is in :mod:`sds_plugins_mesh.sandbox` (an optional extra).
"""

from ._adapter import (
    DEFAULT_CONTENT_TYPE,
    ENVELOPE_TTL,
    MAX_REQUEST_BYTES,
    PERSONAL_HEADERS,
    MeshAdapter,
    MeshOptions,
)
from ._auth import MeshAuth, nhsmesh_authorization
from ._chunks import DEFAULT_CHUNK_SIZE, ChunkedSend, chunk_requests, send_chunked
from ._config import MESH_ENVIRONMENTS, MeshCredentials, MeshSettings, MeshTls, resolve_mesh_url
from ._demo import demo
from ._demographic import DEMOGRAPHIC_PREFIX, demographic_mex_to
from ._errors import MeshRejectedError, MeshResendRefusedError, parse_send_response
from ._handshake import HANDSHAKE_INTERVAL, MailboxValidation, handshake_request, validate_mailbox
from ._itk import (
    ACKNOWLEDGEMENT_WORKFLOWS,
    ITK3_MESSAGES,
    Itk3Message,
    acknowledgement_workflow,
    consultation_report_subject,
    route_acknowledgement,
)
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
    "ACKNOWLEDGEMENT_WORKFLOWS",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CONTENT_TYPE",
    "DEMOGRAPHIC_PREFIX",
    "ENVELOPE_TTL",
    "HANDSHAKE_INTERVAL",
    "ITK3_MESSAGES",
    "MAX_REQUEST_BYTES",
    "MESH_ENVIRONMENTS",
    "PERSONAL_HEADERS",
    "ChunkedSend",
    "FirstPostOutcome",
    "FirstPostRecovery",
    "Itk3Message",
    "MailboxQuery",
    "MailboxValidation",
    "MeshAdapter",
    "MeshAuth",
    "MeshCredentials",
    "MeshLookupSource",
    "MeshMailbox",
    "MeshOptions",
    "MeshPlugin",
    "MeshRejectedError",
    "MeshResendRefusedError",
    "MeshSettings",
    "MeshTls",
    "MeshTracking",
    "acknowledgement_workflow",
    "chunk_requests",
    "consultation_report_subject",
    "demo",
    "demographic_mex_to",
    "handshake_request",
    "nhsmesh_authorization",
    "parse_lookup_response",
    "parse_send_response",
    "recover_first_post",
    "resolve_mesh_url",
    "route_acknowledgement",
    "send_chunked",
    "track_message",
    "validate_mailbox",
]
