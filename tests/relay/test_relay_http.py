"""Token and health endpoints over real HTTP on the relay's port."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from agent.relay.server import Relay
from tests.relay.conftest import (
    DEVELOPERS,
    WAIT_S,
    expect_close,
    heartbeat_roundtrip,
    identify_text,
    raw_client,
    recv_json,
    submit,
)


async def http(
    relay: Relay, method: str, path: str, headers: dict[str, str] | None = None,
    *, body: bytes = b"",
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request; returns (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{relay.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        async with asyncio.timeout(WAIT_S):
            raw = await reader.read()  # the relay closes after each response
    finally:
        writer.close()
    if not raw:
        return 0, {}, b""  # closed without a response
    head, _, content = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        parsed[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), parsed, content


def creds(dev: str = "dev-a") -> dict[str, str]:
    return {"dev-id": dev, "x-api-key": DEVELOPERS[dev]}


async def test_user_token_opens_a_producer_connection(relay: Relay) -> None:
    status, headers, body = await http(relay, "POST", "/auth/user?id=alice", creds())
    assert status == 200
    assert headers["content-type"] == "application/json"
    token = json.loads(body)["token"]
    assert isinstance(token, str) and len(token) >= 32
    async with raw_client(relay) as p:
        await p.send(identify_text(token, 0))
        assert await recv_json(p) == {"op": 4}
        await p.send(submit(70))
        await heartbeat_roundtrip(p)
    stored = await relay.dispatches("dev-a")
    assert [(s.uid, s.seq) for s in stored] == [("alice", 1)]


async def test_developer_token_opens_a_consumer_connection(relay: Relay) -> None:
    status, _, body = await http(relay, "POST", "/auth/developer", creds("dev-b"))
    assert status == 200
    async with raw_client(relay) as c:
        await c.send(identify_text(json.loads(body)["token"], 1))
        assert await recv_json(c) == {"op": 4}


async def test_tokens_are_distinct_and_single_use(relay: Relay) -> None:
    tokens = [
        json.loads((await http(relay, "POST", "/auth/user?id=u", creds()))[2])["token"]
        for _ in range(3)
    ]
    assert len(set(tokens)) == 3
    async with raw_client(relay) as first:
        await first.send(identify_text(tokens[0], 0))
        assert await recv_json(first) == {"op": 4}
    async with raw_client(relay) as again:
        await again.send(identify_text(tokens[0], 0))
        await expect_close(again, 4001)


@pytest.mark.parametrize(
    "headers",
    [
        {"dev-id": "dev-a", "x-api-key": "wrong"},
        {"dev-id": "dev-a", "x-api-key": DEVELOPERS["dev-b"]},  # another developer's key
        {"dev-id": "nobody", "x-api-key": DEVELOPERS["dev-a"]},
        {"dev-id": "dev-a"},
        {"x-api-key": DEVELOPERS["dev-a"]},
        {},
    ],
)
@pytest.mark.parametrize("path", ["/auth/user?id=alice", "/auth/developer"])
async def test_bad_credentials_get_403_with_empty_body(
    relay: Relay, headers: dict[str, str], path: str
) -> None:
    status, response_headers, body = await http(relay, "POST", path, headers)
    assert status == 403
    assert body == b""
    assert response_headers["content-length"] == "0"
    assert len(relay.tokens) == 0


@pytest.mark.parametrize("query", ["", "?id=", "?id=a&id=b", "?user=alice", "?id=" + "x" * 300])
async def test_user_token_needs_exactly_one_user_id(relay: Relay, query: str) -> None:
    status, _, _ = await http(relay, "POST", "/auth/user" + query, creds())
    assert status == 400
    assert len(relay.tokens) == 0


async def test_health_reports_connections_and_last_seq(relay: Relay) -> None:
    token = await relay.mint_token(user_id="alice")
    async with raw_client(relay) as p:
        await p.send(identify_text(token, 0))
        assert await recv_json(p) == {"op": 4}
        for i in range(3):
            await p.send(submit(i))
        await heartbeat_roundtrip(p)
        status, headers, body = await http(relay, "GET", "/health")
    assert status == 200
    assert headers["content-type"] == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["last_seq"] == 3
    assert health["connections"]["producers"] == 1


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/auth", 404),
        ("POST", "/nope", 404),
        ("GET", "/auth/user?id=alice", 405),
        ("GET", "/auth/developer", 405),
        ("POST", "/health", 405),
        ("DELETE", "/connect", 405),
        ("GET", "/connect", 426),  # not a websocket upgrade
    ],
)
async def test_other_requests_get_4xx(relay: Relay, method: str, path: str, status: int) -> None:
    got, headers, _ = await http(relay, method, path, creds())
    assert got == status
    if status == 405:
        assert headers["allow"] in ("GET", "POST")


async def test_oversized_token_request_is_refused(relay: Relay) -> None:
    big = {**creds(), "x-padding": "p" * relay.config.max_token_request_bytes}
    status, _, _ = await http(relay, "POST", "/auth/user?id=alice", big)
    assert status in (400, 413, 431)
    assert len(relay.tokens) == 0


async def test_request_with_a_body_is_refused(relay: Relay) -> None:
    """The token endpoints take no body; the HTTP parser drops such requests unanswered."""
    status, _, _ = await http(relay, "POST", "/auth/user?id=alice", creds(), body=b"x" * 10)
    assert status == 0
    assert len(relay.tokens) == 0


async def test_garbage_http_does_not_hurt_the_relay(relay: Relay) -> None:
    for garbage in (b"\x00\x01\x02\r\n\r\n", b"GET\r\n\r\n", b"POST /auth/user HTTP/9\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(garbage)
        await writer.drain()
        async with asyncio.timeout(WAIT_S):
            await reader.read()
        writer.close()
    status, _, _ = await http(relay, "GET", "/health")
    assert status == 200


async def test_api_keys_and_tokens_never_logged(
    relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, _, body = await http(relay, "POST", "/auth/user?id=alice", creds())
    await http(relay, "POST", "/auth/user?id=alice", {"dev-id": "dev-a", "x-api-key": "nope-k"})
    token = json.loads(body)["token"]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused token request" in text
    for secret in (token, DEVELOPERS["dev-a"], "nope-k"):
        assert secret not in text
    assert token not in repr(relay.tokens)
    assert DEVELOPERS["dev-a"] not in repr(relay.config)
