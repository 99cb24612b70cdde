"""``sds-plugins demo``: the embedded sandbox, real lookups, resilience, and envelopes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from .._auth import SignedJwtAuth
from .._client import SdsClient
from .._engine import Router
from .._exceptions import InvalidInputError, SdsPluginsError
from .._plugins import PluginHost
from .._retrying import RetryPolicy
from .._settings import Settings
from ..hookspecs import hookimpl

__all__ = ["run_demo"]

PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
GPC = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
GP2GP = "urn:nhs:names:services:gp2gp:COPC_IN000001UK01"


#: The adapters whose example options ``examples/consumer.toml`` holds (a test keeps the file
#: and the adapters' examples the same): the demo shows the shell command that routes with it.
CONSUMER_TOML = "examples/consumer.toml"
CONSUMER_TOML_ADAPTERS = frozenset({"gpconnect", "example-ebxml"})


def shell_route(name: str, example: dict[str, Any]) -> str:
    """The ``sds-plugins route`` command that routes ``example`` with the example consumer
    file (the options not in the file's table stay on the command line)."""
    words = [f"sds-plugins route {name}", f"--org {example['org']}"]
    if "encounter" in example:
        words.append(f"--encounter {example['encounter']}")
    words.append(f"--interaction {example['interaction']}")
    words.append(f"--config {CONSUMER_TOML}")
    return " \\\n      ".join(words)


DEMO_CLIENT_ID = "sds-plugins-demo"
DEMO_KID = "sds-plugins-demo-1"
#: Directory sources that get the demo's signed-JWT credentials (PDS, and e-RS's bearer-token
#: source): the sandbox's PDS takes a bearer token, as the live one does.
DEMO_JWT_SOURCES = frozenset({"ers", "pds"})


class _DemoCredentials:
    """Signed-JWT auth against the embedded sandbox, for adapters whose requests need a token.

    The sandbox's ``/oauth2/token`` trusts the demo's throwaway key (``jwks=``), so envelopes
    carry real tokens without any configuration.
    """

    def __init__(self, key: rsa.RSAPrivateKey, token_url: str) -> None:
        self._key = key
        self._token_url = token_url

    @hookimpl
    def sds_provide_auth(self, source: str, settings: Settings) -> httpx.Auth | None:
        if source not in DEMO_JWT_SOURCES:
            return None
        return SignedJwtAuth(
            client_id=DEMO_CLIENT_ID, private_key=self._key, kid=DEMO_KID, token_url=self._token_url
        )


def _demo_jwks(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": DEMO_KID, "use": "sig", "alg": "RS512"})
    return {"keys": [jwk]}


def run_demo(console: Console | None = None) -> None:
    from ..sandbox import Sandbox, SandboxConfig

    console = console or Console()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # The default data: NHS England's reference records plus the project's additions (B82617's
    # accredited system, so a GP Connect route resolves a provider ASID).
    with Sandbox(SandboxConfig(synthetic=200, jwks=_demo_jwks(key))) as sandbox:
        console.print(
            Panel.fit(
                f"Embedded SDS sandbox listening on [bold]{sandbox.url}[/]\n"
                f"FHIR base: {sandbox.base_url}\n"
                "Data: NHS England's reference directory records, B82617's accredited system\n"
                "and 200 synthetic GP practices",
                title="sds-plugins demo",
            )
        )
        asyncio.run(_lookups(console, sandbox.base_url))
        asyncio.run(_resilience(console, sandbox))
        asyncio.run(_engine(console, sandbox, _DemoCredentials(key, sandbox.token_url)))
        asyncio.run(_patients(console, sandbox, _DemoCredentials(key, sandbox.token_url)))
    _adapter_demos(console)


async def _patients(console: Console, sandbox: Any, credentials: _DemoCredentials) -> None:
    """A GP Connect request "to the patient's GP": NHS number → PDS → practice → envelope."""
    from ..sandbox import SANDBOX_PATIENTS

    sandbox.reset()
    async with Router(Settings(base_url=sandbox.base_url), plugins=[credentials]) as router:
        adapter = router.adapters.get("gpconnect")
        if adapter is None or not adapter.example:
            return
        example = {k: v for k, v in adapter.example.items() if k != "org"}
        envelope = await router.route("gpconnect", patient=SANDBOX_PATIENTS["gpconnect"], **example)
        pds = envelope.provenance.records[0].model_dump(mode="json")
        console.print(
            Panel.fit(
                f"patient {pds['patient']} (the NHS number is never shown or logged)\n"
                f"  PDS: registered at {pds['practice']} since {pds['registration_start']}\n"
                f"  GP Connect: {envelope.request.method} {envelope.request.url}\n"
                f"  to ASID {envelope.target.asid}; lookups: "
                + ", ".join(key.split("?")[0] for key in envelope.provenance.lookups),
                title="to the patient's GP (PDS, then SDS)",
            )
        )
        for case in ("superseded", "restricted", "ended", "deceased"):
            try:
                moved = await router.route("gpconnect", patient=SANDBOX_PATIENTS[case], **example)
                console.print(
                    f"  {case}: routed to {moved.target.ods_code}, flagged superseded; the "
                    "sender gets the current NHS number (envelope.current_nhs_number)"
                )
            except SdsPluginsError as exc:
                console.print(f"  {case}: [yellow]{type(exc).__name__}[/] {exc.args[0]}")
        console.print(f"  requests: {dict(sandbox.stats()['requests'])}\n")
    await _patient_through_serve(console, sandbox, credentials)


async def _patient_through_serve(
    console: Console, sandbox: Any, credentials: _DemoCredentials
) -> None:
    """The same, as a non-Python engine asks it: ``POST /route/{adapter}`` with a patient."""
    try:
        from .._service._app import create_service_app
        from ..sandbox import SANDBOX_PATIENTS, AppServer
    except ImportError:  # pragma: no cover - serve needs the web stack (the sandbox has it)
        return
    router = Router(Settings(base_url=sandbox.base_url), plugins=[credentials])
    if not router.host.pm.has_plugin("example_ebxml"):  # the example adapter is not installed
        return
    app = create_service_app(router)
    body = {"patient": SANDBOX_PATIENTS["spine"], "interaction": PSIS}
    with AppServer(app, lifespan=True) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.post("/route/example-ebxml", json=body)
    shown = response.json()
    where = shown.get("target", {}).get("ods_code") or shown.get("detail")
    console.print(
        Panel.fit(
            "$ curl -X POST {serve}/route/example-ebxml -H 'Content-Type: application/json' \\\n"
            '    -d \'{"patient": "<NHS number>", "interaction": "...:REPC_IN150016UK05"}\'\n'
            f"  {response.status_code}: routed to {where}; provenance starts with "
            f"{shown.get('provenance', {}).get('lookups', ['?'])[0]}",
            title="a patient through sds-plugins serve",
        )
    )


def _adapter_demos(console: Console) -> None:
    """Demos of adapters that need more than the SDS sandbox (MESH needs a mesh-sandbox): what
    the installed plugins register through ``sds_register_demos``."""
    demos: list[tuple[str, Callable[[Console], None]]] = []
    PluginHost().register_demos(lambda name, show: demos.append((name, show)))
    for name, show in demos:
        try:
            show(console)
        except Exception as exc:  # one adapter's demo must not end the others'
            console.print(f"[red]demo {name} failed:[/] {type(exc).__name__}: {exc}")


async def _lookups(console: Console, base_url: str) -> None:
    async with SdsClient(base_url) as client:
        devices = await client.devices(org="YES", interaction=PSIS)
        table = Table(title=f"/Device  org=YES  interaction={PSIS}")
        for column in ("asid", "party_key", "ods_code", "manufacturer_ods", "interactions"):
            table.add_column(column)
        for device in devices.records:
            table.add_row(
                device.asid,
                device.party_key,
                device.ods_code,
                device.manufacturer_ods,
                f"{len(device.interactions)} interactions",
            )
        console.print(table)
        console.print(f"  correlation id {devices.correlation_id}, {devices.attempts} request\n")

        endpoints = await client.endpoints(org="B82617", interaction=GPC)
        rewritten = await client.endpoints(org="X26", interaction=GP2GP)
        table = Table(title="/Endpoint lookups")
        for column in ("query", "address", "party_key", "cpa_id", "reliability"):
            table.add_column(column, overflow="fold")
        for label, result in (
            ("B82617 GP Connect", endpoints),
            ("X26 gp2gp (forward-reliable)", rewritten),
        ):
            for endpoint in result.records:
                reliability = endpoint.reliability
                table.add_row(
                    label,
                    endpoint.address,
                    endpoint.party_key,
                    endpoint.cpa_id,
                    (
                        f"retries={reliability.retries} interval={reliability.retry_interval_s}s "
                        f"persist={reliability.persist_duration_s}s"
                        if reliability
                        else "-"
                    ),
                )
        console.print(table)
        console.print(
            "  forward-reliable interactions are answered with Spine's intermediary address;"
            " the party keys stay the recipient's.\n"
        )
        try:
            await client.endpoints(org="B82617\r\nX-Injected: 1", interaction=GPC)
        except InvalidInputError as exc:
            console.print(f"[yellow]refused before sending:[/] {exc}\n")


async def _resilience(console: Console, sandbox: Any) -> None:
    sandbox.reset()
    sandbox.set_faults(error_rate=0.5, error_status=503)
    retry = RetryPolicy(attempts=8, backoff_s=0.01, max_backoff_s=0.05)
    async with SdsClient(sandbox.base_url, retry=retry) as client:
        results = await asyncio.gather(
            *(client.devices(org="YES", interaction=PSIS) for _ in range(20))
        )
    stats = sandbox.stats()
    sandbox.reset()
    console.print(
        Panel.fit(
            f"20 lookups with half of all answers failing (503): "
            f"{sum(1 for r in results if r.records)} succeeded after "
            f"{sum(r.attempts for r in results)} attempts (exponential backoff with jitter).\n"
            f"Sandbox saw: {json.dumps(stats['statuses'])}",
            title="retries",
        )
    )


def _printable(envelope: Any) -> dict[str, Any]:
    """The envelope as a sender sees it, minus the bulky provenance records."""
    data: dict[str, Any] = envelope.model_dump(mode="json")
    provenance = data.pop("provenance")
    data["provenance"] = {
        "correlation_id": provenance["correlation_id"],
        "cache": provenance["cache"],
        "records": f"{len(provenance['records'])} directory records",
    }
    return data


async def _engine(console: Console, sandbox: Any, credentials: _DemoCredentials) -> None:
    settings = Settings(base_url=sandbox.base_url, cache_ttl_s=0.5, stale_if_error_s=600)
    async with Router(settings, plugins=[credentials]) as router:
        adapters = sorted(router.adapters.items())
    if not adapters:
        console.print("No adapters installed yet (see docs/writing-an-adapter.md).")
        return
    # Serving stale during the staged outage logs a warning; the demo says so itself.
    logging.getLogger("sds_plugins.cache").setLevel(logging.ERROR)
    for name, adapter in adapters:
        example = dict(adapter.example or {})
        if not example:
            continue  # no sample route (an adapter may demo itself; see _adapter_demos)
        sandbox.reset()
        # A router per adapter, so one adapter's staged outage does not colour the next.
        async with Router(settings, plugins=[credentials]) as router:
            started = time.perf_counter()
            try:
                envelopes = await asyncio.gather(
                    *(router.route(name, **example) for _ in range(100))
                )
            except SdsPluginsError as exc:
                console.print(f"[red]adapter {name} failed:[/] {exc}\n")
                continue
            elapsed = time.perf_counter() - started
            requests = sum(sandbox.stats()["requests"].values())
            console.print(
                Panel(
                    json.dumps(_printable(envelopes[0]), indent=2),
                    title=f"envelope from adapter '{name}' (credentials masked)",
                )
            )
            console.print(
                f"  100 concurrent routes in {elapsed * 1000:.0f} ms made {requests} directory "
                "request(s): identical lookups share one request."
            )
            if name in CONSUMER_TOML_ADAPTERS:
                console.print(
                    "  the same from a checkout's shell (SDS_BASE_URL: the sandbox):\n    $ "
                    + shell_route(name, example),
                    markup=False,
                    highlight=False,
                    soft_wrap=True,  # a command to copy: never wrapped mid-word
                )
            await asyncio.sleep(0.6)  # let the cache entries go stale...
            sandbox.set_faults(outage=True)
            try:
                stale = await router.route(name, **example)
                console.print(
                    "  ...then a directory outage: still routed, provenance.cache = "
                    f"[bold]{stale.provenance.cache}[/]\n"
                )
            except SdsPluginsError as exc:
                console.print(f"  ...then a directory outage: {exc}\n")
            sandbox.reset()
