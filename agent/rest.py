"""Minting single-use tokens over REST (Terra's host or ``agent relay``).

``POST <base>/auth/user?id=<user>`` (producer) and ``POST <base>/auth/developer`` (consumer), both
with headers ``dev-id`` and ``x-api-key``, answer ``200 {"token": "..."}`` or ``403`` with an empty
body. urllib runs in a worker thread: a token request is rare (once per connection), so a blocking
client off the event loop is simpler than a hand-written async HTTP client. HTTPS certificates are
verified by default (optionally against a custom CA file). Neither the key nor the token ever
appears in an exception message.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.request
from urllib.parse import quote

#: A token response is tiny; anything bigger is not a token endpoint.
MAX_RESPONSE_BYTES = 64 * 1024
DEFAULT_TIMEOUT_S = 15.0


class TokenRequestError(Exception):
    """Token endpoint failed; ``status`` is the HTTP status (None for network errors)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def refused(self) -> bool:
        """403: the credentials are wrong; retrying will not help until they change."""
        return self.status == 403


def user_token_path(user_id: str) -> str:
    """Path and query of the producer token endpoint for ``user_id``."""
    return "/auth/user?id=" + quote(user_id, safe="")


def _post(url: str, dev_id: str, api_key: str, ca_file: str | None, timeout_s: float) -> str:
    if not url.startswith(("http://", "https://")):
        raise TokenRequestError(f"token URL must be http(s)://, not {url.split(':')[0]}")
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https://") else None
    request = urllib.request.Request(
        url, data=b"", method="POST", headers={"dev-id": dev_id, "x-api-key": api_key}
    )
    where = url.split("?")[0]
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            body = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()  # it owns the response socket: close it now, not at garbage collection
        advice = " (check dev id and API key)" if exc.code == 403 else ""
        raise TokenRequestError(f"{where} answered HTTP {exc.code}{advice}", exc.code) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TokenRequestError(f"{where} unreachable: {reason}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise TokenRequestError(f"{where} sent an oversized response")
    try:
        token = json.loads(body)["token"]
    except (ValueError, KeyError, TypeError):
        raise TokenRequestError(f"{where} did not answer {{\"token\": ...}}") from None
    if not isinstance(token, str) or not token:
        raise TokenRequestError(f"{where} answered an empty token")
    return token


async def request_token(
    base_url: str,
    path: str,
    *,
    dev_id: str,
    api_key: str,
    ca_file: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> str:
    """POST ``base_url + path`` with the developer credentials and return the token."""
    url = base_url.rstrip("/") + path
    return await asyncio.to_thread(_post, url, dev_id, api_key, ca_file, timeout_s)
