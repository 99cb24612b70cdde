"""What the Redis cache keeps and runs in Redis: the entry and outcome formats, the error a
waiter is given, and the Lua scripts that change a key's entry, lock and outcome in one step.

:class:`~sds_plugins._redis._cache.RedisCache` decides when each is used (see its module);
every process of a fleet must agree on what is here, which is why a format carries a version.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Final

from .. import _exceptions
from .._cache import CacheEntry
from .._exceptions import DirectoryUnavailableError

__all__ = [
    "CLAIM",
    "FINISH",
    "OUTCOME_ERROR",
    "OUTCOME_OK",
    "RELEASE",
    "RENEW",
    "STORE",
    "TOKEN_LEN",
    "decode_entry",
    "encode_entry",
    "error_payload",
    "glob_escape",
    "waiter_error",
]

#: Entry format: version, stored_at, fresh_until, stale_until, negative, then the raw data.
#: Binary rather than JSON so ``data`` needs no base64 (entries are a few kB of FHIR JSON).
_ENTRY_HEADER: Final = struct.Struct(">BdddB")
_ENTRY_VERSION: Final = 1

TOKEN_LEN: Final = 32  # secrets.token_hex(16)
#: An outcome is the leader's token, one of these, then the encoded entry or the error payload.
OUTCOME_OK: Final = b"o"
OUTCOME_ERROR: Final = b"e"

# KEYS: lock, outcome. ARGV: token, lock ttl (ms), seen.
# ``seen`` is "*" on the first call (take the lock if free, else report the current outcome so
# the caller can remember it), else the token of the outcome present when waiting began ("" if
# none): an outcome with another token is a result produced since, and is returned (status 2)
# *before* trying the lock, so a finished fetch is never repeated by a waiter.
CLAIM = """
local outcome = redis.call('GET', KEYS[2])
if outcome and ARGV[3] ~= '*' and string.sub(outcome, 1, 32) ~= ARGV[3] then
  return {2, outcome}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, false}
end
return {0, outcome}
"""

# KEYS: entry, lock, outcome. ARGV: token, status, payload, entry ttl (ms), outcome ttl (ms),
# channel. One script, so the outcome is visible before (never after) the lock disappears.
FINISH = """
if ARGV[2] == 'o' then
  if tonumber(ARGV[4]) > 0 then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  else
    redis.call('DEL', KEYS[1])
  end
end
redis.call('SET', KEYS[3], ARGV[1] .. ARGV[2] .. ARGV[3], 'PX', ARGV[5])
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', ARGV[6], ARGV[1])
return 1
"""

# KEYS: entry. ARGV: value (empty: delete), ttl (ms), channel, writer. Store (or delete) and
# tell every process's near cache, in one step (the writer knows its own change).
STORE = """
if ARGV[1] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# KEYS: lock. ARGV: token, ttl (ms). Extend our lock while the fetch is still running.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lock. ARGV: token, channel. Give the lock up (cancelled leader); waiters take over.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[1])
  return 1
end
return 0
"""


def glob_escape(text: str) -> str:
    """Escape ``text`` for a Redis MATCH / PSUBSCRIBE pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def encode_entry(entry: CacheEntry) -> bytes:
    header = _ENTRY_HEADER.pack(
        _ENTRY_VERSION, entry.stored_at, entry.fresh_until, entry.stale_until, entry.negative
    )
    return header + entry.data


def decode_entry(raw: bytes) -> CacheEntry | None:
    """``None`` for anything unreadable (another version, corruption): treated as a miss."""
    if len(raw) < _ENTRY_HEADER.size:
        return None
    version, stored_at, fresh_until, stale_until, negative = _ENTRY_HEADER.unpack_from(raw)
    if version != _ENTRY_VERSION:
        return None
    return CacheEntry(
        data=raw[_ENTRY_HEADER.size :],
        stored_at=stored_at,
        fresh_until=fresh_until,
        stale_until=stale_until,
        negative=bool(negative),
    )


def error_payload(exc: Exception) -> bytes:
    """What waiters need to raise an equivalent error (no headers, no secrets: see errors)."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return json.dumps(
        {
            "error": type(exc).__name__,
            "message": message,
            "status_code": getattr(exc, "status_code", None),
            "spine_code": getattr(exc, "spine_code", None),
            "diagnostics": getattr(exc, "diagnostics", None),
            "retry_after_s": getattr(exc, "retry_after_s", None),
        },
        separators=(",", ":"),
    ).encode()


def waiter_error(payload: bytes, key: str) -> Exception:
    """The leader's failure, as raised to a waiter.

    Directory errors keep their class (a waiter sees the same ``RateLimitedError``,
    ``AuthenticationError``... its own fetch would most likely have got); anything else (a bug,
    an unexpected exception) becomes a :class:`DirectoryUnavailableError`. ``attempts`` is 0:
    this process sent nothing.
    """
    try:
        info: dict[str, Any] = json.loads(payload)
    except ValueError:
        info = {"error": "Exception", "message": "unreadable error"}
    name = str(info.get("error"))
    message = f"{info.get('message')} (lookup shared with another process)"
    kwargs: dict[str, Any] = {
        "status_code": info.get("status_code"),
        "spine_code": info.get("spine_code"),
        "diagnostics": info.get("diagnostics"),
        "attempts": 0,
    }
    cls = getattr(_exceptions, name, None)
    if isinstance(cls, type) and issubclass(cls, _exceptions.DirectoryError):
        if issubclass(cls, DirectoryUnavailableError):
            kwargs["retry_after_s"] = info.get("retry_after_s")
        try:
            error: Exception = cls(message, **kwargs)
        except TypeError:  # a subclass with another constructor
            error = DirectoryUnavailableError(message, **kwargs)
        return error
    return DirectoryUnavailableError(
        f"another process's lookup of {key} failed: {name}: {info.get('message')}", **kwargs
    )
