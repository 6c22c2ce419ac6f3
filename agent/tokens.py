"""Where producer tokens come from: one fresh token for every connection.

Why several providers: Terra tokens are single-use (the broker deletes a token on a successful
IDENTIFY), so every reconnect needs a new one. A device either holds a single token (good for
one connection only), reads one that something else keeps fresh in a file, runs a command that
prints one (e.g. a call to the owner's backend), or mints one itself from the REST endpoint
with the developer's API key (field devices operated by the developer).

Secrets: tokens and API keys never appear in log lines, exception messages or reprs. Errors
name files, commands (argv[0] only), URLs and HTTP statuses, never contents or stderr.

Exception tree::

    TokenError                 base; ``transient`` says whether retrying may help
     ├── TokenExhausted        a static token was already used (not transient)
     ├── TokenRefused          the REST endpoint refused the API key (HTTP 401/403)
     └── TokenUnavailable      file missing/empty, command failed, endpoint unreachable
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from agent.netaddr import is_loopback_host

#: Default bound on a token command / REST request.
DEFAULT_TIMEOUT_S: Final = 30.0
#: Largest token accepted (Terra tokens are well under 1 KiB).
MAX_TOKEN_BYTES: Final = 16 * 1024


class TokenError(Exception):
    """No token could be obtained; ``transient`` tells the uplink whether to retry."""

    transient: bool = True


class TokenExhausted(TokenError):
    """A static token was already used once; tokens are single-use."""

    transient = False


class TokenRefused(TokenError):
    """The token endpoint refused the credentials (HTTP 401/403)."""

    transient = True  # a rotated key may be fixed by the operator; the uplink backs off to max


class TokenUnavailable(TokenError):
    """A token source failed in a way that retrying may fix."""


@runtime_checkable
class TokenProvider(Protocol):
    """Something that yields a fresh token for each connection."""

    async def get(self) -> str:
        """A token for the next IDENTIFY; raise :class:`TokenError` if none is available."""
        ...


def _clean(raw: str | bytes, source: str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    token = text.strip()
    if not token:
        raise TokenUnavailable(f"{source} produced an empty token")
    if len(token) > MAX_TOKEN_BYTES or any(c.isspace() for c in token):
        raise TokenUnavailable(f"{source} produced something that is not a token")
    return token


class StaticToken:
    """One token given in the configuration: good for exactly one connection.

    Terra's reusable ``rt.`` test tokens may be passed with ``reusable=True``.
    """

    def __init__(self, token: str, *, reusable: bool = False) -> None:
        self._token: str | None = _clean(token, "the static token")
        self._reusable = reusable

    def __repr__(self) -> str:
        return f"StaticToken(<redacted>, reusable={self._reusable})"

    async def get(self) -> str:
        token = self._token
        if token is None:
            raise TokenExhausted(
                "the static token was already used for one connection and tokens are "
                "single-use (the broker deletes them on IDENTIFY); configure a token file, "
                "a token command or a token endpoint so the agent can reconnect"
            )
        if not self._reusable:
            self._token = None
        return token


class TokenFile:
    """A file that something else keeps filled with a fresh token; re-read on every get()."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"

    async def get(self) -> str:
        from agent.secrets import SecretError, read_secret

        try:
            # refuses a file readable by group/others and registers the token for redaction
            raw = await asyncio.to_thread(read_secret, self.path, what="token file")
        except SecretError as exc:
            raise TokenUnavailable(exc.problem) from None
        return _clean(raw, f"token file {self.path}")


class TokenCommand:
    """A command whose stdout is a fresh token (run without a shell, bounded in time)."""

    def __init__(self, command: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.argv = shlex.split(command)
        if not self.argv:
            raise ValueError("token command is empty")
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"TokenCommand({self.argv[0]!r}, ...)"

    async def get(self) -> str:
        name = self.argv[0]
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise TokenUnavailable(f"token command {name!r} cannot start: {exc.strerror}") from None
        try:
            async with asyncio.timeout(self.timeout_s):
                out, _err = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise TokenUnavailable(
                f"token command {name!r} did not finish within {self.timeout_s:g} s"
            ) from None
        if proc.returncode != 0:
            raise TokenUnavailable(
                f"token command {name!r} exited with status {proc.returncode} "
                "(its output is not shown because it may hold secrets)"
            )
        return _clean(out, f"token command {name!r}")


def credential_path(name: str) -> Path:
    """Path of a systemd credential (``LoadCredential=``) named ``name``."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise TokenUnavailable(
            f"credential {name!r} requested but $CREDENTIALS_DIRECTORY is not set "
            "(is the agent running under systemd with LoadCredential=?)"
        )
    return Path(directory) / name


def post_for_token(
    url: str,
    dev_id: str,
    api_key: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    key_hint: str = "",
) -> str:
    """``POST url`` with ``dev-id``/``x-api-key`` and return ``{"token": ...}`` (blocking).

    The one REST client of the project: producer tokens (``/auth/user?id=``, :class:`RestToken`)
    and consumer tokens (``/auth/developer``, ``agent watch``). Raises :class:`TokenRefused` for
    401/403 and :class:`TokenUnavailable` otherwise; neither message contains the key or a token.
    """
    request = urllib.request.Request(
        url,
        data=b"",
        method="POST",
        headers={"dev-id": dev_id, "x-api-key": api_key, "Content-Length": "0"},
    )
    try:
        with urllib.request.urlopen(  # scheme checked by the callers
            request, timeout=timeout_s, context=ssl_context if url.startswith("https") else None
        ) as response:
            body = response.read(MAX_TOKEN_BYTES * 2)
    except urllib.error.HTTPError as exc:
        exc.close()  # it owns the response socket
        if exc.code in (401, 403):
            raise TokenRefused(
                f"token endpoint {url} refused the credentials (HTTP {exc.code}): "
                f"check the dev-id {dev_id!r}{key_hint}"
            ) from None
        raise TokenUnavailable(f"token endpoint {url} answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise TokenUnavailable(f"token endpoint {url} unreachable: {exc.reason}") from None
    except (OSError, TimeoutError) as exc:
        raise TokenUnavailable(f"token endpoint {url} failed: {type(exc).__name__}") from None
    try:
        token = json.loads(body)["token"]
    except (ValueError, KeyError, TypeError):
        raise TokenUnavailable(f"token endpoint {url} sent no token in its reply") from None
    if not isinstance(token, str):
        raise TokenUnavailable(f"token endpoint {url} sent a non-string token")
    return _clean(token, f"token endpoint {url}")


class RestToken:
    """Mint producer tokens: ``POST <base_url>/auth/user?id=<user>`` with dev-id and x-api-key.

    Works against Terra's host (``https://ws.tryterra.co``) and against ``agent relay``. The API
    key is read from ``api_key_file`` or the systemd credential ``api_key_credential`` on every
    call, so a rotated key is picked up without a restart. https verifies certificates (system
    store, or ``ca_file``); plain http only to loopback unless ``allow_insecure``.
    """

    def __init__(
        self,
        base_url: str,
        user_id: str,
        dev_id: str,
        *,
        api_key_file: str | Path | None = None,
        api_key_credential: str | None = None,
        ca_file: str | Path | None = None,
        allow_insecure: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if (api_key_file is None) == (api_key_credential is None):
            raise ValueError("give exactly one of api_key_file or api_key_credential")
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"token endpoint must be http(s)://, got {parsed.scheme!r}")
        if parsed.scheme == "http" and not (allow_insecure or is_loopback_host(parsed.hostname)):
            raise ValueError(
                f"refusing plain http:// to {parsed.hostname}: the API key would travel "
                "unencrypted; use https:// or allow_insecure=True"
            )
        self.url = (
            base_url.rstrip("/") + "/auth/user?" + urllib.parse.urlencode({"id": user_id})
        )
        self.dev_id = dev_id
        self._key_file = Path(api_key_file) if api_key_file is not None else None
        self._key_credential = api_key_credential
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"RestToken({self.url!r}, dev_id={self.dev_id!r}, key=<redacted>)"

    def _key_path(self) -> Path:
        if self._key_file is not None:
            return self._key_file
        assert self._key_credential is not None
        return credential_path(self._key_credential)

    def _mint(self) -> str:
        from agent.secrets import SecretError, read_secret

        path = self._key_path()
        try:
            # refuses a key readable by group/others; registers it for log redaction
            key = read_secret(path, what="API key file")
        except SecretError as exc:
            raise TokenUnavailable(exc.problem) from None
        return post_for_token(
            self.url, self.dev_id, key, ssl_context=self._ssl, timeout_s=self.timeout_s,
            key_hint=f" and the API key in {path}",
        )

    async def get(self) -> str:
        return await asyncio.to_thread(self._mint)
