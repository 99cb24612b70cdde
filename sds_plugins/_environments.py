"""Where NHS England's API platform serves each environment, and what differs between them.

The SDS base URL of each named environment, the checks a configured base URL passes, the
platform's token endpoint, and the identifiers that are not the same everywhere: Spine's own ODS
code is ``YEA`` in production and ``YES`` in every other environment (``SDS_SPINE_CORE_ODS_CODE``
in ``ecs-proxies-deploy-prod.yml`` and ``ecs-proxies-deploy-*.yml`` of
``NHSDigital/spine-directory-service-api``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from ._exceptions import ConfigurationError
from ._upstream import safe_url

__all__ = [
    "ENVIRONMENTS",
    "default_token_url",
    "environment_of",
    "is_live_platform",
    "resolve_base_url",
    "spine_core_ods",
]

#: Named environments of the SDS FHIR API (NHS England's API platform).
ENVIRONMENTS: dict[str, str] = {
    "sandbox": "https://sandbox.api.service.nhs.uk/spine-directory/FHIR/R4",
    "int": "https://int.api.service.nhs.uk/spine-directory/FHIR/R4",
    "dep": "https://dep.api.service.nhs.uk/spine-directory/FHIR/R4",
    "prod": "https://api.service.nhs.uk/spine-directory/FHIR/R4",
}

#: Longer base URLs are refused: no real one comes close, and httpx refuses absurd ones late.
_MAX_URL_LENGTH = 2048


def resolve_base_url(env_or_url: str) -> str:
    """``"int"`` → the INT base URL; an ``http(s)://`` URL is returned without a trailing slash.

    A URL is checked as it is given (ASCII, no spaces or control characters, a host, no
    ``user:password@`` part, no query or fragment), so a bad ``SDS_BASE_URL`` stops the program
    at start with :class:`ConfigurationError` rather than in the middle of a lookup.
    """
    value = env_or_url.strip() if isinstance(env_or_url, str) else ""
    if value in ENVIRONMENTS:
        return ENVIRONMENTS[value]
    shown = safe_url(value)[:100]
    if (
        not value
        or len(value) > _MAX_URL_LENGTH
        or not value.isascii()
        or any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in value)
    ):
        raise ConfigurationError(
            f"{shown!r} is neither an environment ({', '.join(ENVIRONMENTS)}) nor a base URL "
            "(ASCII, no spaces or control characters)"
        )
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        httpx.URL(value)
    except (ValueError, httpx.InvalidURL):
        parts, hostname = None, None
    if parts is None or parts.scheme not in ("http", "https") or not hostname:
        raise ConfigurationError(
            f"{shown!r} is neither an environment ({', '.join(ENVIRONMENTS)}) nor a base URL"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            f"{shown!r}: credentials in a base URL are refused (they would travel and be shown "
            "with every request); use SDS_API_KEY or signed-JWT auth"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(f"{shown!r}: a base URL has no query or fragment")
    return value.rstrip("/")


def default_token_url(base_url: str) -> str:
    """The platform's token endpoint lives at ``/oauth2/token`` on the API's host."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}/oauth2/token"


def _host(url: str) -> str:
    """A URL's host as DNS reads it: lower case, without a trailing dot."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return ""
    return host.lower().rstrip(".")


def environment_of(base_url: str) -> str | None:
    """The named environment ``base_url`` belongs to (``"int"``...), ``None`` for any other URL.

    Compared by host and path, so ``API.SERVICE.NHS.UK.``, ``:443`` or a trailing slash name
    the same place.
    """
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() != "https" or port not in (None, 443):
        return None
    place = (_host(base_url), parts.path.rstrip("/"))
    for name, known in ENVIRONMENTS.items():
        if (_host(known), urlsplit(known).path) == place:
            return name
    return None


def is_live_platform(base_url: str) -> bool:
    """Whether ``base_url`` is on one of NHS England's API platform hosts behind which every
    request must authenticate (INT, DEP, production: anything under ``api.service.nhs.uk`` but
    the open public sandbox)."""
    host = _host(base_url)
    if host == "sandbox.api.service.nhs.uk":
        return False
    return host == "api.service.nhs.uk" or host.endswith(".api.service.nhs.uk")


#: Spine's own ODS code by environment (the forward-reliable intermediary's and Spine's own
#: accredited systems' organisation).
_SPINE_CORE_ODS = {"prod": "YEA"}


def spine_core_ods(base_url: str) -> str:
    """Spine's own ODS code where ``base_url`` is: ``YEA`` in production, ``YES`` elsewhere
    (INT, DEP, the sandboxes and any local URL)."""
    return _SPINE_CORE_ODS.get(environment_of(base_url) or "", "YES")
