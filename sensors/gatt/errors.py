"""The one error type every BLE payload parser raises for malformed input.

Why one type: the BLE layer must count a bad notification and carry on (never crash, never stop the
stream), so callers need exactly one ``except`` clause. Parsers catch their own low-level failures
(``IndexError``, ``struct.error``, numpy shape errors) and re-raise them as :class:`ParseError`
with a message that says *what* was wrong, so the operator log is actionable without a hex dump.
"""

from __future__ import annotations

from typing import TypeAlias


class ParseError(ValueError):
    """A characteristic value or PMD frame could not be decoded.

    Subclasses ``ValueError`` so generic callers that already handle ``ValueError`` keep working.
    """


class UnsupportedFrameError(ParseError):
    """A well-formed PMD frame whose measurement/frame type this decoder does not implement.

    Kept distinct so a driver can log it once ("device streams X, we ignore it") instead of counting
    every such frame as corruption.
    """


#: What every parser accepts: bleak hands notifications over as ``bytearray``.
BytesLike: TypeAlias = bytes | bytearray | memoryview
