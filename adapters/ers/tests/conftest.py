"""Fixtures shared by the e-RS adapter tests: signing keys, sandboxes, registered plugins."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sds_plugins_ers import ErsPlugin, ErsSettings

from sds_plugins import Router
from sds_plugins.sandbox import Sandbox
from sds_plugins.testing import RouterFactory, SandboxFactory

API_KEY = "ers-test-app-key"
KID = "ers-test-kid"

ErsRouterFactory = Callable[..., Awaitable[Router]]


@pytest.fixture(autouse=True)
def _no_ers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # ErsSettings reads ERS_* variables: a developer's shell must not change a test.
    import os

    for name in list(os.environ):
        if name.startswith("ERS_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def jwks(signing_key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk = json.loads(RSAAlgorithm.to_jwk(signing_key.public_key()))
    jwk.update({"kid": KID, "use": "sig", "alg": "RS512"})
    return {"keys": [jwk]}


@pytest.fixture
def private_key_file(signing_key: rsa.RSAPrivateKey, tmp_path: Path) -> Path:
    path = tmp_path / "ers-key.pem"
    path.write_bytes(
        signing_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture
def oauth_sandbox(sds_sandbox_factory: SandboxFactory, jwks: dict[str, Any]) -> Sandbox:
    """A sandbox whose ``/oauth2/token`` accepts assertions signed with ``signing_key``."""
    return sds_sandbox_factory(api_key=API_KEY, jwks=jwks)


@pytest.fixture
def ers_settings(oauth_sandbox: Sandbox, private_key_file: Path) -> Callable[..., ErsSettings]:
    """``(**overrides) -> ErsSettings`` with signed-JWT auth against ``oauth_sandbox``."""

    def make(**overrides: Any) -> ErsSettings:
        values: dict[str, Any] = {
            "client_id": API_KEY,
            "kid": KID,
            "private_key_file": private_key_file,
            "token_url": oauth_sandbox.token_url,
        }
        values.update(overrides)
        return ErsSettings(**values)

    return make


@pytest.fixture
def ers_router(sds_router_factory: RouterFactory) -> ErsRouterFactory:
    """``await factory(settings=None, sandbox=None) -> Router`` with an :class:`ErsPlugin`.

    Each router gets its own plugin host, so routers with different e-RS settings can live in
    one test.
    """
    from sds_plugins import PluginHost

    async def make(settings: ErsSettings | None = None, sandbox: Sandbox | None = None) -> Router:
        host = PluginHost(load_entrypoints=False, environ={})
        host.register(ErsPlugin(settings or ErsSettings()), name="ers")
        return await sds_router_factory(sandbox, host=host)

    return make
