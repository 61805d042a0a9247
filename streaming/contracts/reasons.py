"""Dead-letter reason codes.

Built from the known codes (``x-known-values``) of the ``reason`` field in
schemas/dead_letter.v1.json so that the schema stays the single source of truth:
adding a reason there adds it here.
Use as ``Reason.NOT_AN_IMAGE``; the value is the code on the wire.
"""

from __future__ import annotations

import enum

from streaming.contracts import validation


def _codes() -> dict[str, str]:
    schema = validation.schema(validation.DEAD_LETTER)
    return {code.upper(): code for code in schema["properties"]["reason"][validation.KNOWN_VALUES]}


Reason = enum.Enum("Reason", _codes(), type=str, module=__name__)
Reason.__doc__ = "Why an event became a dead letter (the schema's reason codes)."
