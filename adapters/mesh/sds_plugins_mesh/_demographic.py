"""MESH automated (demographic) routing: a ``mex-to`` that names the patient, not a mailbox.

MESH then delivers the message to the mailbox of the patient's registered GP practice: no
endpoint lookup, no ODS code. The format is GP Connect Messaging's
(``nhsconnect/gpconnect-messaging``, branches ``master`` and ``release/1.5.0`` alike,
``pages/integration/integration_mesh.md``, "MESH API")::

    <GPPROVIDER>[delimiter]<Nhs No>[delimiter]<d.o.b>[delimiter]<Surname>

"The underscore ``_`` character is used as the delimiter. Date of birth is specified in
``DDMMYYYY`` format", e.g. ``GPPROVIDER_12345678_14022001_Smith``; the ``.CTL`` example of
``pages/senddocument/senddocument_fedcon_mesh.md`` writes ``GPPROVIDER_1234567890_09011955_Smith``.
The ``GPPROVIDER`` prefix is part of the value (GPCM-SD-063 lists only the three patient
fields; the page it points to, "Message routing to registered practice", gives the prefix).
The MESH API (``NHSDigital/mesh-api-specification``, ``master``, ``specification/mesh-api.yaml``,
"Send message") allows demographic details in ``Mex-To`` "for certain workflows" without
defining them, and caps ``mex-to`` at 100 characters (mesh-sandbox's
``common/mex_headers.py`` checks the same).

These are personal data: every check here names the option and never repeats its value.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from pydantic import SecretStr
from sds_plugins import InvalidInputError, check_nhs_number

__all__ = [
    "DEMOGRAPHIC_PREFIX",
    "demographic_mex_to",
    "is_demographic_address",
    "normalise_birth_date",
    "normalise_family_name",
    "normalise_patient_number",
]

#: The first part of a demographic ``mex-to`` (``integration_mesh.md``, "MESH API").
DEMOGRAPHIC_PREFIX = "GPPROVIDER"
_DELIMITER = "_"
#: ``mex-to``'s maximum length (the MESH API and mesh-sandbox).
_MEX_TO_MAX = 100
#: What is left for the surname: prefix, 10 digits, 8 digits and three delimiters.
MAX_FAMILY_NAME = _MEX_TO_MAX - len(DEMOGRAPHIC_PREFIX) - 10 - 8 - 3
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_PARTIAL_DATE = re.compile(r"[0-9]{4}(-[0-9]{2})?")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")


def _text(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def normalise_patient_number(value: object, *, field: str = "nhs_number") -> str:
    """An NHS number (ten digits, modulus-11 check digit): :func:`sds_plugins.check_nhs_number`."""
    return check_nhs_number(_text(value), field)


def normalise_birth_date(value: object, *, field: str = "birth_date") -> date:
    """The date of birth as PDS holds it (``Patient.birthDate``, ``YYYY-MM-DD``) or a ``date``.

    A partial date (``1955`` or ``1955-01``, which FHIR allows) cannot be written as
    ``DDMMYYYY`` and is refused, as are a date and time and a date in the future.
    """
    value = _text(value)
    if isinstance(value, datetime):
        raise InvalidInputError(f"{field} must be a date, not a date and time", field=field)
    if isinstance(value, str):
        text = value.strip()
        if _PARTIAL_DATE.fullmatch(text):
            raise InvalidInputError(
                f"{field} is a partial date; MESH demographic routing needs the whole date of "
                "birth (DDMMYYYY)",
                field=field,
            )
        if not _ISO_DATE.fullmatch(text):
            raise InvalidInputError(
                f"{field} must be a date as PDS writes it (YYYY-MM-DD)", field=field
            )
        try:
            value = date.fromisoformat(text)
        except ValueError:
            raise InvalidInputError(f"{field} is not a calendar date", field=field) from None
    if not isinstance(value, date):
        raise InvalidInputError(
            f"{field} must be a date (YYYY-MM-DD), got {type(value).__name__}", field=field
        )
    # One day of slack: "today" in England may already be tomorrow in UTC.
    if value > datetime.now(UTC).date() + timedelta(days=1):
        raise InvalidInputError(f"{field} is in the future", field=field)
    return value


def normalise_family_name(value: object, *, field: str = "family_name") -> str:
    """The surname as PDS holds it, kept as it is (case included) but for outer spaces.

    It becomes part of an HTTP header, so: printable ASCII (a name PDS holds with other
    characters cannot be sent this way), no ``_`` (the delimiter), and short enough for
    ``mex-to``'s 100 characters.
    """
    value = _text(value)
    if not isinstance(value, str):
        raise InvalidInputError(
            f"{field} must be a string, got {type(value).__name__}", field=field
        )
    text = value.strip()
    if not text:
        raise InvalidInputError(f"{field} is empty", field=field)
    if not _PRINTABLE_ASCII.fullmatch(text):
        raise InvalidInputError(
            f"{field} must be printable ASCII: MESH headers carry no control characters or "
            "characters beyond ASCII",
            field=field,
        )
    if _DELIMITER in text:
        raise InvalidInputError(
            f"{field} contains '_', the delimiter of a demographic mex-to", field=field
        )
    if len(text) > MAX_FAMILY_NAME:
        raise InvalidInputError(
            f"{field} is {len(text)} characters long; a demographic mex-to leaves room for "
            f"{MAX_FAMILY_NAME}",
            field=field,
        )
    return text


def demographic_mex_to(nhs_number: object, birth_date: object, family_name: object) -> str:
    """``GPPROVIDER_<NHS number>_<DDMMYYYY>_<surname>``, each part checked as above.

    Arguments may be plain values or :class:`~pydantic.SecretStr`.
    """
    number = normalise_patient_number(nhs_number)
    born = normalise_birth_date(birth_date)
    surname = normalise_family_name(family_name)
    return _DELIMITER.join((DEMOGRAPHIC_PREFIX, number, born.strftime("%d%m%Y"), surname))


def is_demographic_address(mex_to: str) -> bool:
    """Whether ``mex-to`` is a demographic address rather than a mailbox id."""
    return mex_to.upper().startswith(DEMOGRAPHIC_PREFIX + _DELIMITER)
