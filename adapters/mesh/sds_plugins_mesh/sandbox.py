"""NHS England's mesh-sandbox, served over real sockets from a background thread.

For tests and demos (``pip install 'sds-plugins-mesh[sandbox]'``)::

    with MeshSandbox() as sandbox:
        router = Router(plugins=[MeshPlugin(sandbox.settings(mailbox="X26ABC1"))], ...)

What it serves is mesh-sandbox's own API (``mesh_sandbox.api:app``, unchanged) with:

- an in-memory store whose mailboxes and workflows are the reference data packaged here
  (``sds_plugins_mesh/data``, copies of the sandbox mailboxes X26ABC1/2/3 and their workflows).
  mesh-sandbox reads ``mailboxes.jsonl``/``workflows.jsonl`` from its *own* package folder
  (``MAILBOXES_DATA_DIR`` only locates stored messages), so the store is handed over through
  FastAPI's dependency overrides instead of environment variables;
- full NHSMESH token checking with this sandbox's ``shared_key``;
- the two token rules real MESH applies and mesh-sandbox 1.0.x does not: a token is single use
  (a replayed mailbox/nonce/count is refused with 403 "Error Duplicated Authentication Token",
  mesh-sandbox's own message for it), and its timestamp must be within two hours of the clock.

mesh-sandbox's app and its dependency functions are module globals, so one process runs one
:class:`MeshSandbox` at a time; starting a second raises.
"""

from __future__ import annotations

import logging
import threading
import warnings
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

# FastAPI comes with mesh-sandbox (the ``sandbox`` extra). Imported here, not in a function:
# FastAPI resolves the override's (string) annotations, ``Request`` included, in module globals.
from fastapi import Depends, Header, HTTPException, Request
from pydantic import SecretStr
from sds_plugins.sandbox import AppServer

from ._config import MeshSettings

__all__ = ["REFERENCE_DATA", "MeshSandbox"]

#: The packaged reference data: ``mailboxes.jsonl`` and ``workflows.jsonl``.
REFERENCE_DATA = Path(str(resources.files("sds_plugins_mesh") / "data"))

#: MESH accepts a token stamped up to this far from its own clock.
TOKEN_WINDOW = timedelta(hours=2)

_lock = threading.Lock()
_running: MeshSandbox | None = None


class MeshSandbox:
    """mesh-sandbox on ``http://127.0.0.1:<free port>``; ``with MeshSandbox() as sb: sb.url``."""

    def __init__(
        self,
        *,
        shared_key: str = "TestKey",
        data_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: int = logging.ERROR,
    ) -> None:
        self.shared_key = shared_key
        self.data_dir = data_dir or REFERENCE_DATA
        self._host = host
        self._port = port
        self._log_level = log_level
        self._server: AppServer | None = None
        self._url: str | None = None
        self._store: Any = None
        self._app: Any = None
        self._seen_tokens: dict[tuple[str, str, str], datetime] = {}
        self._tokens_lock = threading.Lock()
        #: Tokens refused as replays (tests and the demo read it).
        self.replays_refused = 0

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the MESH sandbox is not running")
        return self._url

    def settings(
        self,
        *,
        mailbox: str | None = None,
        password: str = "password",  # noqa: S107 - the reference mailboxes' published password
        **values: Any,
    ) -> MeshSettings:
        """:class:`MeshSettings` for this sandbox (``MESH_*`` variables ignored).

        With ``mailbox``, the sender credentials too (every reference mailbox's password is
        ``password``).
        """
        fields: dict[str, Any] = {"url": self.url, "shared_key": SecretStr(self.shared_key)}
        if mailbox is not None:
            fields.update(mailbox=mailbox, password=SecretStr(password))
        fields.update(values)
        # Explicit values for every field: nothing leaks in from the caller's environment.
        defaults = {
            name: field.get_default(call_default_factory=True)
            for name, field in MeshSettings.model_fields.items()
        }
        return MeshSettings(**{**defaults, **fields})

    def start(self) -> MeshSandbox:
        global _running
        with _lock:
            if _running is not None:
                raise RuntimeError(
                    "a MeshSandbox is already running in this process (mesh-sandbox's app is "
                    "global): reuse it"
                )
            _running = self
        try:
            self._start()
        except BaseException:
            with _lock:
                _running = None
            raise
        return self

    def _start(self) -> None:
        server = AppServer(self._configure_app(), host=self._host, port=self._port)
        try:
            server.start()
        except RuntimeError as error:
            raise RuntimeError("mesh-sandbox failed to start") from error.__cause__
        self._server = server
        self._url = server.url

    def stop(self) -> None:
        """Stop serving and undo the app's configuration; safe to call twice."""
        global _running
        if self._server is not None:
            self._server.stop()
        self._server = None
        self._url = None
        if _running is self:
            if self._app is not None:
                self._app.dependency_overrides.clear()
                self._app = None
            with _lock:
                _running = None

    def reset(self) -> None:
        """Empty every inbox and outbox (mailboxes stay); forget seen tokens."""
        if self._store is not None:
            # MemoryStore.reset() is this, behind an async signature; calling it directly works
            # from any thread, event loop or not.
            self._store.initialise()
        with self._tokens_lock:
            self._seen_tokens.clear()
        self.replays_refused = 0

    def __enter__(self) -> MeshSandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<MeshSandbox {self._url or 'stopped'}>"

    # -- the app ------------------------------------------------------------------------------

    def _configure_app(self) -> Any:
        with warnings.catch_warnings():
            # mesh-sandbox still uses FastAPI's deprecated ``example=``: one warning per header
            # at import (a UserWarning subclass), about code we do not own.
            warnings.simplefilter("ignore")
            # mesh-sandbox ships no type information: these names are Any to mypy.
            from mesh_sandbox import dependencies  # type: ignore[import-untyped]
            from mesh_sandbox.api import app  # type: ignore[import-untyped]
            from mesh_sandbox.common import EnvConfig, constants  # type: ignore[import-untyped]
            from mesh_sandbox.common.messaging import (  # type: ignore[import-untyped]
                Messaging,
                try_parse_authorisation_token,
            )
            from mesh_sandbox.store.memory_store import (  # type: ignore[import-untyped]
                MemoryStore,
            )

        # mesh-sandbox configures its logger at DEBUG on import; a request log line per call
        # would drown a demo's output.
        logging.getLogger("mesh-sandbox").setLevel(self._log_level)

        config = EnvConfig()
        config.env, config.store_mode, config.auth_mode = "local", "memory", "full"
        config.shared_key = self.shared_key
        data_dir = str(self.data_dir)

        class ReferenceStore(MemoryStore):  # type: ignore[misc]
            """The memory store, loading mailboxes and workflows from our reference data."""

            def initialise(self) -> None:
                self._canned_data_dir = data_dir
                super().initialise()

        store = ReferenceStore(config, logging.getLogger("mesh-sandbox"))
        if not store.mailboxes:
            raise RuntimeError(f"mesh-sandbox loaded no mailboxes from {data_dir}")
        self._store = store
        messaging = Messaging(store=store)
        sandbox = self

        async def single_use_token(
            request: Request,
            mailbox_id: str = Depends(dependencies.normalise_mailbox_id_path),
            authorization: str = Header(default=""),
        ) -> None:
            # mesh-sandbox's own check first (format, mailbox match, HMAC)...
            request.state.authorised_mailbox = await messaging.authorise_mailbox(
                mailbox_id, authorization
            )
            # ...then what real MESH adds: the clock window and single use.
            parts = try_parse_authorisation_token(authorization)
            assert parts is not None  # authorise_mailbox refused anything unparseable
            try:
                stamped = datetime.strptime(parts.timestamp, "%Y%m%d%H%M").replace(tzinfo=UTC)
            except ValueError:
                raise HTTPException(403, constants.ERROR_INVALID_AUTH_TOKEN) from None
            now = datetime.now(UTC)
            if abs(now - stamped) > TOKEN_WINDOW:
                raise HTTPException(403, constants.ERROR_INVALID_AUTH_TOKEN)
            key = (parts.mailbox_id.upper(), parts.nonce, parts.nonce_count)
            with sandbox._tokens_lock:
                for seen, at in list(sandbox._seen_tokens.items()):
                    if now - at > TOKEN_WINDOW:  # outside the window it is refused anyway
                        del sandbox._seen_tokens[seen]
                if key in sandbox._seen_tokens:
                    sandbox.replays_refused += 1
                    raise HTTPException(403, constants.ERROR_DUPLICATED_AUTH_TOKEN)
                sandbox._seen_tokens[key] = now

        app.dependency_overrides[dependencies.get_messaging] = lambda: messaging
        app.dependency_overrides[dependencies.get_env_config] = lambda: config
        app.dependency_overrides[dependencies.authorised_mailbox] = single_use_token
        self._app = app
        return app
