"""Sending envelopes: httpx clients configured for each destination, client TLS included.

Every Spine Secure Proxy and Spine MHS call needs a Spine-issued client certificate and NHS
England's CA chain; MESH too. :class:`EnvelopeClients` reads an envelope's :class:`ClientTls`
(paths only) and hands out one ``httpx.AsyncClient`` (or ``httpx.Client``) per destination:
scheme, host, port and TLS files. So there is one TLS context and one connection pool per
destination, never one per request (building a TLS context loads and parses every CA in the
bundle).
"""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Any

import httpx

from ._envelope import ClientTls, RoutingEnvelope
from ._exceptions import ConfigurationError

__all__ = ["EnvelopeClients", "client_ssl_context"]

_Destination = tuple[str, str, int | None, ClientTls | None]


def client_ssl_context(tls: ClientTls | None) -> ssl.SSLContext:
    """A TLS context for ``tls``: the CA bundle (or certifi's), TLS 1.2+, the client cert.

    Raises :class:`ConfigurationError` naming the path (never file contents) when a file cannot
    be read or is not what it should be.
    """
    import certifi

    ca_bundle = tls.ca_bundle_path if tls is not None else None
    try:
        context = ssl.create_default_context(cafile=ca_bundle or certifi.where())
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"client TLS: cannot load the CA bundle {ca_bundle} ({type(exc).__name__})"
        ) from None
    # As NHS's mesh-client does: nothing older than TLS 1.2.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls is not None and tls.cert_path is not None:
        try:
            context.load_cert_chain(tls.cert_path, tls.key_path)
        except (OSError, ssl.SSLError) as exc:
            # The type of failure and the paths only: an ssl error may quote file contents.
            raise ConfigurationError(
                f"client TLS: cannot load the client certificate {tls.cert_path}"
                + (f" with key {tls.key_path}" if tls.key_path else "")
                + f" ({type(exc).__name__})"
            ) from None
    return context


class EnvelopeClients:
    """httpx clients for sending envelopes: one per destination, each with its TLS context.

    ``async_client(envelope)`` / ``client(envelope)`` return the client for the envelope's
    destination (scheme, host and port of ``envelope.request.url``, plus ``envelope.tls``),
    creating it once. Send with it as usual: ``await clients.async_client(e).send(
    e.build_request(body))``. Plain ``http://`` destinations are refused unless
    ``allow_plain_http`` (local mocks and tests), and always when the envelope carries client
    TLS. ``client_options`` go to every client (``timeout``, ``follow_redirects``...).

    Async clients belong to the event loop that first uses them: keep one ``EnvelopeClients``
    per loop, and close it (``async with`` / ``aclose()``; ``with`` / ``close()`` for the sync
    clients) when done.
    """

    def __init__(self, *, allow_plain_http: bool = False, **client_options: Any) -> None:
        clashing = sorted({"verify", "cert", "base_url"} & set(client_options))
        if clashing:
            # TLS comes from each envelope (one context per destination), the URL too.
            raise TypeError(f"EnvelopeClients sets {', '.join(clashing)} itself, per destination")
        self.allow_plain_http = allow_plain_http
        self._options: dict[str, Any] = {"timeout": 30.0, **client_options}
        self._contexts: dict[_Destination, ssl.SSLContext] = {}
        self._async: dict[_Destination, httpx.AsyncClient] = {}
        self._sync: dict[_Destination, httpx.Client] = {}

    def _destination(self, envelope: RoutingEnvelope) -> _Destination:
        url = httpx.URL(envelope.request.url)
        tls = envelope.tls if envelope.tls is not None and envelope.tls.configured else None
        if url.scheme == "http":
            if tls is not None:
                raise ConfigurationError(
                    f"{url.host}: the envelope carries client TLS but its URL is plain http://"
                )
            if not self.allow_plain_http:
                raise ConfigurationError(
                    f"{url.host}: plain http:// destination refused (Spine, the SSP and MESH "
                    "need TLS); EnvelopeClients(allow_plain_http=True) is for local mocks only"
                )
        elif url.scheme != "https":
            raise ConfigurationError(f"cannot send to a {url.scheme or 'relative'} URL")
        return (url.scheme, url.host, url.port, tls)

    def ssl_context(self, envelope: RoutingEnvelope) -> ssl.SSLContext | None:
        """The TLS context for the envelope's destination (``None`` for plain http)."""
        destination = self._destination(envelope)
        if destination[0] != "https":
            return None
        context = self._contexts.get(destination)
        if context is None:
            context = self._contexts[destination] = client_ssl_context(destination[3])
        return context

    def _verify(self, envelope: RoutingEnvelope) -> ssl.SSLContext | bool:
        context = self.ssl_context(envelope)
        return context if context is not None else True

    def async_client(self, envelope: RoutingEnvelope) -> httpx.AsyncClient:
        """The ``httpx.AsyncClient`` for ``envelope``'s destination (created on first use)."""
        destination = self._destination(envelope)
        client = self._async.get(destination)
        if client is None:
            verify = self._verify(envelope)
            client = self._async[destination] = httpx.AsyncClient(verify=verify, **self._options)
        return client

    def client(self, envelope: RoutingEnvelope) -> httpx.Client:
        """The ``httpx.Client`` for ``envelope``'s destination (created on first use)."""
        destination = self._destination(envelope)
        client = self._sync.get(destination)
        if client is None:
            verify = self._verify(envelope)
            client = self._sync[destination] = httpx.Client(verify=verify, **self._options)
        return client

    @property
    def destinations(self) -> int:
        """How many destinations have a TLS context (one each, however many requests)."""
        return len(self._contexts)

    async def aclose(self) -> None:
        """Close every client (async and sync)."""
        clients, self._async = list(self._async.values()), {}
        for client in clients:
            await client.aclose()
        self.close()

    def close(self) -> None:
        """Close the sync clients (``aclose`` closes both kinds)."""
        clients, self._sync = list(self._sync.values()), {}
        for client in clients:
            client.close()

    async def __aenter__(self) -> EnvelopeClients:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> EnvelopeClients:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EnvelopeClients {len(self._async) + len(self._sync)} client(s)>"
