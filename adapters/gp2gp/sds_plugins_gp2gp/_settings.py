"""GP2GP configuration, from arguments or ``SDS_GP2GP_*`` environment variables."""

from __future__ import annotations

from typing import ClassVar

from pydantic import ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict
from sds_plugins import ClientTlsSettings

__all__ = ["LARGE_MESSAGE_THRESHOLD", "MAX_PART_SIZE", "Gp2gpSettings", "check_threshold"]

#: Above this many bytes an EHR extract (its HL7 text) or an attachment (its base64 text) is a
#: large message, sent in fragments: NHS's GP2GP adaptor's default for both thresholds
#: (NHSDigital/integration-adaptor-gp2gp, service/src/main/resources/application.yml:
#: ``largeAttachmentThreshold`` and ``largeEhrExtractThreshold``, 4500000, "Default value for
#: Spine is ~4.5MB"). A message of exactly this size is still sent whole.
LARGE_MESSAGE_THRESHOLD = 4_500_000
#: The largest HL7 payload or attachment NHS's MHS adaptor accepts: 5,000,000 characters, "from
#: EIS section 2.5.4.2" (NHSDigital/integration-adaptor-mhs,
#: mhs/common/mhs_common/request/request_body_schema.py). A threshold may not exceed it.
MAX_PART_SIZE = 5_000_000


def check_threshold(value: int, name: str) -> int:
    """``value`` if it can be a GP2GP fragment size, else a :class:`ValueError` saying why."""
    if value <= 0 or value > MAX_PART_SIZE:
        raise ValueError(f"{name} must be between 1 and {MAX_PART_SIZE:,} bytes")
    if value % 4:
        # Fragments are slices of base64 text (as NHS's adaptor cuts them): at a multiple of
        # four characters each slice decodes on its own, to a slice of the original bytes.
        raise ValueError(f"{name} must be a multiple of 4 (fragments are slices of base64 text)")
    return value


class Gp2gpSettings(ClientTlsSettings):
    """What the ``gp2gp`` adapter needs; each field reads ``SDS_GP2GP_<FIELD>``.

    ``from_party_key`` and ``from_asid`` are this system's own MHS party key and ASID (the
    sender of every message it routes) when a route gives none. ``large_attachment_threshold``
    and ``large_extract_threshold`` are NHS's two thresholds (bytes; 4,500,000 each, multiples
    of 4). The sending MHS's Spine client certificate, key and the CA bundle that verifies
    Spine are ``SDS_GP2GP_TLS_CERT``, ``SDS_GP2GP_TLS_KEY``, ``SDS_GP2GP_TLS_CA_BUNDLE``:
    envelopes carry their paths in ``envelope.tls``, never the files' contents.
    """

    model_config = SettingsConfigDict(env_prefix="SDS_GP2GP_")
    configures: ClassVar[str] = "GP2GP"

    from_party_key: str | None = None
    from_asid: str | None = None
    large_attachment_threshold: int = LARGE_MESSAGE_THRESHOLD
    large_extract_threshold: int = LARGE_MESSAGE_THRESHOLD

    @field_validator("large_attachment_threshold", "large_extract_threshold")
    @classmethod
    def _threshold(cls, value: int, info: ValidationInfo) -> int:
        return check_threshold(value, cls.variable(info.field_name or "threshold"))
