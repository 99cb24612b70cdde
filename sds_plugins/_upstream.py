"""The boundary for upstream bytes: everything read from a directory, a token endpoint or
anything in between passes through here, and can only come out as data or a typed error.

Upstreams are not trusted to be well-formed, small or quick: a misconfigured proxy, a test
environment with a debug page, a decompression bomb or a server trickling one byte every half
second must each end in one of the project's errors (:class:`MalformedResponseError`,
:class:`DirectoryTimeoutError`...), in bounded time and memory, never in ``RecursionError``,
``ValueError`` or a gigabyte of RAM.

- :func:`read_body` reads a streamed response up to a size limit, decompressing gzip/deflate
  itself so the limit applies *after* decompression without ever inflating more than the
  limit (httpx would inflate each network chunk whole: one 64 KiB chunk of a bomb is 64 MiB).
- :func:`load_json` parses JSON with pydantic-core's parser, whose nesting limit turns a
  100,000-deep document into an error instead of a ``RecursionError``.
- :func:`operation_outcome` reads a Spine code and diagnostics out of *any* JSON value.
"""

from __future__ import annotations

import email.utils
import re
import zlib
from datetime import UTC, datetime
from typing import Any

import httpx
import pydantic_core

from ._exceptions import MalformedResponseError

__all__ = [
    "ACCEPT_ENCODING",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "ERROR_BODY_BYTES",
    "bounded_response",
    "load_json",
    "operation_outcome",
    "parse_retry_after",
    "read_body",
    "read_body_sync",
    "safe_url",
]

#: The largest answer read by default. A Device listing all 478 interactions of a Spine system
#: is ~120 KB; a few MiB leave room for growth while keeping a bomb harmless.
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
#: An error body is only read for its OperationOutcome: a little is plenty.
ERROR_BODY_BYTES = 64 * 1024
#: What we ask for, so that nothing arrives in an encoding we cannot bound.
ACCEPT_ENCODING = "gzip, deflate"


class TooLarge(Exception):
    """Internal: the body exceeded the limit (raised by :func:`read_body`)."""


class _Inflater:
    """gzip or deflate, never producing more than asked for."""

    def __init__(self, encoding: str) -> None:
        self._deflate = encoding == "deflate"
        # deflate is zlib-wrapped by the RFC but raw from some servers: try wrapped first.
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS if self._deflate else 16 + zlib.MAX_WBITS)
        self._started = False

    def feed(self, data: bytes, room: int) -> bytes:
        """Decompress ``data`` into at most ``room`` bytes (:class:`TooLarge` beyond).

        Asking zlib for ``room + 1`` bytes at most means a bomb is never inflated further than
        one byte past the limit; when less came out, all of ``data`` was consumed.
        """
        try:
            out = self._zlib.decompress(data, room + 1)
        except zlib.error:
            if self._deflate and not self._started:
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                self._started = True
                return self.feed(data, room)
            raise
        self._started = True
        if len(out) > room:
            raise TooLarge
        return out


class _Body:
    """Collects a response body up to ``limit`` decoded bytes."""

    def __init__(self, response: httpx.Response, limit: int) -> None:
        encodings = [
            part.strip().lower()
            for part in response.headers.get("content-encoding", "").split(",")
            if part.strip() and part.strip().lower() != "identity"
        ]
        if len(encodings) > 1 or (encodings and encodings[0] not in ("gzip", "x-gzip", "deflate")):
            raise MalformedResponseError(
                f"answer in an encoding that was not asked for ({', '.join(encodings)})",
                field="Content-Encoding",
            )
        declared = response.headers.get("content-length", "")
        if (
            not encodings
            and declared.isascii()
            and declared.isdigit()
            and len(declared) < 20
            and int(declared) > limit
        ):
            raise TooLarge
        self.encoding = encodings[0] if encodings else None
        self._inflater = _Inflater(self.encoding) if self.encoding else None
        self._limit = limit
        self._size = 0
        self._chunks: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        try:
            if self._inflater is not None:
                chunk = self._inflater.feed(chunk, self._limit - self._size)
        except zlib.error as exc:
            raise MalformedResponseError(
                f"answer's {self.encoding} stream is corrupt", field="body"
            ) from exc
        self._size += len(chunk)
        if self._size > self._limit:
            raise TooLarge
        self._chunks.append(chunk)

    def result(self) -> bytes:
        return b"".join(self._chunks)


async def read_body(response: httpx.Response, limit: int) -> bytes:
    """The decoded body of a streamed ``response``; :class:`TooLarge` beyond ``limit`` bytes.

    Raises :class:`MalformedResponseError` for an encoding we did not ask for or a corrupt
    compressed stream.
    """
    already = _already_read(response, limit)
    if already is not None:
        return already
    body = _Body(response, limit)
    async for chunk in response.aiter_raw():
        body.feed(chunk)
    return _keep(response, body.result())


def read_body_sync(response: httpx.Response, limit: int) -> bytes:
    """:func:`read_body` for a synchronous client's streamed response."""
    already = _already_read(response, limit)
    if already is not None:
        return already
    body = _Body(response, limit)
    for chunk in response.iter_raw():
        body.feed(chunk)
    return _keep(response, body.result())


def _keep(response: httpx.Response, content: bytes) -> bytes:
    # What was read is the response's content from now on, as if httpx had read it: code after
    # us (httpx itself, after an auth flow's token request) reads it again rather than the
    # stream, which is spent. (httpx keeps a read body in this attribute.)
    response._content = content
    return content


def _already_read(response: httpx.Response, limit: int) -> bytes | None:
    """The body of a response that a transport already read (httpx's MockTransport does)."""
    if not response.is_stream_consumed:
        return None
    content = response.content  # decoded already
    if len(content) > limit:
        raise TooLarge
    return content


def bounded_response(response: httpx.Response, body: bytes) -> httpx.Response:
    """A response carrying ``body`` (already read and decoded) in place of the stream, for
    code that reads ``.text``, ``.json()`` or ``.headers`` of a non-2xx answer."""
    # Raw bytes: a header value need not be ASCII (Latin-1 is allowed on the wire).
    headers = [
        (name, value)
        for name, value in response.headers.raw
        if name.lower() not in (b"content-encoding", b"content-length", b"transfer-encoding")
    ]
    return httpx.Response(
        response.status_code, headers=headers, content=body, request=response.request
    )


def load_json(body: bytes | str, *, what: str = "answer") -> Any:
    """Parse JSON; :class:`MalformedResponseError` for anything that is not (too deep, cut,
    not UTF-8...)."""
    try:
        return pydantic_core.from_json(body)
    except ValueError as exc:
        raise MalformedResponseError(f"{what} is not JSON ({exc})", field="body") from None


def _text(value: object) -> str | None:
    if isinstance(value, str) and value:
        return value[:1000]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def operation_outcome(body: object) -> tuple[str | None, str | None]:
    """The Spine error code and diagnostics of an ``OperationOutcome`` (or ``None``s).

    Any JSON value is accepted: ``details`` may be a string, ``coding`` an object or a number
    in a misbehaving upstream's answer; what cannot be read is simply absent.
    """
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return None, None
    issues = body.get("issue")
    issue = issues[0] if isinstance(issues, list) and issues else None
    if not isinstance(issue, dict):
        return None, None
    details = issue.get("details")
    codings = details.get("coding") if isinstance(details, dict) else None
    if isinstance(codings, dict):
        codings = [codings]
    coding = codings[0] if isinstance(codings, list) and codings else None
    if not isinstance(coding, dict):
        coding = {}
    code = _text(coding.get("code")) or _text(issue.get("code"))
    diagnostics = (
        _text(issue.get("diagnostics"))
        or _text(coding.get("display"))
        or (_text(details) if isinstance(details, str) else None)
    )
    return code, diagnostics


#: A Retry-After beyond this is treated as this (a day): no upstream should park us longer,
#: and huge values would overflow the arithmetic that follows.
_MAX_RETRY_AFTER_S = 86_400.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; ``None`` if absent
    or unreadable. Always finite, between 0 and a day."""
    if not value:
        return None
    value = value.strip()
    # ASCII digits only: str.isdigit() also accepts superscripts and other scripts' digits,
    # which float() refuses.
    if value.isascii() and value.isdigit():
        return min(float(value[:12]), _MAX_RETRY_AFTER_S)
    if not value.isascii() or len(value) > 64:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        stamp = when.timestamp()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    current = datetime.now(UTC).timestamp() if now is None else now
    return min(max(stamp - current, 0.0), _MAX_RETRY_AFTER_S)


_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


def safe_url(url: str) -> str:
    """``url`` without any ``user:password@`` part (errors and logs must never show it)."""
    return _USERINFO.sub("", url)
