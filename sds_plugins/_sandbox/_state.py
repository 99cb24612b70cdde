"""A running sandbox's state, shared by its parts and cleared by ``/_sandbox/reset``."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import jwt

from ._config import SandboxConfig, _Faults
from ._gateway import Gateway
from ._records import Directory


@dataclass
class _State:
    config: SandboxConfig
    directory: Directory
    keys: dict[str, jwt.PyJWK]
    intermediaries: dict[str, tuple[str | None, str | None]]
    faults: _Faults
    rng: random.Random
    gateway: Gateway
    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    tokens: dict[str, float] = field(default_factory=dict)
    seen_jti: dict[str, float] = field(default_factory=dict)
    message_counter: int = 0
    #: Searches the ldap_timeout fault has held (counted when the wait starts).
    ldap_timeouts: int = 0

    def reset(self) -> None:
        self.faults = _Faults.from_config(self.config)
        self.rng = random.Random(self.config.seed)  # noqa: S311 - repeatable faults, not crypto
        self.requests.clear()
        self.statuses.clear()
        self.ldap_timeouts = 0
        self.gateway.reset()
