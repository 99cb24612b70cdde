"""The CLI's sandbox commands, ``sandbox`` and ``demo``. The sandbox is the ``sandbox`` extra:
it is imported only when one of them runs, so the other commands work without it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .._exceptions import ConfigurationError, SdsPluginsError
from ._cli_common import _fail

__all__ = ["demo", "sandbox"]


def _need_sandbox() -> None:
    """The sandbox is the ``sandbox`` extra: without it, one line naming what to install."""
    try:
        import sds_plugins._sandbox  # noqa: F401
    except ModuleNotFoundError as exc:
        _fail(ConfigurationError(str(exc)))


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9000, show_default=True, type=int)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder with mhs-records.json and accredited-system-records.json.",
)
@click.option(
    "--spine-core-ods",
    default="YES",
    show_default=True,
    help="ODS code of Spine's own MHS records (intermediary address rewrite).",
)
@click.option(
    "--latency-ms",
    default=0.0,
    type=click.FloatRange(0, 60_000),
    help="Delay every answer (milliseconds, up to 60,000).",
)
@click.option(
    "--error-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Fraction of requests answered with an error.",
)
@click.option(
    "--ldap-timeout",
    is_flag=True,
    help="Every /Device and /Endpoint search times out in LDAP: after --ldap-timeout-ms it "
    "answers 200 with no records, as NHS's server does.",
)
@click.option(
    "--ldap-timeout-ms",
    default=3000.0,
    show_default=True,
    type=click.FloatRange(0, 60_000),
    help="How long a timed-out LDAP search waits (NHS's server: 3 s).",
)
@click.option(
    "--gateway",
    "live_gateway",
    is_flag=True,
    help="Put the live proxy's policies in front: --spike-arrest 40 --quota 2400 "
    "--response-cache 1800, the policies' own values (each may still be set on its own; the "
    "standard product's limits are --spike-arrest 5 --quota 300).",
)
@click.option(
    "--spike-arrest",
    type=click.FloatRange(min=0, min_open=True, max=100_000),
    help="Gateway spike arrest, requests per second, smoothed like Apigee's (40 → one per "
    "25 ms; a request sooner after the last accepted one gets 429).",
)
@click.option(
    "--quota",
    type=click.IntRange(min=1, max=10**9),
    help="Gateway quota: requests per calendar minute before 429.",
)
@click.option(
    "--response-cache",
    type=click.FloatRange(min=0, min_open=True, max=86_400),
    help="Gateway response cache lifetime in seconds ('Cache-Control: no-cache' skips it).",
)
@click.option("--page-size", type=click.IntRange(min=1), help="Page answers (Bundle next links).")
@click.option(
    "--api-key",
    help="Require this 'apikey' header on SDS requests (SDS takes no bearer token; "
    "/oauth2/token still issues them, for PDS).",
)
@click.option(
    "--jwks",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JWKS file: verify signed-JWT client assertions at /oauth2/token.",
)
@click.option(
    "--synthetic", default=0, type=click.IntRange(min=0), help="Add N generated GP practices."
)
def sandbox(
    host: str,
    port: int,
    data_dir: Path | None,
    spine_core_ods: str,
    latency_ms: float,
    error_rate: float,
    ldap_timeout: bool,
    ldap_timeout_ms: float,
    live_gateway: bool,
    spike_arrest: float | None,
    quota: int | None,
    response_cache: float | None,
    page_size: int | None,
    api_key: str | None,
    jwks: Path | None,
    synthetic: int,
) -> None:
    """Run a local SDS FHIR API that behaves like NHS England's."""
    _need_sandbox()
    from .._sandbox._config import (
        LIVE_QUOTA_PER_MIN,
        LIVE_RESPONSE_CACHE_S,
        LIVE_SPIKE_ARREST_PER_S,
    )
    from ..sandbox import SandboxConfig, serve

    jwks_doc: dict[str, Any] | None = None
    if jwks is not None:
        try:
            jwks_doc = json.loads(jwks.read_text())
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"cannot read JWKS: {exc}", param_hint="--jwks") from exc
    gateway: dict[str, Any] = {}
    if live_gateway:
        gateway = {
            "spike_arrest_per_s": LIVE_SPIKE_ARREST_PER_S,
            "quota_per_min": LIVE_QUOTA_PER_MIN,
            "response_cache_s": LIVE_RESPONSE_CACHE_S,
        }
    for name, value in (
        ("spike_arrest_per_s", spike_arrest),
        ("quota_per_min", quota),
        ("response_cache_s", response_cache),
    ):
        if value is not None:
            gateway[name] = value
    config = SandboxConfig(
        data_dir=data_dir,
        spine_core_ods=spine_core_ods,
        latency_ms=latency_ms,
        error_rate=error_rate,
        ldap_timeout=ldap_timeout,
        ldap_timeout_ms=ldap_timeout_ms,
        page_size=page_size,
        **gateway,
        api_key=api_key,
        jwks=jwks_doc,
        synthetic=synthetic,
    )
    try:
        serve(config, host=host, port=port)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        click.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        sys.exit(2)


@click.command()
def demo() -> None:
    """Start the embedded sandbox and show real lookups against it."""
    _need_sandbox()
    from ._demo import run_demo

    try:
        run_demo()
    except SdsPluginsError as exc:
        _fail(exc)
