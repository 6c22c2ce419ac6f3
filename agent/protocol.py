"""Sans-I/O core of the Terra Streaming Protocol (producer, consumer and server side).

Theory of operation
-------------------
Nothing here touches a socket, an event loop or a clock: text goes in, typed events and text come
out, and every time is passed in by the caller. The asyncio layers (:mod:`agent.uplink`,
:mod:`agent.relay`, :mod:`agent.watch`) only pump frames between a websocket and these objects,
so every rule of the protocol is testable without a network (the models are the websockets
library's ``protocol.py`` and h11's ``_state.py``).

Wire format (``../shared/seed`` and ``../shared/protocol/NOTES.md``)::

    server                                   client
      | --- HELLO {"heartbeat_interval": ms} --> |
      | <-- IDENTIFY {"token": t, "type": 0|1} - |   exactly once, within 15 s
      | --- READY -----------------------------> |
      | <-- HEARTBEAT --------------------------- |   first at interval*U(0.1,1), then each interval
      | --- HEARTBEAT_ACK ----------------------> |
      | <-- SUBMIT (producer only) -------------- |
      | --- DISPATCH (to consumers) ------------> |
      | <-- REPLAY (consumer only) -------------- |

Errors: :func:`parse` raises exactly one exception type, :class:`ProtocolError`, whose
``close_code`` is the code a server must close with (1007 for text that is not a JSON object or
has fields of the wrong type or value, 4004 for an unknown opcode or one not allowed for the
connection type). Client-side policy for every close code lives in one table,
:data:`CLOSE_POLICY`.

Exception tree::

    ProtocolError (close_code, message)   malformed or misplaced frame
"""

from __future__ import annotations

import enum
import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, ClassVar, Final, TypeAlias, TypeGuard

# ---------------------------------------------------------------------------------------------
# Constants and their derivation
# ---------------------------------------------------------------------------------------------

#: HELLO interval Terra's broker announces (NOTES.md: 40000 ms).
DEFAULT_HEARTBEAT_INTERVAL_MS: Final = 40_000
#: A server closes with 4000 when IDENTIFY has not arrived within this many seconds (NOTES.md).
DEFAULT_IDENTIFY_TIMEOUT_S: Final = 15.0
#: Jitter bounds of the first heartbeat: older docs say U(0.1, 1.0), newer U(0, 1); 0.1–1.0 is
#: valid under both and avoids a beat at t=0 on every reconnect.
FIRST_BEAT_JITTER: Final = (0.1, 1.0)
#: Extra time a server grants beyond the interval before 4005: a client's first beat may come
#: as late as 1.0 × interval, and network latency / scheduling adds a little more. Half an
#: interval is generous without keeping a dead peer for long.
DEFAULT_HEARTBEAT_LEEWAY_FRACTION: Final = 0.5


class Opcode(enum.IntEnum):
    """Opcodes of the seed's payload format."""

    HEARTBEAT = 0
    HEARTBEAT_ACK = 1
    HELLO = 2
    IDENTIFY = 3
    READY = 4
    DISPATCH = 5
    SUBMIT = 6
    REPLAY = 7


class IdentifyType(enum.IntEnum):
    """Connection type sent in IDENTIFY."""

    USER = 0  # producer
    DEVELOPER = 1  # consumer


class DataType(enum.StrEnum):
    """Data types of the seed; ``val`` for scalars, inner ``d`` for the two vector types."""

    HEART_RATE = "HEART_RATE"
    STEPS = "STEPS"
    DISTANCE = "DISTANCE"
    FLOORS_CLIMBED = "FLOORS_CLIMBED"
    STEPS_CADENCE = "STEPS_CADENCE"
    SPEED = "SPEED"
    ACCELERATION = "ACCELERATION"
    GYROSCOPE = "GYROSCOPE"

    @property
    def is_vector(self) -> bool:
        """ACCELERATION and GYROSCOPE carry ``d: [x, y, z]`` instead of ``val``."""
        return self in VECTOR_TYPES


VECTOR_TYPES: Final = frozenset({DataType.ACCELERATION, DataType.GYROSCOPE})


class CloseCode(enum.IntEnum):
    """Close codes used by the protocol (seed table plus NOTES.md)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    ABNORMAL = 1006
    INVALID_DATA = 1007
    INTERNAL_ERROR = 1011
    IDENTIFY_EXPECTED = 4000
    BAD_TOKEN = 4001
    DUPLICATE_CONNECTION = 4002
    MULTIPLE_IDENTIFY = 4003
    UNKNOWN_OPCODE = 4004
    HEARTBEAT_EXPECTED = 4005

    @property
    def explanation(self) -> str:
        """Human explanation of the code, as in the seed's close-code table."""
        return CLOSE_EXPLANATIONS[self]


CLOSE_EXPLANATIONS: Final[Mapping[CloseCode, str]] = {
    CloseCode.NORMAL: "Normal closure",
    CloseCode.GOING_AWAY: "Server is shutting down",
    CloseCode.UNSUPPORTED_DATA: "Malformed frame",
    CloseCode.ABNORMAL: "Connection lost without a close frame",
    CloseCode.INVALID_DATA: "Invalid or unrecognised JSON data was provided",
    CloseCode.INTERNAL_ERROR: "Server internal error",
    CloseCode.IDENTIFY_EXPECTED: "IDENTIFY payload expected but was not received",
    CloseCode.BAD_TOKEN: "Improper token was passed for IDENTIFY",
    CloseCode.DUPLICATE_CONNECTION: "Duplicate connection opened",
    CloseCode.MULTIPLE_IDENTIFY: "Multiple IDENTIFY payloads received",
    CloseCode.UNKNOWN_OPCODE: "Unrecognised opcode was received",
    CloseCode.HEARTBEAT_EXPECTED: "Heartbeat expected but not received",
}


class ClientAction(enum.StrEnum):
    """What a client does after its connection closed with a given code."""

    RECONNECT = "reconnect"  # reconnect (with the ordinary backoff)
    NEW_TOKEN = "new_token"  # mint a fresh token, reconnect; repeated failures back off to max
    BACKOFF_MAX = "backoff_max"  # someone else holds this identity: wait the maximum backoff
    STOP = "stop"  # our own bug: retrying cannot help; stop and report


@dataclass(frozen=True, slots=True)
class ClosePolicy:
    """One row of the NOTES.md client policy table."""

    action: ClientAction
    report: bool
    advice: str


#: The client close-code policy table of NOTES.md, in one place.
CLOSE_POLICY: Final[Mapping[int, ClosePolicy]] = {
    1000: ClosePolicy(ClientAction.RECONNECT, False, "normal closure: reconnect if still running"),
    1001: ClosePolicy(ClientAction.RECONNECT, False, "server shutting down: reconnecting"),
    1003: ClosePolicy(ClientAction.STOP, True, "malformed frame: client bug, not retrying"),
    1006: ClosePolicy(ClientAction.RECONNECT, False, "network loss: reconnect with backoff"),
    1007: ClosePolicy(ClientAction.STOP, True, "server rejected our JSON: client bug"),
    1011: ClosePolicy(ClientAction.RECONNECT, False, "server error: reconnect with backoff"),
    4000: ClosePolicy(ClientAction.STOP, True, "IDENTIFY not received in time: client bug"),
    4001: ClosePolicy(ClientAction.NEW_TOKEN, True, "token refused: minting a fresh one"),
    4002: ClosePolicy(
        ClientAction.BACKOFF_MAX,
        True,
        "another connection took over this identity: backing off to the maximum",
    ),
    4003: ClosePolicy(ClientAction.STOP, True, "multiple IDENTIFY sent: client bug"),
    4004: ClosePolicy(ClientAction.STOP, True, "opcode refused by the server: client bug"),
    4005: ClosePolicy(ClientAction.RECONNECT, False, "heartbeat missed: reconnect with backoff"),
}


def close_policy(code: int | None) -> ClosePolicy:
    """Policy for any close code, including ones the table does not name.

    No close frame at all (``None``) is a network loss (1006). Unknown codes are treated as
    transient: reconnecting with backoff never hot-loops and never gives up on a device that
    runs unattended.
    """
    if code is None:
        code = 1006
    try:
        return CLOSE_POLICY[code]
    except KeyError:
        return ClosePolicy(ClientAction.RECONNECT, True, f"unknown close code {code}: backing off")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class ProtocolError(Exception):
    """A frame that is malformed or not allowed here; ``close_code`` is what a server sends."""

    def __init__(self, close_code: CloseCode, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.message = message

    def __repr__(self) -> str:
        return f"ProtocolError({int(self.close_code)}, {self.message!r})"


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(CloseCode.INVALID_DATA, message)


# ---------------------------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------------------------


def format_ts(t: float, tz: tzinfo | None = None) -> str:
    """Unix seconds → ISO-8601 with microseconds and offset (``2022-05-04T10:26:11.268507+01:00``).

    ``tz`` defaults to UTC; pass the local zone to reproduce Terra's example exactly.
    """
    dt = datetime.fromtimestamp(t, tz or UTC)
    return dt.isoformat(timespec="microseconds")


def parse_ts(text: str) -> datetime:
    """Parse an ISO-8601 timestamp that carries an offset; raise :class:`ProtocolError` (1007)."""
    if not isinstance(text, str) or len(text) > 64:
        raise _invalid("ts must be an ISO-8601 string")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise _invalid(f"ts is not ISO-8601: {text[:40]!r}") from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise _invalid("ts must carry a UTC offset (e.g. +00:00 or Z)")
    return dt


def ts_to_unix(text: str) -> float:
    """ISO-8601 with offset → Unix seconds."""
    return parse_ts(text).timestamp()


# ---------------------------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------------------------

JsonObject: TypeAlias = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Client → server keep-alive (op 0)."""

    op: ClassVar[Opcode] = Opcode.HEARTBEAT


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    """Server → client reply to every heartbeat (op 1)."""

    op: ClassVar[Opcode] = Opcode.HEARTBEAT_ACK


@dataclass(frozen=True, slots=True)
class Hello:
    """Server → client on connect (op 2) with the heartbeat interval in milliseconds."""

    heartbeat_interval: int
    op: ClassVar[Opcode] = Opcode.HELLO


@dataclass(frozen=True, slots=True)
class Identify:
    """Client → server authentication (op 3)."""

    token: str
    type: IdentifyType
    op: ClassVar[Opcode] = Opcode.IDENTIFY

    def __repr__(self) -> str:  # never print a token
        return f"Identify(token=<{len(self.token)} chars>, type={self.type!r})"


@dataclass(frozen=True, slots=True)
class Ready:
    """Server → client after a valid IDENTIFY (op 4, no ``d``)."""

    op: ClassVar[Opcode] = Opcode.READY


@dataclass(frozen=True, slots=True)
class Submit:
    """Producer → server reading (op 6).

    ``d`` is kept exactly as submitted so a server can dispatch it unchanged. ``ts`` is optional
    on the wire (the seed's example omits it) but our producer always sends it.
    """

    type: DataType
    d: JsonObject
    op: ClassVar[Opcode] = Opcode.SUBMIT

    @property
    def ts(self) -> str | None:
        """The reading's timestamp as submitted."""
        value = self.d.get("ts")
        return value if isinstance(value, str) else None

    @property
    def val(self) -> float | None:
        """Scalar value, for scalar types."""
        value = self.d.get("val")
        return float(value) if isinstance(value, int | float) else None

    @property
    def vec(self) -> tuple[float, float, float] | None:
        """Vector value, for ACCELERATION and GYROSCOPE."""
        value = self.d.get("d")
        if isinstance(value, list) and len(value) == 3:
            return (float(value[0]), float(value[1]), float(value[2]))
        return None

    @classmethod
    def reading(
        cls,
        type: DataType,
        ts: str,
        val: float | None = None,
        vec: tuple[float, float, float] | None = None,
    ) -> Submit:
        """Build a SUBMIT for one reading, validating that value and type agree."""
        if type.is_vector:
            if vec is None or val is not None:
                raise ValueError(f"{type} needs vec=(x, y, z) and no val")
            d: JsonObject = {"ts": ts, "d": [float(vec[0]), float(vec[1]), float(vec[2])]}
        else:
            if val is None or vec is not None:
                raise ValueError(f"{type} needs val and no vec")
            d = {"ts": ts, "val": val}
        return cls(type, validate_submit_data(type, d))


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Server → consumer event (op 5)."""

    d: JsonObject
    uid: str
    seq: int
    t: str
    op: ClassVar[Opcode] = Opcode.DISPATCH


@dataclass(frozen=True, slots=True)
class Replay:
    """Consumer → server request (op 7): re-deliver DISPATCHes with ``after < seq < before``."""

    after: int
    before: int | None = None
    op: ClassVar[Opcode] = Opcode.REPLAY


Payload: TypeAlias = (
    Heartbeat | HeartbeatAck | Hello | Identify | Ready | Submit | Dispatch | Replay
)

#: Which side may send which opcode.
CLIENT_OPCODES: Final = frozenset(
    {Opcode.HEARTBEAT, Opcode.IDENTIFY, Opcode.SUBMIT, Opcode.REPLAY}
)
SERVER_OPCODES: Final = frozenset(
    {Opcode.HEARTBEAT_ACK, Opcode.HELLO, Opcode.READY, Opcode.DISPATCH}
)


def _reject_constant(name: str) -> Any:
    raise _invalid(f"{name} is not valid JSON")


#: One decoder for every frame (``json.loads`` with options builds a new one per call).
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def _loads(text: str | bytes) -> JsonObject:
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid("frame is not UTF-8 text") from None
    try:
        obj = _DECODER.decode(text)
    except ProtocolError:
        raise
    except (ValueError, RecursionError):
        raise _invalid("frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _invalid("frame is not a JSON object")
    return obj


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    )


def _data_object(obj: JsonObject, *, required: bool) -> JsonObject:
    d = obj.get("d")
    if d is None:
        if required:
            raise _invalid("payload needs an object in 'd'")
        return {}
    if not isinstance(d, dict):
        raise _invalid("'d' must be a JSON object")
    return d


def parse_data_type(value: object) -> DataType:
    """Validate a data type name (the ``t`` field)."""
    if not isinstance(value, str):
        raise _invalid("'t' must be a data type name")
    try:
        return DataType(value)
    except ValueError:
        raise _invalid(f"unknown data type {value[:40]!r}") from None


_SCALAR_KEYS: Final = frozenset({"ts", "val"})
_VECTOR_KEYS: Final = frozenset({"ts", "d"})


def validate_submit_data(type: DataType, d: JsonObject) -> JsonObject:
    """Check a SUBMIT's ``d``: ``ts`` ISO-8601 with offset; ``val`` or ``d``; nothing else.

    Returns ``d`` unchanged so a server can dispatch it as submitted.
    """
    allowed = _VECTOR_KEYS if type.is_vector else _SCALAR_KEYS
    extra = set(d) - allowed
    if extra:
        raise _invalid(f"unexpected field(s) in {type} data: {sorted(extra)[:5]}")
    if "ts" in d:
        parse_ts(d["ts"])
    if type.is_vector:
        vec = d.get("d")
        if not (isinstance(vec, list) and len(vec) == 3 and all(_is_number(x) for x in vec)):
            raise _invalid(f"{type} needs 'd': [x, y, z] with three finite numbers")
    else:
        if not _is_number(d.get("val")):
            raise _invalid(f"{type} needs a finite number in 'val'")
    return d


def parse(text: str | bytes) -> Payload:
    """Parse one frame of either direction into a typed payload.

    Raises :class:`ProtocolError` with 1007 for anything that is not a JSON object with fields of
    the right type and value, and 4004 for an opcode that does not exist.
    """
    obj = _loads(text)
    op_value = obj.get("op")
    if not _is_int(op_value):
        raise _invalid("'op' must be an integer")
    try:
        op = Opcode(op_value)
    except ValueError:
        raise ProtocolError(CloseCode.UNKNOWN_OPCODE, f"unknown opcode {op_value}") from None

    if op is Opcode.HEARTBEAT:
        _data_object_or_any(obj)
        return Heartbeat()
    if op is Opcode.HEARTBEAT_ACK:
        _data_object_or_any(obj)
        return HeartbeatAck()
    if op is Opcode.READY:
        _data_object_or_any(obj)
        return Ready()
    if op is Opcode.HELLO:
        d = _data_object(obj, required=True)
        interval = d.get("heartbeat_interval")
        if not _is_int(interval) or interval <= 0:
            raise _invalid("HELLO needs a positive integer heartbeat_interval")
        return Hello(interval)
    if op is Opcode.IDENTIFY:
        d = _data_object(obj, required=True)
        token, kind = d.get("token"), d.get("type")
        if not isinstance(token, str):
            raise _invalid("IDENTIFY needs a string token")
        if not _is_int(kind) or kind not in (0, 1):
            raise _invalid("IDENTIFY type must be 0 (producer) or 1 (consumer)")
        return Identify(token, IdentifyType(kind))
    if op is Opcode.SUBMIT:
        d = _data_object(obj, required=True)
        type_ = parse_data_type(obj.get("t"))
        return Submit(type_, validate_submit_data(type_, d))
    if op is Opcode.DISPATCH:
        d = _data_object(obj, required=True)
        uid, seq, t = obj.get("uid"), obj.get("seq"), obj.get("t")
        if not isinstance(uid, str) or not _is_int(seq) or not isinstance(t, str):
            raise _invalid("DISPATCH needs string uid, integer seq and string t")
        return Dispatch(d, uid, seq, t)
    # REPLAY
    d = _data_object(obj, required=True)
    after, before = d.get("after"), d.get("before")
    if not _is_int(after):
        raise _invalid("REPLAY needs an integer 'after'")
    if before is not None and not _is_int(before):
        raise _invalid("REPLAY 'before' must be an integer")
    return Replay(after, before)


def _data_object_or_any(obj: JsonObject) -> None:
    """Opcodes without data accept an absent, null or object ``d`` (Discord-style clients)."""
    d = obj.get("d")
    if d is not None and not isinstance(d, dict | int):
        raise _invalid("'d' must be a JSON object")


def _dumps(obj: JsonObject) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def serialize(payload: Payload) -> str:
    """Serialize a payload to compact JSON text, exactly as the seed shapes it."""
    if isinstance(payload, Heartbeat | HeartbeatAck | Ready):
        return _dumps({"op": int(payload.op)})
    if isinstance(payload, Hello):
        return _dumps({"op": 2, "d": {"heartbeat_interval": payload.heartbeat_interval}})
    if isinstance(payload, Identify):
        return _dumps({"op": 3, "d": {"token": payload.token, "type": int(payload.type)}})
    if isinstance(payload, Submit):
        return _dumps({"op": 6, "d": payload.d, "t": str(payload.type)})
    if isinstance(payload, Dispatch):
        return serialize_dispatch(payload.d, payload.uid, payload.seq, payload.t)
    d: JsonObject = {"after": payload.after}
    if payload.before is not None:
        d["before"] = payload.before
    return _dumps({"op": 7, "d": d})


def serialize_dispatch(d: JsonObject | str, uid: str, seq: int, t: str) -> str:
    """DISPATCH text; ``d`` may be pre-serialized JSON (the relay stores it that way)."""
    d_text = d if isinstance(d, str) else _dumps(d)
    return f'{{"op":5,"d":{d_text},"uid":{_dumps_str(uid)},"seq":{int(seq)},"t":{_dumps_str(t)}}}'


def _dumps_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def submit_text(type: DataType, ts: str, val: float | None = None,
                vec: tuple[float, float, float] | None = None) -> str:
    """Fast path for the producer: SUBMIT text for one reading (no validation round-trip)."""
    if vec is not None:
        inner = f'{{"ts":"{ts}","d":[{_num(vec[0])},{_num(vec[1])},{_num(vec[2])}]}}'
    else:
        if val is None:
            raise ValueError("scalar reading without val")
        inner = f'{{"ts":"{ts}","val":{_num(val)}}}'
    return f'{{"op":6,"d":{inner},"t":"{type.value}"}}'


def _num(x: float) -> str:
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    if not math.isfinite(x):
        raise ValueError("readings must be finite numbers")
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


# ---------------------------------------------------------------------------------------------
# Heartbeats (client side)
# ---------------------------------------------------------------------------------------------


class BeatDecision(enum.Enum):
    """What the heartbeat scheduler wants at a given time."""

    WAIT = "wait"
    SEND = "send"
    DEAD = "dead"


def first_beat_delay(interval_s: float, u: float) -> float:
    """Delay of the first heartbeat: ``interval × U(0.1, 1.0)`` given ``u`` uniform in [0, 1)."""
    lo, hi = FIRST_BEAT_JITTER
    return interval_s * (lo + (hi - lo) * u)


@dataclass(slots=True)
class HeartbeatScheduler:
    """Heartbeat timing as a function of times passed in.

    Regular beats: the first at ``start + interval × U(0.1, 1.0)``, then one every interval after
    the previous regular beat. Extra beats (delivery barriers) may be sent between them; they
    never move the regular schedule. A beat still un-ACKed after a whole interval means the
    connection is dead: for regular beats alone this is exactly "the previous beat is un-ACKed
    when the next is due". ACKs arrive in order on one connection, so each ACK answers the oldest
    outstanding beat; ``acked()`` returns the tag given when that beat was sent.
    """

    interval_s: float
    next_due: float
    outstanding: deque[tuple[float, object]] = field(default_factory=deque)
    last_ack: float | None = None

    @classmethod
    def start(cls, interval_s: float, now: float, u: float) -> HeartbeatScheduler:
        """Create a scheduler at ``now`` with jitter draw ``u`` in [0, 1)."""
        if interval_s <= 0:
            raise ValueError("heartbeat interval must be positive")
        return cls(interval_s, now + first_beat_delay(interval_s, u))

    def poll(self, now: float) -> BeatDecision:
        """Decide at ``now``: dead connection, regular beat due, or wait until :meth:`deadline`."""
        if self.outstanding and now - self.outstanding[0][0] >= self.interval_s:
            return BeatDecision.DEAD
        if now >= self.next_due:
            return BeatDecision.SEND
        return BeatDecision.WAIT

    def deadline(self) -> float:
        """Next time :meth:`poll` may change its answer."""
        due = self.next_due
        if self.outstanding:
            due = min(due, self.outstanding[0][0] + self.interval_s)
        return due

    def sent(self, now: float, tag: object = None, *, regular: bool = True) -> None:
        """Record a beat sent at ``now``; a regular beat schedules the next one."""
        self.outstanding.append((now, tag))
        if regular:
            self.next_due = max(self.next_due, now) + self.interval_s
            # never schedule in the past after a stall: one beat, not a burst
            if self.next_due <= now:
                self.next_due = now + self.interval_s

    def acked(self, now: float) -> object:
        """Record a HEARTBEAT_ACK; return the tag of the beat it answers.

        Raises :class:`ProtocolError` (4004-class misuse is the server's; here 1002-like) if no
        beat is outstanding: an unsolicited ACK proves nothing about delivery.
        """
        if not self.outstanding:
            raise ProtocolError(CloseCode.INVALID_DATA, "HEARTBEAT_ACK without a heartbeat")
        self.last_ack = now
        return self.outstanding.popleft()[1]


# ---------------------------------------------------------------------------------------------
# Client session (producer or consumer)
# ---------------------------------------------------------------------------------------------


class ClientState(enum.Enum):
    """Client connection states."""

    AWAIT_HELLO = "await_hello"
    AWAIT_READY = "await_ready"
    READY = "ready"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """Server said HELLO; ``reply`` is the IDENTIFY text to send now."""

    heartbeat_interval_s: float
    reply: str


@dataclass(frozen=True, slots=True)
class ReadyReceived:
    """Handshake complete."""


@dataclass(frozen=True, slots=True)
class AckReceived:
    """A HEARTBEAT_ACK; ``tag`` is what was attached to the beat it answers."""

    tag: object


@dataclass(frozen=True, slots=True)
class DispatchReceived:
    """A DISPATCH for a consumer."""

    dispatch: Dispatch
    text: str


ClientEvent: TypeAlias = HelloReceived | ReadyReceived | AckReceived | DispatchReceived

#: What a client may legally receive in each state.
_CLIENT_ALLOWED: Final[Mapping[ClientState, frozenset[Opcode]]] = {
    ClientState.AWAIT_HELLO: frozenset({Opcode.HELLO}),
    ClientState.AWAIT_READY: frozenset({Opcode.READY, Opcode.HEARTBEAT_ACK}),
    ClientState.READY: frozenset({Opcode.HEARTBEAT_ACK, Opcode.DISPATCH}),
    ClientState.CLOSED: frozenset(),
}


class ClientSession:
    """Client side of one connection: producer (``IdentifyType.USER``) or consumer.

    Feed every received text to :meth:`receive`; ask :meth:`heartbeat` for beats; build SUBMIT
    and REPLAY texts through :meth:`submit` / :meth:`replay`, which refuse what the protocol
    forbids for this connection type or state. The token is used once, for IDENTIFY.
    """

    def __init__(self, kind: IdentifyType, token: str, *, jitter_u: float) -> None:
        self.kind = kind
        self._token: str | None = token
        self._jitter_u = jitter_u
        self.state = ClientState.AWAIT_HELLO
        self.heartbeats: HeartbeatScheduler | None = None

    def receive(self, text: str | bytes, now: float) -> ClientEvent:
        """Process one server frame; raise :class:`ProtocolError` if it breaks the protocol."""
        payload = parse(text)
        allowed = _CLIENT_ALLOWED[self.state]
        if payload.op not in allowed:
            raise ProtocolError(
                CloseCode.UNKNOWN_OPCODE,
                f"server sent {payload.op.name} in state {self.state.value}",
            )
        if isinstance(payload, Hello):
            assert self._token is not None
            interval_s = payload.heartbeat_interval / 1000.0
            self.heartbeats = HeartbeatScheduler.start(interval_s, now, self._jitter_u)
            reply = serialize(Identify(self._token, self.kind))
            self._token = None
            self.state = ClientState.AWAIT_READY
            return HelloReceived(interval_s, reply)
        if isinstance(payload, Ready):
            self.state = ClientState.READY
            return ReadyReceived()
        if isinstance(payload, HeartbeatAck):
            assert self.heartbeats is not None
            return AckReceived(self.heartbeats.acked(now))
        assert isinstance(payload, Dispatch)
        if self.kind is not IdentifyType.DEVELOPER:
            raise ProtocolError(CloseCode.UNKNOWN_OPCODE, "DISPATCH sent to a producer")
        return DispatchReceived(payload, text if isinstance(text, str) else text.decode())

    def heartbeat(self, now: float, tag: object = None, *, regular: bool = True) -> str:
        """Record a beat and return its text (allowed once HELLO has arrived)."""
        if self.heartbeats is None or self.state is ClientState.CLOSED:
            raise ProtocolError(CloseCode.UNKNOWN_OPCODE, "heartbeat before HELLO")
        self.heartbeats.sent(now, tag, regular=regular)
        return serialize(Heartbeat())

    def check_submit(self) -> None:
        """Raise unless SUBMIT is allowed now (producer, after READY)."""
        if self.kind is not IdentifyType.USER:
            raise ProtocolError(CloseCode.UNKNOWN_OPCODE, "SUBMIT is for producers only")
        if self.state is not ClientState.READY:
            raise ProtocolError(CloseCode.UNKNOWN_OPCODE, "SUBMIT before READY")

    def submit(self, submit: Submit) -> str:
        """Text for a SUBMIT, checked against state and connection type."""
        self.check_submit()
        return serialize(submit)

    def replay(self, after: int, before: int | None) -> str:
        """Text for a REPLAY (consumers only, after READY)."""
        if self.kind is not IdentifyType.DEVELOPER:
            raise ProtocolError(CloseCode.UNKNOWN_OPCODE, "REPLAY is for consumers only")
        if self.state is not ClientState.READY:
            raise ProtocolError(CloseCode.UNKNOWN_OPCODE, "REPLAY before READY")
        return serialize(Replay(after, before))

    def closed(self) -> None:
        """The transport closed."""
        self.state = ClientState.CLOSED


# ---------------------------------------------------------------------------------------------
# Server session
# ---------------------------------------------------------------------------------------------


class ServerState(enum.Enum):
    """Server connection states."""

    AWAIT_IDENTIFY = "await_identify"
    AWAIT_AUTH = "await_auth"  # IDENTIFY received, token being checked
    READY = "ready"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class IdentifyRequested:
    """Client sent IDENTIFY: the server checks the token, then calls ``accept`` or ``reject``."""

    token: str
    type: IdentifyType

    def __repr__(self) -> str:
        return f"IdentifyRequested(token=<redacted>, type={self.type!r})"


@dataclass(frozen=True, slots=True)
class HeartbeatRequested:
    """Client sent HEARTBEAT: reply with ``reply`` after everything received earlier is handled."""

    reply: str


@dataclass(frozen=True, slots=True)
class SubmitRequested:
    """Producer sent a valid SUBMIT."""

    submit: Submit


@dataclass(frozen=True, slots=True)
class ReplayRequested:
    """Consumer sent REPLAY."""

    replay: Replay


@dataclass(frozen=True, slots=True)
class CloseRequested:
    """The connection must be closed with ``code``."""

    code: CloseCode
    reason: str


ServerEvent: TypeAlias = (
    IdentifyRequested | HeartbeatRequested | SubmitRequested | ReplayRequested | CloseRequested
)


class ServerSession:
    """Server side of one connection.

    Rules: HELLO is sent first (:meth:`hello`); exactly one IDENTIFY (a second → 4003) within the
    identify timeout (→ 4000); SUBMIT only from producers and only after READY; REPLAY only from
    consumers after READY (otherwise 4004); server opcodes from a client → 4004; malformed text →
    1007; no heartbeat within interval + leeway → 4005. Protocol errors become
    :class:`CloseRequested` events: the session never raises on input.
    """

    def __init__(
        self,
        now: float,
        *,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
        identify_timeout_s: float = DEFAULT_IDENTIFY_TIMEOUT_S,
        heartbeat_leeway_s: float | None = None,
    ) -> None:
        self.heartbeat_interval_ms = heartbeat_interval_ms
        interval_s = heartbeat_interval_ms / 1000.0
        self.heartbeat_window_s = interval_s + (
            heartbeat_leeway_s
            if heartbeat_leeway_s is not None
            else interval_s * DEFAULT_HEARTBEAT_LEEWAY_FRACTION
        )
        self.identify_deadline = now + identify_timeout_s
        self.last_heartbeat = now
        self.state = ServerState.AWAIT_IDENTIFY
        self.kind: IdentifyType | None = None

    def hello(self) -> str:
        """Text of the HELLO to send on connect."""
        return serialize(Hello(self.heartbeat_interval_ms))

    def receive(self, text: str | bytes, now: float) -> ServerEvent:
        """Process one client frame."""
        if self.state is ServerState.CLOSED:
            return CloseRequested(CloseCode.NORMAL, "closed")
        try:
            payload = parse(text)
        except ProtocolError as exc:
            return self._close(exc.close_code, exc.message)
        if isinstance(payload, Identify):
            if self.state is not ServerState.AWAIT_IDENTIFY:
                return self._close(CloseCode.MULTIPLE_IDENTIFY, "multiple IDENTIFY payloads")
            self.state = ServerState.AWAIT_AUTH
            self.kind = payload.type
            return IdentifyRequested(payload.token, payload.type)
        if isinstance(payload, Heartbeat):
            # A heartbeat before IDENTIFY is harmless and keeps the socket alive; the identify
            # deadline still applies.
            self.last_heartbeat = now
            return HeartbeatRequested(serialize(HeartbeatAck()))
        if payload.op in SERVER_OPCODES:
            return self._close(CloseCode.UNKNOWN_OPCODE, f"{payload.op.name} is a server opcode")
        if self.state is not ServerState.READY:
            return self._close(CloseCode.UNKNOWN_OPCODE, f"{payload.op.name} before READY")
        if isinstance(payload, Submit):
            if self.kind is not IdentifyType.USER:
                return self._close(CloseCode.UNKNOWN_OPCODE, "SUBMIT from a consumer")
            return SubmitRequested(payload)
        assert isinstance(payload, Replay)
        if self.kind is not IdentifyType.DEVELOPER:
            return self._close(CloseCode.UNKNOWN_OPCODE, "REPLAY from a producer")
        return ReplayRequested(payload)

    def accept(self, now: float) -> str:
        """Token accepted: the session is READY; returns the READY text."""
        if self.state is not ServerState.AWAIT_AUTH:
            raise RuntimeError("accept() without a pending IDENTIFY")
        self.state = ServerState.READY
        self.last_heartbeat = max(self.last_heartbeat, now)
        return serialize(Ready())

    def reject(self) -> CloseRequested:
        """Token refused (4001)."""
        return self._close(CloseCode.BAD_TOKEN, "improper token")

    def deadline(self) -> float:
        """Next time :meth:`check` may close the connection."""
        if self.state is ServerState.AWAIT_IDENTIFY:
            # Before IDENTIFY only the identify deadline applies: a silent client gets 4000,
            # whatever the heartbeat interval.
            return self.identify_deadline
        return self.last_heartbeat + self.heartbeat_window_s

    def check(self, now: float) -> CloseRequested | None:
        """Timeout rules at ``now``: 4000 for a missing IDENTIFY, 4005 for a missing heartbeat."""
        if self.state is ServerState.CLOSED:
            return None
        if self.state is ServerState.AWAIT_IDENTIFY:
            if now >= self.identify_deadline:
                return self._close(CloseCode.IDENTIFY_EXPECTED, "IDENTIFY expected")
            return None
        if self.state is ServerState.AWAIT_AUTH:
            return None  # the token check is the server's, bounded by its own timeout
        if now >= self.last_heartbeat + self.heartbeat_window_s:
            return self._close(CloseCode.HEARTBEAT_EXPECTED, "heartbeat expected")
        return None

    def _close(self, code: CloseCode, reason: str) -> CloseRequested:
        self.state = ServerState.CLOSED
        return CloseRequested(code, reason)


def identify_type_name(kind: IdentifyType | None) -> str:
    """``producer`` / ``consumer`` for logs."""
    if kind is None:
        return "unidentified"
    return "producer" if kind is IdentifyType.USER else "consumer"
