"""Secret files: permissions, credentials, emptiness, and redaction of what they hold."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import secrets
from agent.config import ConfigError
from agent.secrets import Secret, SecretError, read_secret, redact, register_secret


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    secrets._forget_registered()
    yield
    secrets._forget_registered()


def _write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_reads_and_strips_a_private_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "token", "  rt.abcdef0123456789\n\n", 0o600)
    assert read_secret(path, what="uplink.token_file") == "rt.abcdef0123456789"
    assert read_secret(_write(tmp_path / "ro", "key-123456\n", 0o400), what="k") == "key-123456"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666])
def test_refuses_a_file_group_or_others_can_read_or_write(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "api key", "secret-value-1", mode)
    with pytest.raises(SecretError) as caught:
        read_secret(path, what="uplink.api_key_file", env={})
    message = str(caught.value)
    assert caught.value.key == "uplink.api_key_file"
    assert f"mode {mode:04o}" in message
    assert f"chmod 600 '{path}'" in message  # quoted: the path has a space
    assert "secret-value-1" not in message


def test_execute_bits_alone_are_not_a_leak(tmp_path: Path) -> None:
    assert read_secret(_write(tmp_path / "t", "value-xyz", 0o711), what="k", env={}) == "value-xyz"


def test_files_in_the_credentials_directory_are_trusted(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    path = _write(creds / "api-key", "from-systemd-1\n", 0o644)
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert read_secret(path, what="uplink.api_key_file", env=env) == "from-systemd-1"
    # The same file elsewhere is not.
    other = _write(tmp_path / "api-key", "from-systemd-1\n", 0o644)
    with pytest.raises(SecretError):
        read_secret(other, what="uplink.api_key_file", env=env)


def test_refuses_empty_and_whitespace_only(tmp_path: Path) -> None:
    for text in ("", " \n\t\n"):
        with pytest.raises(SecretError, match="is empty"):
            read_secret(_write(tmp_path / "t", text, 0o600), what="uplink.token_file", env={})


def test_empty_credential_hints_at_load_credential(tmp_path: Path) -> None:
    # The unit's SetCredential=token:\n fallback when /etc/wearable-agent/token is missing.
    _write(tmp_path / "token", "\n", 0o400)
    with pytest.raises(SecretError, match="LoadCredential"):
        read_secret(
            tmp_path / "token",
            what="uplink.token_file",
            env={"CREDENTIALS_DIRECTORY": str(tmp_path)},
        )


def test_refuses_missing_directory_multiline_and_huge(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="does not exist"):
        read_secret(tmp_path / "nope", what="k", env={})
    with pytest.raises(SecretError, match="not a regular file"):
        read_secret(tmp_path, what="k", env={})
    with pytest.raises(SecretError, match="one line"):
        read_secret(_write(tmp_path / "two", "line-one\nline-two\n", 0o600), what="k", env={})
    with pytest.raises(SecretError, match="larger than"):
        read_secret(_write(tmp_path / "big", "x" * 70_000, 0o600), what="k", env={})


def test_secret_error_is_a_config_error(tmp_path: Path) -> None:
    """So the daemon exits 78 for it, like any configuration problem."""
    with pytest.raises(ConfigError) as caught:
        read_secret(tmp_path / "nope", what="uplink.token_file", env={})
    assert str(caught.value).startswith("config error: uplink.token_file: ")


def test_read_secrets_are_redacted_afterwards(tmp_path: Path) -> None:
    value = "k3y-" + os.urandom(8).hex()
    assert redact(f"got {value}") == f"got {value}"  # not token-shaped, not registered yet
    read_secret(_write(tmp_path / "k", value, 0o600), what="k", env={})
    assert redact(f"sending {value} to the server") == "sending *** to the server"


def test_redact_known_shapes() -> None:
    cases = {
        "wss://ws.example/connect?token=abc.def-123&x=1": "wss://ws.example/connect?token=***&x=1",
        '{"op":3,"d":{"token":"eyJhbGciOi","type":0}}': '{"op":3,"d":{"token":"***","type":0}}',
        "{'token': 'abc', 'type': 0}": "{'token': '***', 'type': 0}",
        '"x-api-key": "zzz\\"q"': '"x-api-key": "***"',
        "headers x-api-key: s3cr3t dev-id: me": "headers x-api-key: *** dev-id: me",
        "Authorization: Bearer abc.def": "Authorization: Bearer ***",
        "https://user:hunter2@host/path": "https://user:***@host/path",
        "token rt.0123456789abcdef ok": "token rt.*** ok",
        "api_key=abcdef&user=1": "api_key=***&user=1",
    }
    for raw, expected in cases.items():
        assert redact(raw) == expected, raw
    harmless = "connected to wss://ws.tryterra.co/connect; 42 readings pending"
    assert redact(harmless) == harmless


def test_registered_secrets_longest_first_and_short_ones_ignored() -> None:
    register_secret("abcdef")
    register_secret("abcdefghij")
    assert redact("x abcdefghij y abcdef") == "x *** y ***"
    register_secret("ab")  # too short to mask without garbling everything
    assert redact("about abc") == "about abc"


def test_secret_wrapper_never_shows_its_value() -> None:
    secret = Secret("hunter2-hunter2")
    assert secret.reveal() == "hunter2-hunter2"
    for shown in (str(secret), repr(secret), f"{secret}", f"{secret!r}", "%s" % (secret,)):  # noqa: UP031
        assert "hunter2" not in shown
    assert f"{secret:>5}" == "  ***"
    assert secret == Secret("hunter2-hunter2")
    assert secret != Secret("other-value")
    assert secret != "hunter2-hunter2"
    assert bool(secret) and not bool(Secret(""))
    assert redact("leaked hunter2-hunter2") == "leaked ***"  # registered on construction
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(secret)


_SECRET_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."


@given(
    secret=st.text(alphabet=_SECRET_ALPHABET, min_size=6, max_size=40),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
)
def test_a_registered_secret_never_survives_redaction(secret: str, before: str, after: str) -> None:
    register_secret(secret)
    try:
        redacted = redact(before + secret + after)
        assert secret not in redacted
        assert redact(redacted) == redacted  # idempotent: masks are not re-masked or leaked
    finally:
        secrets._forget_registered()
