"""An IntEnum that keeps unknown byte values instead of raising.

Devices send codes newer than our tables (a body-sensor location, a PMD status). Parsing must not
fail on them, and the value must survive for logs, so unknown values become pseudo-members named
``UNKNOWN_<n>``.
"""

from __future__ import annotations

import enum
from typing import Self


class OpenIntEnum(enum.IntEnum):
    """Base for byte-valued enums: ``Cls(n)`` for an unknown ``n`` in 0..255 is ``UNKNOWN_n``."""

    @classmethod
    def _missing_(cls, value: object) -> Self | None:
        if isinstance(value, int) and 0 <= value <= 0xFF:
            member = int.__new__(cls, value)
            member._name_ = f"UNKNOWN_{value}"
            member._value_ = value
            return member
        return None
