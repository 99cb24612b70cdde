"""What the CLI's commands share: one line and an exit code for a failure, running a
coroutine, settings from the connection options, printing records, adapter options."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from .._client import LookupResult
from .._exceptions import ConfigurationError, DirectoryError, SdsPluginsError
from .._models import records_as_json
from .._settings import Settings

EXIT_NOT_FOUND = 3
_T = TypeVar("_T")


def _fail(exc: SdsPluginsError) -> NoReturn:
    """One clear line on stderr (with the correlation id), then the class's exit code."""
    if isinstance(exc, DirectoryError):
        line = f"error: {type(exc).__name__}: {exc}"
    else:
        line = f"error: {exc}"
    click.echo(line, err=True)
    sys.exit(exc.exit_code)


def _run(coro_factory: Callable[[], Awaitable[_T]]) -> _T:
    async def runner() -> _T:
        return await coro_factory()

    try:
        return asyncio.run(runner())
    except SdsPluginsError as exc:
        _fail(exc)
    except Exception as exc:  # a bug, or a failure nothing mapped: one line, not a traceback
        logging.getLogger("sds_plugins.cli").debug("unexpected failure", exc_info=True)
        click.echo(
            f"error: unexpected {type(exc).__name__}: {str(exc)[:300]} (-vv shows the details)",
            err=True,
        )
        sys.exit(1)


def _settings(base_url: str | None, api_key: str | None) -> Settings:
    overrides: dict[str, Any] = {}
    if base_url:
        overrides["base_url"] = base_url
    if api_key:
        overrides["api_key"] = api_key
    try:
        return Settings(**overrides)
    except SdsPluginsError as exc:
        _fail(exc)
    except ValueError as exc:  # pydantic's ValidationError
        click.echo(f"error: invalid configuration: {exc}", err=True)
        sys.exit(2)


def _print_records(result: LookupResult[Any], records: Sequence[Any] | None = None) -> None:
    click.echo(
        json.dumps(records_as_json(result.records if records is None else records), indent=2)
    )
    if not result.records:
        click.echo(
            f"no matching records for {result.query} (correlation_id={result.correlation_id})",
            err=True,
        )
        sys.exit(EXIT_NOT_FOUND)


_base_url_option = click.option(
    "--base-url",
    envvar="SDS_BASE_URL",
    show_envvar=True,
    help="SDS base URL or environment name (sandbox, int, dep, prod; else SDS_ENV).",
)
_api_key_option = click.option(
    "--api-key",
    envvar="SDS_API_KEY",
    show_envvar=True,
    help="API key (better in the environment: a command line shows in ps).",
)
_connection_options = [
    _base_url_option,
    _api_key_option,
    click.option("--correlation-id", help="UUID to send as X-Correlation-ID (default: a new one)."),
    click.option("--no-cache", is_flag=True, help="Ask the API gateway to skip its cache."),
]


def _with_connection(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_connection_options):
        func = option(func)
    return func


def _with_connection_settings(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--base-url`` and ``--api-key`` only."""
    return _base_url_option(_api_key_option(func))


def _options(pairs: Sequence[str], config: Path | None, adapter: str) -> dict[str, Any]:
    """Adapter options: the ``[adapter]`` table of a TOML file, then ``-o key=value`` pairs."""
    from .._adapter_options import load_adapter_options

    options: dict[str, Any] = {}
    if config is not None:
        try:
            options.update(load_adapter_options(config).get(adapter, {}))
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc), param_hint="--config") from exc
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="-o")
        options[name.strip()] = value
    return options
