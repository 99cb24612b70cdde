"""The ``sds-plugins`` command line.

Exit codes (stable, for scripts; ``--help`` lists them): 0 success; 1 unexpected failure or
a failed doctor check; 2 invalid input or configuration (nothing sent); 3 no matching records;
4 ambiguous; 5 directory unavailable or failing (5xx, timeout, unreachable, malformed body,
request refused); 6 authentication refused; 7 vetoed by a plugin.

This module holds the group, the lookup and routing commands and the entry point; what the
commands share is in ``_cli_common.py``, the sandbox's commands in ``_cli_sandbox.py``, and
``serve`` and ``worker`` in their own subpackages.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from .._client import LookupResult, SdsClient
from .._exceptions import InvalidInputError, SdsPluginsError
from .._validation import normalise_interaction
from ._cli_common import (
    _api_key_option,
    _base_url_option,
    _fail,
    _options,
    _print_records,
    _run,
    _settings,
    _with_connection,
    _with_connection_settings,
)
from ._cli_sandbox import demo, sandbox

__all__ = ["cli", "main"]


def _set_verbosity(ctx: click.Context, verbose: int) -> None:
    """-v before or after the subcommand: the counts add up (-v info, -vv debug)."""
    root = ctx.find_root()
    total = root.meta.get("sds_plugins.verbose", 0) + verbose
    root.meta["sds_plugins.verbose"] = total
    logging.getLogger().setLevel(logging.WARNING - 10 * min(total, 2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-v", "--verbose", count=True, help="Log more (-v info, -vv debug); also after a command."
)
@click.version_option(package_name="sds-plugins")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Find where to send NHS messages: SDS lookups, routing envelopes, a local SDS sandbox,
    an HTTP routing service and a broker worker.

    \b
    Exit codes (stable, for scripts):
      0  success
      1  unexpected failure, a doctor check failed, or the broker was lost
      2  invalid input or configuration (nothing sent), or a busy port
      3  no matching records
      4  ambiguous: several candidates (pass a party_key option)
      5  directory unavailable or failing (5xx, timeout, unreachable, malformed, refused)
      6  directory refused the credentials
      7  a plugin vetoed the envelope
    """
    if not logging.getLogger().handlers:  # else logging is configured already: leave it be
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        # This format shows no thread or process: not collecting them for every record is the
        # logging module's own optimisation (the worker logs a line per request).
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    _set_verbosity(ctx, verbose)


@cli.command()
@click.option("--org", required=True, help="ODS code of the organisation.")
@click.option("--interaction", required=True, help="Interaction id (urn:nhs:names:services:...).")
@click.option("--party-key", help="Only the system with this MHS party key.")
@click.option("--manufacturer", help="Only systems made by this supplier (ODS code).")
@_with_connection
def device(
    org: str,
    interaction: str,
    party_key: str | None,
    manufacturer: str | None,
    base_url: str | None,
    api_key: str | None,
    correlation_id: str | None,
    no_cache: bool,
) -> None:
    """Accredited systems (SDS /Device): ASIDs and party keys."""
    settings = _settings(base_url, api_key)

    async def lookup() -> LookupResult[Any]:
        async with SdsClient.from_settings(settings) as client:
            return await client.devices(
                org=org,
                interaction=interaction,
                party_key=party_key,
                manufacturer=manufacturer,
                correlation_id=correlation_id,
                no_cache=no_cache,
            )

    _print_records(_run(lookup))


@cli.command()
@click.option("--org", help="ODS code of the organisation.")
@click.option("--interaction", help="Interaction id (urn:nhs:names:services:...).")
@click.option("--party-key", help="MHS party key.")
@_with_connection
def endpoint(
    org: str | None,
    interaction: str | None,
    party_key: str | None,
    base_url: str | None,
    api_key: str | None,
    correlation_id: str | None,
    no_cache: bool,
) -> None:
    """Message handling endpoints (SDS /Endpoint): address, party key, CPA id, reliability."""
    settings = _settings(base_url, api_key)

    async def lookup() -> LookupResult[Any]:
        async with SdsClient.from_settings(settings) as client:
            return await client.endpoints(
                org=org,
                interaction=interaction,
                party_key=party_key,
                correlation_id=correlation_id,
                no_cache=no_cache,
            )

    result = _run(lookup)
    records: list[Any] = list(result.records)
    if interaction is not None:
        # An MHS record serves many interactions and the record keeps the first it lists;
        # every record the directory answered a query for an interaction with serves that one,
        # which is what the person asked about (normalised as it was sent).
        queried = normalise_interaction(interaction)
        records = [record.model_copy(update={"interaction": queried}) for record in records]
    _print_records(result, records)


@cli.command()
@click.argument("adapter")
@click.option("--org", help="ODS code of the target organisation.")
@click.option(
    "--patient",
    metavar="NHS_NUMBER",
    help="Route to this patient's registered GP practice (looked up in PDS) instead of --org.",
)
@click.option("--interaction", required=True, help="Interaction id (or MESH workflow id).")
@click.option(
    "-o",
    "--option",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Adapter option (repeatable).",
)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file; the [ADAPTER] table holds options.",
)
@click.option("--encounter", help="Cache scope for adapters that require one (GP Connect).")
@click.option(
    "--bypass-cache",
    is_flag=True,
    help="Look up afresh, past our cache and the API gateway's (Cache-Control: no-cache), "
    "and refresh ours.",
)
@click.option(
    "--with-secrets",
    is_flag=True,
    help="Print credentials in headers too (for piping to a sender).",
)
@_base_url_option
@_api_key_option
@click.option("--correlation-id", help="UUID for X-Correlation-ID and the envelope.")
def route(
    adapter: str,
    org: str | None,
    patient: str | None,
    interaction: str,
    pairs: tuple[str, ...],
    config: Path | None,
    encounter: str | None,
    bypass_cache: bool,
    with_secrets: bool,
    base_url: str | None,
    api_key: str | None,
    correlation_id: str | None,
) -> None:
    """Resolve a ready-to-send routing envelope and print it as JSON."""
    from .._engine import Router

    if (org is None) == (patient is None):
        _fail(InvalidInputError("pass --org ODS_CODE or --patient NHS_NUMBER (one of them)"))
    options = _options(pairs, config, adapter)
    settings = _settings(base_url, api_key)

    async def resolve() -> Any:
        async with Router(settings) as router:
            return await router.route(
                adapter,
                org=org,
                patient=patient,
                interaction=interaction,
                correlation_id=correlation_id,
                encounter=encounter,
                bypass_cache=bypass_cache,
                **options,
            )

    envelope = _run(resolve)
    data = envelope.to_message() if with_secrets else envelope.model_dump(mode="json")
    click.echo(json.dumps(data, indent=2))


@cli.command()
@click.argument("nhs_number")
@click.option("--encounter", help="Cache scope: the GP Connect encounter the lookup is for.")
@_base_url_option
@_api_key_option
@click.option("--correlation-id", help="UUID for X-Correlation-ID.")
def patient(
    nhs_number: str,
    encounter: str | None,
    base_url: str | None,
    api_key: str | None,
    correlation_id: str | None,
) -> None:
    """Look a patient up in PDS and print the registered practice (the NHS number is shown
    only as its reference, as everywhere else)."""
    from .._engine import Router

    settings = _settings(base_url, api_key)

    async def resolve() -> Any:
        async with Router(settings) as router:
            scope = f"encounter:{encounter}" if encounter else ""
            return await router.patient(nhs_number, correlation_id=correlation_id, scope=scope)

    registration = _run(resolve)
    click.echo(json.dumps(registration.model_dump(mode="json"), indent=2))


@cli.command()
@click.option("--adapter", required=True)
@click.option("--interaction", required=True)
@click.option(
    "--orgs",
    "orgs_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File with one ODS code per line (# comments allowed).",
)
@click.option("-o", "--option", "pairs", multiple=True, metavar="KEY=VALUE")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--concurrency",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="Routes in flight at once (the rate limiter still applies).",
)
@_base_url_option
@_api_key_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
def prewarm(
    adapter: str,
    interaction: str,
    orgs_file: Path,
    pairs: tuple[str, ...],
    config: Path | None,
    concurrency: int,
    base_url: str | None,
    api_key: str | None,
    quiet: bool,
) -> None:
    """Resolve many organisations into the shared cache; print a JSON summary.

    Needs a cache that outlives the command (SDS_REDIS_URL). Requests are paced below the API
    gateway's limits, fleet-wide through Redis. Exit status: 0 every organisation resolved or
    was definitively not found or ambiguous; 5 some failed for directory reasons (listed with
    their correlation ids); 2 invalid codes in the file or a prewarm that would warm nothing.
    """
    from ._prewarm import prewarm as run_prewarm

    orgs = [
        line.split("#", 1)[0].strip()
        for line in orgs_file.read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]
    options = _options(pairs, config, adapter)
    settings = _settings(base_url, api_key)
    summary = _run(
        lambda: run_prewarm(
            settings,
            adapter=adapter,
            interaction=interaction,
            orgs=orgs,
            options=options,
            concurrency=concurrency,
            progress=not quiet,
        )
    )
    click.echo(json.dumps(summary, indent=2))
    sys.exit(summary["exit_code"])


@cli.command()
def plugins() -> None:
    """List installed plugins (name, distribution, version, hooks, status) as JSON.

    A plugin that could not be loaded is listed with ``"status": "failed"``, its error and the
    ``SDS_PLUGINS_DISABLE=...`` line that stops loading it; the others load without it.
    """
    from .._plugins import PluginHost

    try:
        host = PluginHost()
    except SdsPluginsError as exc:
        _fail(exc)
    listed: list[dict[str, Any]] = [{**plugin, "status": "loaded"} for plugin in host.plugins()]
    listed += [{**failure.as_json(), "hooks": []} for failure in host.failed.values()]
    click.echo(json.dumps(listed, indent=2))


@cli.command()
def adapters() -> None:
    """List the installed adapters and their options as JSON (as GET /adapters does)."""
    from .._engine import Router
    from .._service._catalogue import describe_adapters

    settings = _settings(None, None)

    async def listing() -> list[dict[str, Any]]:
        async with Router(settings) as router:  # starting asks the plugins; no network I/O
            return describe_adapters(router)

    click.echo(json.dumps({"adapters": _run(listing)}, indent=2))


@cli.command()
@_with_connection_settings
def doctor(base_url: str | None, api_key: str | None) -> None:
    """Show the effective configuration (secrets hidden), the plugins and adapters that
    loaded, and check live: the directory answers, the credentials are accepted (a token is
    obtained), Redis answers, the clock agrees with the directory's. One line per check.

    Exit status: 0 every check passed; 1 at least one failed; 2 invalid configuration.
    """
    from ._doctor import run_doctor

    settings = _settings(base_url, api_key)
    lines, checks = _run(lambda: run_doctor(settings))
    click.echo("configuration:")
    for line in lines:
        click.echo(line)
    for check in checks:
        click.echo(check.line())
    failed = [check.name for check in checks if not check.ok]
    if failed:
        click.echo(f"error: {len(failed)} check(s) failed: {', '.join(failed)}", err=True)
        sys.exit(1)


# The sandbox's commands, the routing service and the worker live apart; they join the group
# here.
from .._service._command import serve  # noqa: E402
from .._worker._command import worker  # noqa: E402

cli.add_command(sandbox)
cli.add_command(demo)
cli.add_command(worker)
cli.add_command(serve)


def _verbose_after_command(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        _set_verbosity(ctx, value)


# Every command also takes -v after its name (`sds-plugins route ... -v`), as users type it.
for _command in cli.commands.values():
    _command.params.append(
        click.Option(
            ["-v", "--verbose"],
            count=True,
            expose_value=False,
            callback=_verbose_after_command,
            help="Log more (-v info, -vv debug).",
        )
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="sds-plugins")
