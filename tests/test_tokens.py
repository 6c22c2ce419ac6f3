"""Token providers: single-use static token, file re-read, command, REST against the relay."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.relay.server import Relay, RelayConfig
from agent.tokens import (
    RestToken,
    StaticToken,
    TokenCommand,
    TokenExhausted,
    TokenFile,
    TokenProvider,
    TokenRefused,
    TokenUnavailable,
)

SECRET = "s3cr3t-token-value"


async def test_static_token_is_single_use() -> None:
    provider = StaticToken(SECRET)
    assert isinstance(provider, TokenProvider)
    assert await provider.get() == SECRET
    with pytest.raises(TokenExhausted) as info:
        await provider.get()
    message = str(info.value)
    assert "static token was already used" in message and "single-use" in message
    assert SECRET not in message and SECRET not in repr(provider)
    assert not info.value.transient


async def test_reusable_static_token() -> None:
    provider = StaticToken("rt.abc", reusable=True)
    assert [await provider.get() for _ in range(3)] == ["rt.abc"] * 3


async def test_token_file_is_reread_every_time(tmp_path: Path) -> None:
    path = tmp_path / "token"
    provider = TokenFile(path)
    with pytest.raises(TokenUnavailable, match="does not exist"):
        await provider.get()
    path.write_text("first\n")
    path.chmod(0o644)
    with pytest.raises(TokenUnavailable, match="chmod 600"):
        await provider.get()  # a token readable by others is refused, with the fix
    path.chmod(0o600)
    assert await provider.get() == "first"
    path.write_text("second")
    assert await provider.get() == "second"
    path.write_text("  \n")
    with pytest.raises(TokenUnavailable, match="empty"):
        await provider.get()


async def test_command_provider_prints_token(tmp_path: Path) -> None:
    script = tmp_path / "mint.py"
    script.write_text(f"print('  {SECRET}  ')\n")
    provider = TokenCommand(f"{sys.executable} {script}")
    assert await provider.get() == SECRET


async def test_command_failure_does_not_echo_output(tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text(
        f"import sys; print('{SECRET}'); print('{SECRET}', file=sys.stderr); sys.exit(3)\n"
    )
    provider = TokenCommand(f"{sys.executable} {script}")
    with pytest.raises(TokenUnavailable) as info:
        await provider.get()
    assert "status 3" in str(info.value)
    assert SECRET not in str(info.value)


async def test_command_timeout_and_missing_binary(tmp_path: Path) -> None:
    script = tmp_path / "hang.py"
    script.write_text("import time; time.sleep(30)\n")
    with pytest.raises(TokenUnavailable, match="did not finish"):
        await TokenCommand(f"{sys.executable} {script}", timeout_s=0.2).get()
    with pytest.raises(TokenUnavailable, match="cannot start"):
        await TokenCommand(str(tmp_path / "no-such-command")).get()


async def test_rest_provider_against_relay(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("the-api-key\n")
    key_file.chmod(0o600)
    cfg = RelayConfig(port=0, developers={"dev1": "the-api-key"})
    async with Relay(cfg) as relay:
        provider = RestToken(relay.url, "user-7", "dev1", api_key_file=key_file)
        first = await provider.get()
        second = await provider.get()
        assert first and second and first != second
        assert "the-api-key" not in repr(provider)

        key_file.write_text("wrong-key")  # the key is re-read on every call
        with pytest.raises(TokenRefused) as info:
            await provider.get()
        assert "403" in str(info.value) and "API key" in str(info.value)
        assert "wrong-key" not in str(info.value)


async def test_rest_provider_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "terra-api-key").write_text("k2")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = RelayConfig(port=0, developers={"dev2": "k2"})
    async with Relay(cfg) as relay:
        provider = RestToken(relay.url, "u", "dev2", api_key_credential="terra-api-key")
        assert await provider.get()


async def test_rest_provider_unreachable_and_insecure(tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    key_file.write_text("k")
    provider = RestToken("http://127.0.0.1:9", "u", "d", api_key_file=key_file, timeout_s=2)
    with pytest.raises(TokenUnavailable, match="unreachable"):
        await provider.get()
    with pytest.raises(ValueError, match="unencrypted"):
        RestToken("http://ws.tryterra.co", "u", "d", api_key_file=key_file)
    with pytest.raises(ValueError, match="exactly one"):
        RestToken("https://ws.tryterra.co", "u", "d")
