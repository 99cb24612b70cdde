"""AMQP strings that are not UTF-8: read per message, never fatal to the connection.

AMQP's short strings — ``message_id``, ``correlation_id``, ``reply_to``, ``type``, ``app_id``
and the other string properties, and every header *name* — are bytes: nothing makes them
UTF-8, and a Java or Go client sends whatever it was given. pamqp decodes them strictly; one
that is not UTF-8 fails the whole frame, and aiormq answers a frame it cannot read by closing
the connection. One such message would stop the worker, and every worker after it: the broker
delivers it again to each.

:func:`install` wraps pamqp's short-string and field-table decoders, once per process. The
wrappers change nothing unless strict decoding fails *and* the frame is read by a connection
opened inside :func:`lenient`: then the bytes are decoded with ``surrogateescape`` (each byte
that is not UTF-8 becomes a lone surrogate, U+DC80..U+DCFF), and the frame is delivered. The
worker then finds those strings (:func:`has_undecodable`, :func:`undecodable_fields`), shows
them escaped (:func:`escaped`: ``caf\\xe9``; :func:`request_id_of` for the request id) and
answers the message with a failure document: it is acknowledged, and the queue moves on.
:func:`decodable` keeps only the properties it can use; :func:`writable` writes headers back
on a retry copy. Other connections in the process (an application's own aio-pika) keep
pamqp's behaviour exactly: the scope is a context variable, which a connection's reader task
copies from the code that opened it.

Long strings (header *values*) need none of this: pamqp already reads one that is not UTF-8
as ``bytes``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import struct
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import pamqp.decode

if TYPE_CHECKING:
    import aiormq

__all__ = [
    "decodable",
    "escaped",
    "has_undecodable",
    "install",
    "lenient",
    "raw_bytes",
    "request_id_of",
    "undecodable_fields",
    "writable",
]

logger = logging.getLogger("sds_plugins.worker")

_LENIENT: ContextVar[bool] = ContextVar("sds_plugins_amqp_lenient", default=False)
_installed = False
_Decoder = Callable[[bytes], tuple[int, Any]]
# Broker-set short-string properties a message may carry (all but headers, which are a table).
_STRING_PROPERTIES = (
    "message_id",
    "correlation_id",
    "reply_to",
    "content_type",
    "content_encoding",
    "message_type",
    "user_id",
    "app_id",
    "expiration",
    "cluster_id",
)
_AMQP_SHORT_MAX = 255  # bytes in a short string (message_id, correlation_id...)


@contextlib.contextmanager
def lenient() -> Iterator[None]:
    """Connections opened inside this block read strings that are not UTF-8 (see above)."""
    token = _LENIENT.set(True)
    try:
        yield
    finally:
        _LENIENT.reset(token)


def install() -> bool:
    """Wrap pamqp's decoders (once; idempotent). ``False`` when pamqp is not as expected:
    then decoding stays strict, as before."""
    global _installed
    if _installed:
        return True
    methods: dict[str, _Decoder] | None = getattr(pamqp.decode, "METHODS", None)
    table_mapping: dict[bytes, _Decoder] | None = getattr(pamqp.decode, "TABLE_MAPPING", None)
    strict_short = methods.get("shortstr") if methods else None
    strict_table = methods.get("table") if methods else None
    if (
        methods is None
        or table_mapping is None
        or strict_short is None
        or strict_table is None
        or table_mapping.get(b"F") is not strict_table
    ):
        logger.warning("pamqp's decoders are not as expected: AMQP strings are read strictly")
        return False

    def short_str(value: bytes) -> tuple[int, Any]:
        try:
            return strict_short(value)
        except UnicodeDecodeError:
            if not _LENIENT.get():
                raise
        length = value[0]
        return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")

    def field_table(value: bytes) -> tuple[int, Any]:
        try:
            return strict_table(value)
        except UnicodeDecodeError:
            if not _LENIENT.get():
                raise
        return _lenient_table(value)

    methods["shortstr"] = short_str
    methods["table"] = field_table
    # Nested tables (a header whose value is a table) and arrays of tables come through here.
    table_mapping[b"F"] = field_table
    _installed = True
    return True


def _lenient_table(value: bytes) -> tuple[int, dict[str, Any]]:
    """pamqp's field table, with names decoded leniently (values as pamqp reads them)."""
    try:
        length = struct.unpack(">I", value[0:4])[0]
    except struct.error as exc:
        raise ValueError("Could not unpack data") from exc
    offset = 4
    end = offset + length
    if end > len(value):
        raise ValueError("Field table length exceeds available data")
    data: dict[str, Any] = {}
    while offset < end:
        key_length = value[offset]
        offset += 1
        if offset + key_length > end:
            raise ValueError("Field table key length exceeds data")
        key = value[offset : offset + key_length].decode("utf-8", "surrogateescape")
        offset += key_length
        consumed, result = pamqp.decode.embedded_value(value[offset:])
        offset += consumed
        data[key] = result
    return end, data


def has_undecodable(text: str) -> bool:
    """Whether ``text`` holds bytes that were not UTF-8 (lone surrogates)."""
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def escaped(text: str) -> str:
    """``text`` as UTF-8 text, the bytes that were not UTF-8 written ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def raw_bytes(text: str) -> bytes:
    """The bytes ``text`` was decoded from (leniently or not)."""
    return text.encode("utf-8", "surrogateescape")


def decodable(value: str | None) -> str | None:
    """A short-string property, or ``None`` when it was not UTF-8 (it cannot be used)."""
    if value is None or has_undecodable(value):
        return None
    return value


def request_id_of(message_id: str | None) -> str | None:
    """The request id: the ``message_id``; one that is not UTF-8 escaped (``caf\\xe9``), cut
    to what a message_id can carry back on the outcome (255 bytes, with a digest)."""
    if not message_id or not has_undecodable(message_id):
        return message_id or None
    text = escaped(message_id)
    if len(text.encode()) <= _AMQP_SHORT_MAX:
        return text
    digest = hashlib.sha256(raw_bytes(message_id)).hexdigest()[:16]
    return f"{text.encode()[:200].decode('utf-8', 'ignore')}~{digest}"


def undecodable_fields(
    properties: aiormq.spec.Basic.Properties, headers: Mapping[str, Any]
) -> list[str]:
    """The properties and header names that are not UTF-8, each with its value escaped."""
    found = [
        f'{name} "{escaped(value)[:100]}"'
        for name in _STRING_PROPERTIES
        if isinstance(value := getattr(properties, name, None), str) and has_undecodable(value)
    ]
    found += [f'header name "{escaped(name)[:100]}"' for name in _undecodable_names(headers)]
    return found


def _undecodable_names(value: Any) -> list[str]:
    """Names in a table (and in the tables inside it) that are not UTF-8."""
    names: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and has_undecodable(key):
                names.append(key)
            names += _undecodable_names(item)
    elif isinstance(value, list):
        for item in value:
            names += _undecodable_names(item)
    return names


def writable(value: Any) -> Any:
    """A header value as pamqp can write it back.

    pamqp reads a string that is not UTF-8 (legal AMQP, from a Java or Go client, say) as
    ``bytes``, which it cannot encode: the retry copy would fail, and the request come back
    for ever without its attempt counted. A byte array carries the same bytes.
    """
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, str) and has_undecodable(value):
        return bytearray(raw_bytes(value))
    if isinstance(value, dict):
        return {k: writable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [writable(v) for v in value]
    return value
