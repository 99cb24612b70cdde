"""Spine's forwarding lists: which interactions travel through its reliable or express
intermediary rather than straight to the recipient.

SDS rewrites the address of these interactions' MHS records to the intermediary's (the
"forward-reliable / forward-express rewrite", see ``docs/sandbox.md``), and the ebXML builder
routes them as forward-reliable/express: one list, so the two never disagree. The services are
the part of an interaction id before its last ``:``, the actions the part after.
"""

from __future__ import annotations

__all__ = ["FORWARDED_SERVICES", "FORWARD_EXPRESS_ACTIONS", "FORWARD_RELIABLE_ACTIONS"]

#: Services whose forward-reliable/express interactions Spine relays through its intermediary.
FORWARDED_SERVICES = frozenset(
    {"cc", "ebs", "ebsepr", "ebsnpr", "gp2gp", "pat", "itk", "dis", "ed", "op", "caf", "adm"}
    | {"ooh", "am", "mh", "nd", "dir"}
)
FORWARD_RELIABLE_ACTIONS = frozenset(
    {
        "COPC_IN000001UK01", "PRSC_IN040000UK08", "PRSC_IN080000UK07", "PRPA_IN010000UK07",
        "PRPA_IN020000UK06", "PRSC_IN050000UK06", "PRSC_IN090000UK09", "PRPA_IN030000UK08",
        "PRSC_IN100000UK06", "PRSC_IN070000UK08", "PRSC_IN140000UK06", "RCMR_IN010000UK05",
        "RCMR_IN030000UK06", "PRSC_IN130000UK07", "PRSC_IN110000UK08", "PRSC_IN060000UK06",
        "PRSC_IN150000UK06", "POLB_IN020006UK01", "POLB_IN020005UK01", "COMT_IN000004GB01",
        "MCCI_IN010000UK13",
    }
)  # fmt: skip
FORWARD_EXPRESS_ACTIONS = frozenset({"PRSC_IN080000UK03", "PRSC_IN040000UK03"})
