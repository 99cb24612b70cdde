"""GP2GP's identifiers: the conversation id and the message ids, upper-case UUIDs on the wire."""

from __future__ import annotations

import re
import uuid

from sds_plugins import InvalidInputError

__all__ = ["check_uuid", "new_id"]

# The canonical 8-4-4-4-12 form only, either case: NHS's GP2GP adaptor recognises ids with
# exactly this pattern (integration-adaptor-gp2gp, RandomIdGeneratorService.UUID_REGEX), and
# uuid.UUID() alone would also take braces, "urn:uuid:" and unhyphenated hex, which Spine's
# ebXML ids never are.
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def new_id() -> str:
    """A fresh id as GP2GP sends them: a random UUID, upper case (NHS's adaptors' ``get_uuid``
    and ``createNewId`` both upper-case theirs)."""
    return str(uuid.uuid4()).upper()


def check_uuid(value: object, field: str) -> str:
    """``value`` as an upper-case UUID; anything that is not a UUID in its canonical form is
    refused with an :class:`InvalidInputError` naming ``field`` (nothing is derived from it: a
    conversation id both practices must quote cannot be one the caller never saw)."""
    if isinstance(value, uuid.UUID):
        return str(value).upper()
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        shown = repr(value) if isinstance(value, str) and len(value) <= 80 else "the value given"
        raise InvalidInputError(
            f"{field}: {shown} is not a UUID (GP2GP's ConversationId and MessageId are UUIDs, "
            "8-4-4-4-12 hexadecimal digits, sent upper case)",
            field=field,
        )
    return value.upper()
