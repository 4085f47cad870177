"""Redaction of digit strings in call transcripts, before a call record is stored.

A caller reads out a card number, an account or a phone number; a record kept for 30 days
should not keep it. Any run of four or more digits goes, also when the digits are split
by spaces, dashes, dots, commas, slashes or parentheses ("4111 1111 1111 1111",
"555-123-4567", "(555) 123.4567", and Whisper's "4,111,111"). Shorter numbers ("3 items",
"in 15 minutes") stay readable; a year ("2024") or an amount ("1,500") is redacted too,
which errs on the safe side. Numbers spoken as words ("four one one one") are not caught.
Pure: text in, text out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "redact_digits", "redact_fields"]

REDACTED = "[redacted]"

# A digit, then at least three more, each after at most two separator characters.
_DIGIT_RUN = re.compile(r"\d(?:[ \t\-.,/()]{0,2}\d){3,}")


def redact_digits(text: str, mask: str = REDACTED) -> str:
    """`text` with every run of 4+ digits (separators allowed between them) replaced."""
    if not any(c.isdigit() for c in text):  # the common case: nothing to scan
        return text
    return _DIGIT_RUN.sub(mask, text)


def redact_fields(data: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """A copy of `data` with the string values under `keys` redacted."""
    out = dict(data)
    for key in keys:
        value = out.get(key)
        if isinstance(value, str):
            out[key] = redact_digits(value)
    return out
