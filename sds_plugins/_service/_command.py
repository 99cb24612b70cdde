"""``sds-plugins serve``: every option also an ``SDS_SERVE_*`` environment variable."""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click
from pydantic import SecretStr, ValidationError

from .._exceptions import ConfigurationError, SdsPluginsError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .._settings import Settings

__all__ = ["build_service", "serve"]

logger = logging.getLogger("sds_plugins.serve")

_ENV_PREFIX = "SDS_SERVE_"


def _exit(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere: treat as reachable from outside


def read_token(path: Path) -> SecretStr:
    """The service token: the file's content, surrounding whitespace removed."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        # The reason only (no content): an unreadable file is not a leaked token.
        raise ConfigurationError(
            f"cannot read the token file {path}: {type(exc).__name__}"
        ) from None
    if not text:
        raise ConfigurationError(f"the token file {path} is empty")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ConfigurationError(f"the token file {path} must hold one token on one line")
    return SecretStr(text)


def build_service(
    settings: Settings,
    *,
    config: Path | None = None,
    token: SecretStr | None = None,
    with_secrets: bool = False,
) -> Starlette:
    """The service app with its router, and metrics and tracing when their extras are there."""
    from .._adapter_options import load_adapter_options
    from .._engine import Router
    from .._observability import register_observability
    from ._app import create_service_app

    options = load_adapter_options(config) if config is not None else {}
    router = Router(settings, adapter_options=options)
    metrics = register_observability(router)
    return create_service_app(router, token=token, with_secrets=with_secrets, metrics=metrics)


def app_from_environment() -> Starlette:
    """The app for each uvicorn worker process (``--workers`` > 1), configured from the
    ``SDS_SERVE_*`` variables the command set and ``SDS_*`` as usual."""
    from .._settings import Settings

    token_file = os.environ.get(f"{_ENV_PREFIX}TOKEN_FILE")
    config = os.environ.get(f"{_ENV_PREFIX}CONFIG")
    return build_service(
        Settings(),
        config=Path(config) if config else None,
        token=read_token(Path(token_file)) if token_file else None,
        with_secrets=os.environ.get(f"{_ENV_PREFIX}WITH_SECRETS", "").lower()
        in ("1", "true", "yes", "on"),
    )


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar=f"{_ENV_PREFIX}HOST",
    show_envvar=True,
    help="Address to listen on. Anything beyond loopback needs --token-file.",
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    envvar=f"{_ENV_PREFIX}PORT",
    show_envvar=True,
    help="Port to listen on (0: a free one, printed at start).",
)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar=f"{_ENV_PREFIX}CONFIG",
    show_envvar=True,
    help="TOML file of per-adapter options ([ADAPTER] tables, as for route --config).",
)
@click.option(
    "--with-secrets",
    is_flag=True,
    envvar=f"{_ENV_PREFIX}WITH_SECRETS",
    show_envvar=True,
    help="Return envelopes with credentials in their headers (else masked).",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar=f"{_ENV_PREFIX}TOKEN_FILE",
    show_envvar=True,
    help="File holding the bearer token callers of /route and /adapters must send.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    envvar=f"{_ENV_PREFIX}WORKERS",
    show_envvar=True,
    help="uvicorn worker processes (share one cache and pace through SDS_REDIS_URL).",
)
@click.option(
    "--base-url",
    envvar="SDS_BASE_URL",
    show_envvar=True,
    help="SDS base URL or environment name (else SDS_ENV).",
)
def serve(
    host: str,
    port: int,
    config: Path | None,
    with_secrets: bool,
    token_file: Path | None,
    workers: int,
    base_url: str | None,
) -> None:
    """Serve routing over HTTP: POST /route/{adapter}, GET /adapters, /healthz, /readyz,
    /metrics, /openapi.json. Errors are application/problem+json (RFC 9457).

    SDS settings come from SDS_* as for the other commands (SDS_REDIS_URL to share cache and
    pace between workers and replicas). SIGTERM/SIGINT finish the requests in flight, then
    exit 0. See docs/operations.md.
    """
    from .._settings import Settings

    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        # The web stack is an extra: a deployment that only routes from Python does not carry it.
        _exit(f"serve needs {' and '.join(missing)}: pip install 'sds-plugins[serve]'")
    if token_file is None and not is_loopback(host):
        _exit(
            f"refusing to listen on {host} without a service token: pass --token-file "
            f"({_ENV_PREFIX}TOKEN_FILE), or listen on 127.0.0.1"
        )
    try:
        token = read_token(token_file) if token_file is not None else None
        settings = Settings(base_url=base_url) if base_url else Settings()
        app = build_service(settings, config=config, token=token, with_secrets=with_secrets)
    except SdsPluginsError as exc:
        _exit(str(exc), exc.exit_code)
    except ValidationError as exc:
        _exit(f"invalid configuration: {exc.error_count()} error(s): {_fields(exc)}")
    if workers > 1:
        _run_workers(host, port, workers, config, token_file, with_secrets, base_url)
        return
    _run_one(app, host, port)


def _fields(exc: ValidationError) -> str:
    # Locations and messages only: pydantic's own text would quote the values.
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'value'}: {error['msg']}"
        for error in exc.errors()
    )


def _run_one(app: Starlette, host: str, port: int) -> None:
    import uvicorn

    from .._sandbox._server import _bind, _url, run_in_foreground

    try:
        sock = _bind(host, port)
    except OSError as exc:
        _exit(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            lifespan="on",
            log_config=None,  # the CLI's logging set-up stays in charge
            access_log=False,
            proxy_headers=False,
            timeout_graceful_shutdown=30,
        )
    )
    actual = _url(host, sock.getsockname()[1])
    if not run_in_foreground(server, sock, lambda: click.echo(f"serving on {actual}")):
        _exit("the service did not start (see the log above)", 1)


def _run_workers(
    host: str,
    port: int,
    workers: int,
    config: Path | None,
    token_file: Path | None,
    with_secrets: bool,
    base_url: str | None,
) -> None:
    import uvicorn

    # Worker processes build their own app from the environment (uvicorn imports it by name).
    for name, value in (
        ("TOKEN_FILE", str(token_file.resolve()) if token_file else None),
        ("CONFIG", str(config.resolve()) if config else None),
        ("WITH_SECRETS", "1" if with_secrets else None),
    ):
        if value is None:
            os.environ.pop(f"{_ENV_PREFIX}{name}", None)
        else:
            os.environ[f"{_ENV_PREFIX}{name}"] = value
    if base_url:
        os.environ["SDS_BASE_URL"] = base_url
    from uvicorn.supervisors import Multiprocess

    from .._sandbox._server import _bind, _url

    try:
        # Bound here rather than by uvicorn: port 0 then works, and the port is known early.
        sock = _bind(host, port)
    except OSError as exc:
        _exit(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    server_config = uvicorn.Config(
        "sds_plugins._service._command:app_from_environment",
        factory=True,
        workers=workers,
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=30,
    )
    click.echo(f"serving on {_url(host, sock.getsockname()[1])} with {workers} workers")
    try:
        # The supervisor restarts a worker that dies and stops them all on SIGTERM/SIGINT.
        Multiprocess(server_config, sockets=[sock]).run()
    finally:
        sock.close()
