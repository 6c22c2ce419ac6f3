"""The sans-I/O protocol core, rule by rule (no sockets, no clocks)."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import protocol as p

TS = "2022-05-04T10:26:11.268507+01:00"


# --- parse / serialize -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (p.Heartbeat(), '{"op":0}'),
        (p.HeartbeatAck(), '{"op":1}'),
        (p.Hello(40000), '{"op":2,"d":{"heartbeat_interval":40000}}'),
        (p.Identify("tok", p.IdentifyType.USER), '{"op":3,"d":{"token":"tok","type":0}}'),
        (p.Ready(), '{"op":4}'),
        (p.Replay(28, 43), '{"op":7,"d":{"after":28,"before":43}}'),
        (
            p.Submit(p.DataType.HEART_RATE, {"ts": TS, "val": 95}),
            '{"op":6,"d":{"ts":"' + TS + '","val":95},"t":"HEART_RATE"}',
        ),
        (
            p.Dispatch({"ts": TS, "val": 95}, "u1", 73, "HEART_RATE"),
            '{"op":5,"d":{"ts":"' + TS + '","val":95},"uid":"u1","seq":73,"t":"HEART_RATE"}',
        ),
    ],
)
def test_serialize_matches_the_seed_shapes_and_round_trips(payload: p.Payload, text: str) -> None:
    assert p.serialize(payload) == text
    assert p.parse(text) == payload


def test_seed_examples_parse() -> None:
    dispatch = p.parse(
        '{"op":5,"d":{"ts":"2022-05-04T10:26:11.268507+01:00","val":95},'
        '"uid":"8e864e3a-979a-4d04-b4e9-b6d020f20ba0","seq":73,"t":"HEART_RATE"}'
    )
    assert isinstance(dispatch, p.Dispatch) and dispatch.seq == 73
    # The seed's client example has no ts: accepted (ts is validated only when present).
    submit = p.parse('{"op":6,"d":{"val":95},"t":"HEART_RATE"}')
    assert isinstance(submit, p.Submit) and submit.val == 95 and submit.ts is None
    hello = p.parse('{"op": 2, "d": {"heartbeat_interval": 40000}}')
    assert hello == p.Hello(40000)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1,2]",
        '"op"',
        "{}",
        '{"op":"1"}',
        '{"op":true}',
        '{"op":1.0}',
        '{"op":2}',
        '{"op":2,"d":{"heartbeat_interval":0}}',
        '{"op":3,"d":{"token":5,"type":0}}',
        '{"op":3,"d":{"token":"x","type":2}}',
        '{"op":3,"d":{"token":"x","type":true}}',
        '{"op":3,"d":"x"}',
        '{"op":6,"d":{"ts":"' + TS + '","val":"95"},"t":"HEART_RATE"}',
        '{"op":6,"d":{"ts":"' + TS + '","val":true},"t":"HEART_RATE"}',
        '{"op":6,"d":{"ts":"' + TS + '","val":NaN},"t":"HEART_RATE"}',
        '{"op":6,"d":{"ts":"' + TS + '","val":1},"t":"BLOOD_SUGAR"}',
        '{"op":6,"d":{"ts":"' + TS + '","val":1},"t":7}',
        '{"op":6,"d":{"ts":"' + TS + '","val":1}}',
        '{"op":6,"d":{"ts":"2022-05-04T10:26:11","val":1},"t":"STEPS"}',
        '{"op":6,"d":{"ts":"yesterday","val":1},"t":"STEPS"}',
        '{"op":6,"d":{"ts":"' + TS + '","val":1,"extra":2},"t":"STEPS"}',
        '{"op":6,"d":{"ts":"' + TS + '","val":1,"d":[1,2,3]},"t":"STEPS"}',
        '{"op":6,"d":{"ts":"' + TS + '","d":[1,2]},"t":"ACCELERATION"}',
        '{"op":6,"d":{"ts":"' + TS + '","d":[1,2,"3"]},"t":"GYROSCOPE"}',
        '{"op":6,"d":{"ts":"' + TS + '","val":1},"t":"ACCELERATION"}',
        '{"op":7,"d":{"after":"1"}}',
        '{"op":7,"d":{"after":1,"before":2.5}}',
        '{"op":7}',
        b"\xff\xfe",
    ],
)
def test_malformed_frames_raise_1007(text: str | bytes) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse(text)
    assert info.value.close_code == p.CloseCode.INVALID_DATA


@pytest.mark.parametrize("op", [8, 9, 42, -1, 1000])
def test_unknown_opcode_raises_4004(op: int) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse(json.dumps({"op": op}))
    assert info.value.close_code == p.CloseCode.UNKNOWN_OPCODE


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
@settings(max_examples=300)
def test_parse_only_ever_raises_protocol_error(data: str | bytes) -> None:
    try:
        p.parse(data)
    except p.ProtocolError as exc:
        assert exc.close_code in (p.CloseCode.INVALID_DATA, p.CloseCode.UNKNOWN_OPCODE)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=4),
    max_leaves=10,
)


@given(
    op=st.one_of(st.integers(-3, 10), json_values),
    d=json_values,
    t=st.one_of(st.sampled_from([x.value for x in p.DataType]), json_values),
)
@settings(max_examples=300)
def test_structured_fuzz_never_escapes(op: object, d: object, t: object) -> None:
    text = json.dumps({"op": op, "d": d, "t": t})
    with contextlib.suppress(p.ProtocolError):
        p.parse(text)


def test_submit_text_fast_path_equals_validated_serialisation() -> None:
    fast = p.submit_text(p.DataType.ACCELERATION, TS, vec=(0.1, -9.81, 3.0))
    slow = p.serialize(p.Submit.reading(p.DataType.ACCELERATION, TS, vec=(0.1, -9.81, 3.0)))
    assert json.loads(fast) == json.loads(slow)
    assert isinstance(p.parse(fast), p.Submit)
    hr = p.submit_text(p.DataType.HEART_RATE, TS, val=72.0)
    assert hr == '{"op":6,"d":{"ts":"' + TS + '","val":72},"t":"HEART_RATE"}'
    with pytest.raises(ValueError):
        p.submit_text(p.DataType.STEPS, TS, val=float("nan"))
    with pytest.raises(ValueError):
        p.Submit.reading(p.DataType.STEPS, TS, vec=(1.0, 2.0, 3.0))


def test_format_ts_has_offset_and_microseconds() -> None:
    tz = timezone(timedelta(hours=1))
    assert p.format_ts(1651656371.268507, tz) == TS
    assert p.format_ts(0.0) == "1970-01-01T00:00:00.000000+00:00"
    assert p.ts_to_unix(TS) == pytest.approx(1651656371.268507)


def test_identify_repr_hides_the_token() -> None:
    assert "secret" not in repr(p.Identify("secret", p.IdentifyType.USER))
    assert "secret" not in repr(p.IdentifyRequested("secret", p.IdentifyType.USER))


# --- close codes and policy -------------------------------------------------------------------


def test_every_close_code_has_an_explanation_and_a_policy() -> None:
    for code in p.CloseCode:
        assert code.explanation
        assert p.close_policy(int(code)) is not None
    assert p.close_policy(4004).action is p.ClientAction.STOP
    assert p.close_policy(1007).action is p.ClientAction.STOP
    assert p.close_policy(4000).action is p.ClientAction.STOP
    assert p.close_policy(4003).action is p.ClientAction.STOP
    assert p.close_policy(1003).action is p.ClientAction.STOP
    assert p.close_policy(4001).action is p.ClientAction.NEW_TOKEN
    assert p.close_policy(4002).action is p.ClientAction.BACKOFF_MAX
    for plain in (1000, 1001, 1006, 1011, 4005):
        assert p.close_policy(plain).action is p.ClientAction.RECONNECT
    assert p.close_policy(None).action is p.ClientAction.RECONNECT
    assert p.close_policy(4999).action is p.ClientAction.RECONNECT


# --- heartbeats -------------------------------------------------------------------------------


def test_first_beat_is_jittered_between_a_tenth_and_one_interval() -> None:
    assert p.first_beat_delay(40.0, 0.0) == pytest.approx(4.0)
    assert p.first_beat_delay(40.0, 0.999999) == pytest.approx(40.0, rel=1e-5)
    sched = p.HeartbeatScheduler.start(40.0, now=100.0, u=0.5)
    assert sched.next_due == pytest.approx(100.0 + 40.0 * 0.55)


def test_beats_every_interval_and_unacked_beat_when_next_due_means_dead() -> None:
    sched = p.HeartbeatScheduler.start(10.0, now=0.0, u=0.0)
    assert sched.poll(0.5) is p.BeatDecision.WAIT
    assert sched.poll(1.0) is p.BeatDecision.SEND
    sched.sent(1.0)
    assert sched.next_due == pytest.approx(11.0)
    assert sched.poll(5.0) is p.BeatDecision.WAIT
    sched.acked(5.0)
    assert sched.poll(11.0) is p.BeatDecision.SEND
    sched.sent(11.0)
    # no ACK for the beat at 11: when the next is due at 21, the connection is dead
    assert sched.poll(20.9) is p.BeatDecision.WAIT
    assert sched.poll(21.0) is p.BeatDecision.DEAD


def test_barrier_beats_do_not_move_the_schedule_and_acks_return_tags_in_order() -> None:
    sched = p.HeartbeatScheduler.start(10.0, now=0.0, u=0.0)
    sched.sent(0.2, tag="barrier-1", regular=False)
    sched.sent(0.4, tag="barrier-2", regular=False)
    assert sched.next_due == pytest.approx(1.0)
    assert sched.acked(0.5) == "barrier-1"
    assert sched.acked(0.6) == "barrier-2"
    with pytest.raises(p.ProtocolError):
        sched.acked(0.7)
    # an outstanding barrier older than one interval also means dead
    sched.sent(1.0, tag="r")
    assert sched.deadline() == pytest.approx(11.0)
    assert sched.poll(11.0) is p.BeatDecision.DEAD


# --- client session ---------------------------------------------------------------------------


def test_producer_session_handshake_and_submit_rules() -> None:
    s = p.ClientSession(p.IdentifyType.USER, "tok", jitter_u=0.0)
    sub = p.Submit.reading(p.DataType.STEPS, TS, val=3)
    with pytest.raises(p.ProtocolError):
        s.submit(sub)  # nothing before HELLO/READY
    with pytest.raises(p.ProtocolError):
        s.heartbeat(0.0)  # no heartbeat before HELLO
    with pytest.raises(p.ProtocolError) as info:
        s.receive('{"op":4}', 0.0)  # READY before HELLO
    assert info.value.close_code == p.CloseCode.UNKNOWN_OPCODE

    s = p.ClientSession(p.IdentifyType.USER, "tok", jitter_u=0.0)
    hello = s.receive('{"op":2,"d":{"heartbeat_interval":40000}}', 0.0)
    assert isinstance(hello, p.HelloReceived)
    assert json.loads(hello.reply) == {"op": 3, "d": {"token": "tok", "type": 0}}
    assert hello.heartbeat_interval_s == 40.0
    with pytest.raises(p.ProtocolError):
        s.submit(sub)  # not before READY
    with pytest.raises(p.ProtocolError):
        s.receive('{"op":2,"d":{"heartbeat_interval":40000}}', 0.1)  # second HELLO
    assert isinstance(s.receive('{"op":4}', 0.2), p.ReadyReceived)
    assert json.loads(s.submit(sub))["op"] == 6
    with pytest.raises(p.ProtocolError):
        s.replay(1, 2)  # REPLAY is for consumers
    with pytest.raises(p.ProtocolError):
        s.receive('{"op":5,"d":{},"uid":"u","seq":1,"t":"STEPS"}', 0.3)  # not for producers


def test_consumer_session_receives_dispatch_and_may_replay() -> None:
    s = p.ClientSession(p.IdentifyType.DEVELOPER, "tok", jitter_u=0.3)
    s.receive('{"op":2,"d":{"heartbeat_interval":1000}}', 0.0)
    with pytest.raises(p.ProtocolError):
        s.replay(1, 5)
    s.receive('{"op":4}', 0.0)
    assert json.loads(s.replay(1, 5)) == {"op": 7, "d": {"after": 1, "before": 5}}
    with pytest.raises(p.ProtocolError):
        s.check_submit()
    event = s.receive('{"op":5,"d":{"val":1},"uid":"u","seq":9,"t":"STEPS"}', 0.1)
    assert isinstance(event, p.DispatchReceived) and event.dispatch.seq == 9
    beat = s.heartbeat(0.5, tag=7)
    assert beat == '{"op":0}'
    ack = s.receive('{"op":1}', 0.6)
    assert isinstance(ack, p.AckReceived) and ack.tag == 7


# --- server session ---------------------------------------------------------------------------


def _server(now: float = 0.0) -> p.ServerSession:
    return p.ServerSession(now, heartbeat_interval_ms=1000, identify_timeout_s=15.0,
                           heartbeat_leeway_s=0.5)


def _ready(kind: p.IdentifyType) -> p.ServerSession:
    s = _server()
    assert s.hello() == '{"op":2,"d":{"heartbeat_interval":1000}}'
    ev = s.receive(json.dumps({"op": 3, "d": {"token": "t", "type": int(kind)}}), 0.0)
    assert isinstance(ev, p.IdentifyRequested) and ev.token == "t"
    assert s.accept(0.0) == '{"op":4}'
    return s


def _close_code(ev: p.ServerEvent) -> int:
    assert isinstance(ev, p.CloseRequested), ev
    return int(ev.code)


def test_server_requires_identify_before_anything_else() -> None:
    s = _server()
    assert _close_code(s.receive('{"op":6,"d":{"val":1},"t":"STEPS"}', 0.0)) == 4004
    s = _server()
    assert _close_code(s.receive('{"op":7,"d":{"after":1}}', 0.0)) == 4004


def test_server_identify_timeout_is_4000() -> None:
    s = _server()
    # before IDENTIFY only the identify deadline counts, even with a short heartbeat interval
    assert s.deadline() == 15.0
    assert s.check(5.0) is None
    s = p.ServerSession(0.0, heartbeat_interval_ms=40000, identify_timeout_s=15.0)
    assert s.check(14.9) is None
    ev = s.check(15.0)
    assert ev is not None and ev.code == 4000


def test_server_second_identify_is_4003_and_bad_token_4001() -> None:
    s = _ready(p.IdentifyType.USER)
    assert _close_code(s.receive('{"op":3,"d":{"token":"t","type":0}}', 1.0)) == 4003
    s = _server()
    s.receive('{"op":3,"d":{"token":"t","type":0}}', 0.0)
    assert s.reject().code == 4001


def test_server_role_rules() -> None:
    producer = _ready(p.IdentifyType.USER)
    ev = producer.receive('{"op":6,"d":{"ts":"' + TS + '","val":1},"t":"STEPS"}', 0.1)
    assert isinstance(ev, p.SubmitRequested) and ev.submit.val == 1
    assert _close_code(producer.receive('{"op":7,"d":{"after":1,"before":3}}', 0.2)) == 4004

    consumer = _ready(p.IdentifyType.DEVELOPER)
    ev2 = consumer.receive('{"op":7,"d":{"after":1,"before":3}}', 0.1)
    assert isinstance(ev2, p.ReplayRequested) and ev2.replay == p.Replay(1, 3)
    consumer2 = _ready(p.IdentifyType.DEVELOPER)
    assert _close_code(consumer2.receive('{"op":6,"d":{"val":1},"t":"STEPS"}', 0.1)) == 4004

    for server_op in ('{"op":1}', '{"op":4}', '{"op":2,"d":{"heartbeat_interval":5}}'):
        s = _ready(p.IdentifyType.USER)
        assert _close_code(s.receive(server_op, 0.1)) == 4004
    s = _ready(p.IdentifyType.USER)
    assert _close_code(s.receive('{"op":99}', 0.1)) == 4004
    s = _ready(p.IdentifyType.USER)
    assert _close_code(s.receive("{not json", 0.1)) == 1007


def test_server_heartbeats_are_acked_and_missing_ones_close_4005() -> None:
    s = _ready(p.IdentifyType.USER)
    ev = s.receive('{"op":0}', 1.0)
    assert isinstance(ev, p.HeartbeatRequested) and ev.reply == '{"op":1}'
    assert s.check(2.4) is None
    assert s.deadline() == pytest.approx(2.5)
    closed = s.check(2.5)
    assert closed is not None and closed.code == 4005
    # once closed, further input is ignored with a normal close
    assert isinstance(s.receive('{"op":0}', 3.0), p.CloseRequested)
