"""MESH header values, checked the way MESH checks them, before anything is sent.

The rules come from NHS England's mesh-sandbox (``mesh_sandbox/common/mex_headers.py``), which
mirrors the service: maximum lengths per header (``mex-to`` 100, ``mex-workflowid`` 300,
``mex-subject`` 500, ``mex-localid`` 300, ``mex-filename`` 300, ``mex-content-checksum`` 100,
``mex-content-type`` 100), no control characters, no ``http(s)://`` in ``mex-to``,
``mex-workflowid`` or ``mex-content-checksum``, and a checksum made only of letters, digits,
white space and ``:-/``. MESH answers such mistakes with 400 or 417 *after* the upload; here they
are an :class:`~sds_plugins.InvalidInputError` naming the option, and nothing is sent.

Two rules are stricter than the sandbox, and say why: values must be printable ASCII (HTTP
header values are ASCII to httpx, which refuses anything else at send time), and mailbox and
workflow ids are restricted to the characters real ones use, because they also appear in URL
paths (``/messageexchange/{mailbox}/outbox``, ``/endpointlookup/{ods}/{workflow}``) and in the
``NHSMESH`` token, where ``:`` or ``/`` would change the meaning.
"""

from __future__ import annotations

import re

from sds_plugins import InvalidInputError, check_path_segment

__all__ = [
    "MAX_LENGTHS",
    "check_text_header",
    "normalise_checksum",
    "normalise_content_type",
    "normalise_flag",
    "normalise_mailbox_id",
    "normalise_workflow_id",
]

#: Longest value MESH accepts per option (mesh-sandbox's ``max_length`` for each header).
MAX_LENGTHS: dict[str, int] = {
    "mailbox": 100,
    "mailbox_id": 100,
    "workflow_id": 300,
    "subject": 500,
    "local_id": 300,
    "filename": 300,
    "checksum": 100,
    "content_type": 100,
}

_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_URL = re.compile(r"^https?://", re.IGNORECASE)
_MAILBOX = re.compile(r"[A-Z0-9][A-Z0-9_-]*")
_WORKFLOW = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CHECKSUM = re.compile(r"[A-Za-z0-9\s:/-]*")
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;.*)?")
_YES = frozenset({"y", "yes", "true", "t", "1", "on"})
_NO = frozenset({"n", "no", "false", "f", "0", "off"})


def check_text_header(value: object, field: str, *, strip: bool = True) -> str:
    """A free-text header value (subject, local id, filename...): ASCII, no controls, not too long.

    The message names ``field`` and never repeats the value (it may be confidential).
    """
    if not isinstance(value, str):
        raise InvalidInputError(
            f"{field} must be a string, got {type(value).__name__}", field=field
        )
    if not _PRINTABLE_ASCII.fullmatch(value):
        raise InvalidInputError(
            f"{field} must be printable ASCII: no control characters (CR, LF, tab, NUL...) "
            "and no characters beyond ASCII",
            field=field,
        )
    text = value.strip() if strip else value
    if not text:
        raise InvalidInputError(f"{field} is empty", field=field)
    limit = MAX_LENGTHS.get(field)
    if limit is not None and len(text) > limit:
        raise InvalidInputError(
            f"{field} is {len(text)} characters long; MESH accepts at most {limit}", field=field
        )
    return text


def normalise_mailbox_id(value: object, *, field: str = "mailbox_id") -> str:
    """An upper-cased MESH mailbox id (``X26ABC1``): letters, digits, ``_`` and ``-``."""
    text = check_text_header(value, field).upper()
    if _URL.match(text) or not _MAILBOX.fullmatch(text):
        raise InvalidInputError(
            f"{field}: {text!r} is not a MESH mailbox id (letters, digits, '_' and '-', "
            "e.g. X26ABC1)",
            field=field,
        )
    # Also a URL path segment (/messageexchange/{mailbox}/...): the core's segment rules too.
    return check_path_segment(text, field)


def normalise_workflow_id(value: object, *, field: str = "interaction") -> str:
    """A MESH workflow id (``TEST_WORKFLOW``, ``GPFED_CONSULT_REPORT``); case is kept."""
    text = check_text_header(value, field)
    if len(text) > MAX_LENGTHS["workflow_id"]:
        raise InvalidInputError(
            f"{field}: a MESH workflow id is at most {MAX_LENGTHS['workflow_id']} characters",
            field=field,
        )
    if _URL.match(text) or not _WORKFLOW.fullmatch(text):
        raise InvalidInputError(
            f"{field}: {text!r} is not a MESH workflow id (letters, digits, '_', '.' and '-', "
            "e.g. TEST_WORKFLOW)",
            field=field,
        )
    # Also a URL path segment (/endpointlookup/{ods}/{workflow}): the core's segment rules too.
    return check_path_segment(text, field)


def normalise_checksum(value: object, *, field: str = "checksum") -> str:
    """``mex-content-checksum``: letters, digits, white space and ``:-/`` (e.g. ``md5:abc...``)."""
    text = check_text_header(value, field)
    if _URL.match(text) or not _CHECKSUM.fullmatch(text):
        raise InvalidInputError(
            f"{field}: MESH accepts only letters, digits, spaces and ':-/' in a checksum",
            field=field,
        )
    return text


def normalise_content_type(value: object, *, field: str = "content_type") -> str:
    """A media type (``type/subtype[; parameters]``), as ``Content-Type`` and MESH carry it."""
    text = check_text_header(value, field)
    if not _CONTENT_TYPE.fullmatch(text):
        raise InvalidInputError(
            f"{field}: {text!r} is not a media type (e.g. application/json)", field=field
        )
    return text


def normalise_flag(value: object, *, field: str) -> str:
    """A MESH Y/N flag from a bool or a string (the CLI passes strings): ``"Y"`` or ``"N"``."""
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, str) and value.strip().lower() in _YES | _NO:
        return "Y" if value.strip().lower() in _YES else "N"
    raise InvalidInputError(f"{field} must be true or false (or Y/N)", field=field)
