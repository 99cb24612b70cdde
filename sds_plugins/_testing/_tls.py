"""Client-TLS helpers for tests: throwaway certificates and an HTTPS server that requires a
client certificate (public as :mod:`sds_plugins.testing`'s)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MtlsServer", "TlsFiles", "make_tls_files", "mtls_server"]


@dataclass(frozen=True)
class TlsFiles:
    """Throwaway PEM files for mutual-TLS tests: a CA, a server certificate and a client one.

    The server certificate is for ``127.0.0.1`` and ``localhost``; both are signed by the CA,
    so ``ca`` verifies the server and the server verifies the client against ``ca``.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path, *, client_name: str = "sds-plugins-test-client") -> TlsFiles:
    """Generate a CA, a server certificate and a client certificate under ``directory``.

    For tests only: 2048-bit RSA keys, valid for a day, private keys unencrypted.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write_key(path: Path, private: rsa.RSAPrivateKey) -> Path:
        path.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path

    def write_cert(path: Path, certificate: x509.Certificate) -> Path:
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = key()
    ca_name = name("sds-plugins test CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]
    ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        private = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_name)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), private

    server, server_key = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client, client_key = leaf(client_name, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    directory.mkdir(parents=True, exist_ok=True)
    return TlsFiles(
        ca=write_cert(directory / "ca.pem", ca),
        server_cert=write_cert(directory / "server.pem", server),
        server_key=write_key(directory / "server-key.pem", server_key),
        client_cert=write_cert(directory / "client.pem", client),
        client_key=write_key(directory / "client-key.pem", client_key),
    )


@dataclass
class MtlsServer:
    """A running :func:`mtls_server`: its ``url`` and the requests it answered."""

    url: str
    #: ``{"method", "path", "client"}`` per answered request (``client``: the certificate's CN).
    requests: list[dict[str, str]] = field(default_factory=list)


@contextlib.contextmanager
def mtls_server(files: TlsFiles) -> Iterator[MtlsServer]:
    """An HTTPS server on ``127.0.0.1`` that **requires** a client certificate signed by the CA.

    Any method and path answers 200 with JSON ``{"method", "path", "client"}``; a client
    without an acceptable certificate fails the TLS handshake. Runs on a background thread
    until the ``with`` block ends.
    """
    import http.server
    import ssl
    import threading

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(files.server_cert), str(files.server_key))
    answered: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            peer = self.connection.getpeercert() or {}
            subject = dict(item[0] for item in peer.get("subject", ()))
            record = {
                "method": self.command,
                "path": self.path,
                "client": str(subject.get("commonName", "")),
            }
            answered.append(record)
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = json.dumps(record).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the test reads ``requests``

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self) -> tuple[Any, Any]:
            sock, address = super().get_request()
            # The handshake runs in the handler's thread, so a refused client cannot stall
            # the accept loop.
            return context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            ), address

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # refused handshakes are the point of some tests

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="mtls-server", daemon=True)
    thread.start()
    try:
        yield MtlsServer(url=f"https://127.0.0.1:{server.server_address[1]}", requests=answered)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
