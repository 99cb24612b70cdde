"""``sds-plugins serve``: every option also an ``SDS_SERVE_*`` environment variable."""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click
from pydantic import SecretStr, ValidationError

from .._exceptions import ConfigurationError, SdsPluginsError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .._settings import Settings

__all__ = ["MIN_TOKEN_BYTES", "build_service", "read_token", "serve"]

logger = logging.getLogger("sds_plugins.serve")

_ENV_PREFIX = "SDS_SERVE_"
#: Seconds the requests in flight get to finish after SIGTERM/SIGINT.
_GRACE_S = 30
# As sds_plugins._http_server.HEADER_TIMEOUT_S and sds_plugins._service._app.ACCESS_LOGGER
# (not imported: this module loads with the CLI, without the web stack of the serve extra).
_HEADER_TIMEOUT_S = 10.0
_ACCESS_LOGGER = "sds_plugins.serve.access"


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


#: The shortest token accepted: 32 bytes (``secrets.token_urlsafe(32)`` gives 43).
MIN_TOKEN_BYTES = 32


def read_token(path: Path) -> SecretStr:
    """The service token: the file's content, surrounding whitespace removed.

    Refused (:class:`ConfigurationError`, naming the file, never its content) when group or
    others may read or write the file, or the token is shorter than :data:`MIN_TOKEN_BYTES`.
    """
    try:
        mode = path.stat().st_mode
        if os.name != "nt" and mode & 0o066:  # POSIX permissions only mean this on POSIX
            raise ConfigurationError(
                f"the token file {path} can be read or written by group or others "
                f"(mode {stat.S_IMODE(mode):04o}): keep it to the service's user "
                f"(chmod 600 {path})"
            )
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
    if len(text.encode()) < MIN_TOKEN_BYTES:
        raise ConfigurationError(
            f"the token in {path} is shorter than {MIN_TOKEN_BYTES} bytes: generate one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return SecretStr(text)


def build_service(
    settings: Settings,
    *,
    config: Path | None = None,
    token: SecretStr | None = None,
    with_secrets: bool = False,
    access_log: bool = True,
) -> Starlette:
    """The service app with its router, and metrics and tracing when their extras are there."""
    from .._adapter_options import load_adapter_options
    from .._engine import Router
    from .._observability import register_observability
    from ._app import create_service_app

    options = load_adapter_options(config) if config is not None else {}
    router = Router(settings, adapter_options=options)
    metrics = register_observability(router)
    return create_service_app(
        router, token=token, with_secrets=with_secrets, metrics=metrics, access_log=access_log
    )


def _flag(name: str) -> bool:
    return os.environ.get(f"{_ENV_PREFIX}{name}", "").lower() in ("1", "true", "yes", "on")


def _show_access_log() -> None:
    """The access log at INFO whatever the root logger's level (the CLI's is WARNING without
    -v), unless the operator set its level."""
    access = logging.getLogger(_ACCESS_LOGGER)
    if access.level == logging.NOTSET:
        access.setLevel(logging.INFO)


def app_from_environment() -> Starlette:
    """The app for each uvicorn worker process (``--workers`` > 1), configured from the
    ``SDS_SERVE_*`` variables the command set and ``SDS_*`` as usual."""
    from .._settings import Settings
    from ._protocol import ServiceProtocol

    token_file = os.environ.get(f"{_ENV_PREFIX}TOKEN_FILE")
    config = os.environ.get(f"{_ENV_PREFIX}CONFIG")
    header_timeout = os.environ.get(f"{_ENV_PREFIX}HEADER_TIMEOUT")
    if header_timeout:
        # uvicorn imports the protocol class by name in each worker: its limits are set here.
        ServiceProtocol.header_timeout_s = float(header_timeout)
    access_log = not _flag("NO_ACCESS_LOG")
    if access_log:
        if not logging.getLogger().handlers:  # a spawned worker: the CLI's set-up is not here
            logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        _show_access_log()
    return build_service(
        Settings(),
        config=Path(config) if config else None,
        token=read_token(Path(token_file)) if token_file else None,
        with_secrets=_flag("WITH_SECRETS"),
        access_log=access_log,
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
    "--header-timeout",
    default=_HEADER_TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(0.1, 300),
    envvar=f"{_ENV_PREFIX}HEADER_TIMEOUT",
    show_envvar=True,
    help="Seconds a request's headers may take from its first byte; slower clients are cut off.",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    envvar=f"{_ENV_PREFIX}ACCESS_LOG",
    show_envvar=True,
    help=f"One line per request on the {_ACCESS_LOGGER} logger (method, path, status, "
    "duration, correlation id).",
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
    header_timeout: float,
    access_log: bool,
    base_url: str | None,
) -> None:
    """Serve routing over HTTP: POST /route/{adapter}, GET /adapters, /healthz, /readyz,
    /metrics, /openapi.json. Errors are application/problem+json (RFC 9457).

    SDS settings come from SDS_* as for the other commands (SDS_REDIS_URL to share cache and
    pace between workers and replicas). SIGTERM/SIGINT finish the requests in flight (their
    answers say Connection: close), then exit 0. See docs/operations.md.
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
        app = build_service(
            settings,
            config=config,
            token=token,
            with_secrets=with_secrets,
            access_log=access_log,
        )
    except SdsPluginsError as exc:
        _exit(str(exc), exc.exit_code)
    except ValidationError as exc:
        _exit(f"invalid configuration: {exc.error_count()} error(s): {_fields(exc)}")
    if access_log:
        _show_access_log()
    if workers > 1:
        _run_workers(
            host,
            port,
            workers,
            config,
            token_file,
            with_secrets,
            base_url,
            header_timeout=header_timeout,
            access_log=access_log,
        )
        return
    _run_one(app, host, port, header_timeout)


def _fields(exc: ValidationError) -> str:
    # Locations and messages only: pydantic's own text would quote the values.
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'value'}: {error['msg']}"
        for error in exc.errors()
    )


def _run_one(app: Starlette, host: str, port: int, header_timeout: float) -> None:
    import uvicorn

    from .._http_server import bind, bounded_protocol, run_in_foreground, server_config, url
    from ._protocol import ServiceProtocol

    try:
        sock = bind(host, port)
    except OSError as exc:
        _exit(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    server = uvicorn.Server(
        server_config(
            app,
            http=bounded_protocol(header_timeout_s=header_timeout, base=ServiceProtocol),
            lifespan=True,
            timeout_graceful_shutdown=_GRACE_S,
        )
    )
    actual = url(host, sock.getsockname()[1])
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
    *,
    header_timeout: float,
    access_log: bool,
) -> None:
    # Worker processes build their own app from the environment (uvicorn imports it by name).
    for name, value in (
        ("TOKEN_FILE", str(token_file.resolve()) if token_file else None),
        ("CONFIG", str(config.resolve()) if config else None),
        ("WITH_SECRETS", "1" if with_secrets else None),
        ("HEADER_TIMEOUT", repr(header_timeout)),
        ("NO_ACCESS_LOG", None if access_log else "1"),
    ):
        if value is None:
            os.environ.pop(f"{_ENV_PREFIX}{name}", None)
        else:
            os.environ[f"{_ENV_PREFIX}{name}"] = value
    if base_url:
        os.environ["SDS_BASE_URL"] = base_url
    from uvicorn.supervisors import Multiprocess

    from .._http_server import bind, server_config, url
    from ._protocol import PROTOCOL_PATH

    try:
        # Bound here rather than by uvicorn: port 0 then works, and the port is known early.
        sock = bind(host, port)
    except OSError as exc:
        _exit(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    server_config_ = server_config(
        "sds_plugins._service._command:app_from_environment",
        factory=True,
        workers=workers,
        http=PROTOCOL_PATH,  # by name: each worker process imports it
        lifespan=True,
        timeout_graceful_shutdown=_GRACE_S,
    )
    click.echo(f"serving on {url(host, sock.getsockname()[1])} with {workers} workers")
    try:
        # The supervisor restarts a worker that dies and stops them all on SIGTERM/SIGINT.
        Multiprocess(server_config_, sockets=[sock]).run()
    finally:
        sock.close()
