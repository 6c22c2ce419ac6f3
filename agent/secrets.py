"""Secrets (tokens, API keys): read from files with safe permissions, never shown.

Secrets live in files (or systemd credentials), never in the TOML. :func:`read_secret` refuses a
file that group or others may read or write, like ``ssh`` does for private keys, because a
world-readable API key on a shared board is already leaked; the error says which ``chmod`` fixes
it. Files inside ``$CREDENTIALS_DIRECTORY`` are trusted as they are: systemd creates that
directory on a private, non-swappable mount readable only by the service's user.

Every secret read is registered with :func:`register_secret`, so :func:`redact` (used by the
logging filter in :mod:`agent.logs`) masks it even where it turns up in an unexpected message.
:func:`redact` also masks the shapes secrets usually travel in: ``token=…`` query parameters,
``"token": "…"`` JSON members, ``x-api-key`` headers, ``Authorization`` headers, URL userinfo and
Terra's ``rt.`` test tokens.
"""

from __future__ import annotations

import hmac
import os
import re
import shlex
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from agent.config import ConfigError

__all__ = ["MASK", "Secret", "SecretError", "read_secret", "redact", "register_secret"]

MASK: Final = "***"
#: A secret file larger than this is not a token: probably a wrong path (a log, /dev/zero).
MAX_SECRET_BYTES: Final = 64 * 1024
#: Registered values shorter than this are not masked: masking "ab" everywhere would garble logs,
#: and no real token or key is that short.
MIN_REGISTERED_LEN: Final = 6


class SecretError(ConfigError):
    """A secret file is missing, unreadable, empty or too widely readable.

    A :class:`~agent.config.ConfigError`, so the daemon exits with status 78 for it too: restarting
    will not fix a permission problem.
    """


class Secret:
    """A string that does not show itself in ``str``, ``repr``, f-strings or logs.

    Call :meth:`reveal` at the one place that needs the value (an HTTP header, IDENTIFY).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        """The secret value itself."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values are not picklable")


# --------------------------------------------------------------------------------------------------
# Redaction.

_lock = threading.Lock()
_registered: set[str] = set()
_registered_re: re.Pattern[str] | None = None

_KEYS = r"(?:token|access_token|refresh_token|api[_-]?key|x-api-key|apikey|password|secret)"
_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # JSON / Python-literal members: "token": "abc" or 'x-api-key': 'abc'
    (
        re.compile(rf"""(?i)(["']{_KEYS}["']\s*:\s*)(["'])(?:\\.|(?!\2).)*\2"""),
        rf"\1\2{MASK}\2",
    ),
    # Query parameters and key=value pairs: ?token=abc&… , api_key=abc
    (re.compile(rf"(?i)(\b{_KEYS}=)[^\s&#\"',;]+"), rf"\1{MASK}"),
    # Header lines: x-api-key: abc, Authorization: Bearer abc
    (re.compile(r"(?i)(\bx-api-key:\s*)\S+"), rf"\1{MASK}"),
    (re.compile(r"(?i)(\bauthorization:\s*(?:bearer|basic|token)?\s*)\S+"), rf"\1{MASK}"),
    # URL userinfo: scheme://user:password@host
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@"), rf"\1{MASK}@"),
    # Terra's reusable test tokens
    (re.compile(r"\brt\.[A-Za-z0-9._~+/=-]{8,}"), f"rt.{MASK}"),
)


def register_secret(value: str) -> None:
    """Mask ``value`` wherever it appears in text passed through :func:`redact` from now on."""
    global _registered_re
    value = value.strip()
    if len(value) < MIN_REGISTERED_LEN:
        return
    with _lock:
        if value in _registered:
            return
        _registered.add(value)
        ordered = sorted(_registered, key=len, reverse=True)  # longest first: no partial leaks
        _registered_re = re.compile("|".join(re.escape(v) for v in ordered))


def _forget_registered() -> None:
    """Tests only: drop every registered secret."""
    global _registered_re
    with _lock:
        _registered.clear()
        _registered_re = None


def redact(text: str) -> str:
    """``text`` with registered secrets and token/key-shaped values replaced by ``***``."""
    pattern = _registered_re
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for regex, replacement in _PATTERNS:
        text = regex.sub(replacement, text)
    return text


# --------------------------------------------------------------------------------------------------
# Reading.


def _in_credentials_dir(path: Path, env: Mapping[str, str]) -> bool:
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return False
    try:
        return path.resolve().is_relative_to(Path(directory).resolve())
    except OSError:
        return False


def read_secret(path: Path, *, what: str, env: Mapping[str, str] = os.environ) -> str:
    """Read a secret from ``path``: whitespace stripped, never empty, never widely readable.

    Args:
        path: the file (``cred:NAME`` paths are already resolved by :mod:`agent.config`).
        what: the config key it came from (``uplink.api_key_file``), used in error messages.
        env: environment, for ``$CREDENTIALS_DIRECTORY``.

    Raises:
        SecretError: with ``key=what`` and a problem that says what to do.
    """
    quoted = shlex.quote(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise SecretError(what, f"secret file {path} does not exist") from None
    except PermissionError:
        raise SecretError(
            what, f"secret file {path} is not readable by this user (uid {os.getuid()})"
        ) from None
    except OSError as exc:
        raise SecretError(what, f"cannot open secret file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # the file we opened, not whatever the path points to now
        if not stat.S_ISREG(st.st_mode):
            raise SecretError(what, f"secret file {path} is not a regular file")
        if st.st_mode & 0o066 and not _in_credentials_dir(path, env):
            mode = stat.S_IMODE(st.st_mode)
            raise SecretError(
                what,
                f"secret file {path} is readable or writable by group/others (mode {mode:04o}); "
                f"run: chmod 600 {quoted}",
            )
        data = os.read(fd, MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(what, f"secret file {path} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretError(what, f"secret file {path} is not UTF-8 text") from None
    if not value:
        hint = ""
        if _in_credentials_dir(path, env):
            hint = " (is the file named in the unit's LoadCredential= missing or empty?)"
        raise SecretError(what, f"secret file {path} is empty{hint}")
    if "\n" in value or "\r" in value:
        raise SecretError(what, f"secret file {path} must hold one line, not several")
    register_secret(value)
    return value
