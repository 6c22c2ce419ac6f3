"""Reader and writer for recording directories in the ``agent-recording/1`` format.

A recording is one directory per session holding ``meta.json`` plus one gzip'd CSV per raw stream
(``acc``, ``gyro``, ``hr``, ``pressure``, ``rsc``); see ``../shared/datasets/README.md``. The same
format serves field data collection (``agent run --record``), replay and the accuracy benchmark,
so the reader is strict about structure (clear :class:`RecordingError` naming file and line) but
fast: each file is decompressed in one call, numeric streams are parsed with
:func:`numpy.loadtxt` on the whole text, and only on failure re-scanned row by row to point at the
offending line. Rows whose timestamp is not after an earlier row's are dropped with a warning
(a host clock set back while recording), never silently.

The one thing the reader forgives is an abrupt end. Field boards lose power and agents get
SIGKILLed, which leaves a gzip stream without its end-of-stream marker and possibly a half-written
last row; throwing away a study session for that would be worse than losing its last seconds. So
the complete rows before the cut are returned and :attr:`Recording.warnings` says what was dropped.
Damage anywhere else (bad gzip magic, a CRC or deflate error, a bad row before the last line) is
still a :class:`RecordingError`.

The writer opens a stream lazily on its first sample (a session without a barometer has no
``pressure.csv.gz``), rewrites ``meta.json`` whenever the list of streams changes, and flushes the
gzip members periodically so a crash loses at most a few seconds of data (the reader accepts the
truncated tail of a stream that was sync-flushed).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeAlias, TypeVar

import numpy as np
from numpy.typing import NDArray

from sensors.base import (
    AccBlock,
    BatterySample,
    GyroBlock,
    HeartRateSample,
    PressureSample,
    RscSample,
    SensorSample,
)

FloatArray: TypeAlias = NDArray[np.float64]

FORMAT = "agent-recording/1"

#: Header of each stream, by stream stem.
HEADERS: dict[str, tuple[str, ...]] = {
    "acc": ("t", "x", "y", "z"),
    "gyro": ("t", "x", "y", "z"),
    "hr": ("t", "bpm", "rr"),
    "pressure": ("t", "hpa"),
    "rsc": ("t", "speed_mps", "cadence_spm", "stride_m", "total_m"),
}

HrRow: TypeAlias = tuple[float, float, tuple[float, ...]]
_Row = TypeVar("_Row")

#: How many session directories the "this is a --record folder" hint names.
_SESSIONS_SHOWN = 3

#: A line that :func:`numpy.loadtxt` would treat as data (not blank, not a ``#`` comment).
_DATA_LINE = re.compile(r"^[ \t]*[^#\s]", re.MULTILINE)


class RecordingError(ValueError):
    """A recording directory or one of its files is malformed; the message names file and line."""


@dataclass(frozen=True, slots=True, eq=False)
class Recording:
    """One loaded recording. Streams absent from the directory are ``None``.

    ``rsc`` maps column name (``t``, ``speed_mps``, ``cadence_spm``, ``stride_m``, ``total_m``) to
    a float array; missing optional values (stride, total) are NaN. ``truth`` is the content of
    ``truth.json`` when present (evaluation data only, never part of a live recording).
    ``warnings`` are human-readable notes about data the reader dropped but could live without
    (a stream cut off by a crash or power loss); callers should show them to the user.
    """

    path: Path
    meta: dict[str, Any]
    acc_t: FloatArray | None = None
    acc: FloatArray | None = None
    gyro_t: FloatArray | None = None
    gyro: FloatArray | None = None
    hr: tuple[HrRow, ...] | None = None
    pressure_t: FloatArray | None = None
    pressure_hpa: FloatArray | None = None
    rsc: dict[str, FloatArray] | None = None
    truth: dict[str, Any] | None = None
    warnings: tuple[str, ...] = ()


def _stream_file(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.csv.gz", f"{stem}.csv"):
        p = directory / name
        if p.is_file():
            return p
    return None


def _gunzip(raw: bytes) -> tuple[bytes, bool]:
    """Decompress every gzip member in ``raw``; return the data and whether it was cut short.

    :mod:`zlib` is used instead of :mod:`gzip` because it hands back everything decompressed
    before the input ran out (``gzip`` raises ``EOFError`` and, behind its buffered reader, may
    drop the last chunk), and it still raises :class:`zlib.error` for wrong magic, corrupt deflate
    data and CRC/length mismatches. Zero padding between or after members is skipped, as
    :mod:`gzip` does.
    """
    out: list[bytes] = []
    data = raw
    while True:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out.append(d.decompress(data))
        out.append(d.flush())
        if not d.eof:
            return b"".join(out), True
        data = d.unused_data.lstrip(b"\0")
        if not data:
            return b"".join(out), False


@dataclass(frozen=True, slots=True)
class _Body:
    """The data rows of one stream file (text after the header) and what was cut off its end."""

    text: str
    #: ``None`` for an intact file; else builds the warning from the number of rows read
    note: Callable[[int], str] | None = None


def _fields(line: str) -> list[str]:
    return next(csv.reader([line]), [])


def _read_body(path: Path, stem: str, parse_row: Callable[[list[str]], object]) -> _Body:
    """Read a stream file, check its header and split off an incomplete last line.

    A last line without a newline is dropped when the gzip stream was cut short (even if it
    parses: ``9.8`` may be the first digits of ``9.81``), and in an intact file only when
    ``parse_row`` rejects it (a hand-made CSV may simply lack the final newline).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecordingError(f"{path}: unreadable ({exc})") from exc
    if path.name.endswith(".gz"):
        try:
            data, truncated = _gunzip(raw)
        except zlib.error as exc:
            raise RecordingError(f"{path}: unreadable (not gzip or corrupt: {exc})") from exc
    else:
        data, truncated = raw, False
    if b"\n" not in data and b"\r" in data:
        data = data.replace(b"\r", b"\n")  # classic Mac line endings (CR only)
    cut = data.rfind(b"\n") + 1
    try:
        text = data[:cut].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordingError(f"{path}: unreadable ({exc})") from exc
    tail = data[cut:].decode("utf-8", errors="replace")
    if not text:
        if truncated or not data:
            how = "is empty" if not raw else "ends abruptly before the end of its header line"
            msg = (
                f"{path}: {how} (the recording agent was stopped right after creating it); "
                "read 0 rows"
            )
            return _Body("", lambda _rows: msg)
        text, tail = tail, ""  # a header-only file without the final newline
    header, _, body = text.partition("\n")
    _check_header(path, header, stem)
    if truncated:
        partial = ", dropped the partial row after them" if tail.strip() else ""
        return _Body(
            body,
            lambda rows: (
                f"{path}: ends abruptly (the recording agent was stopped without "
                f"closing it); read {rows} complete rows{partial}"
            ),
        )
    if tail.strip():
        lineno = text.count("\n") + 1
        try:
            parse_row(_fields(tail))
        except ValueError as exc:
            reason = str(exc)
            return _Body(
                body,
                lambda rows: (
                    f"{path}:{lineno}: last line is incomplete (no newline, {reason}); "
                    f"dropped it, read {rows} complete rows"
                ),
            )
        body += tail + "\n"
    return _Body(body)


def _finish(body: _Body, rows: int, warnings: list[str]) -> None:
    if body.note is not None:
        warnings.append(body.note(rows))


def _check_header(path: Path, line: str, stem: str) -> None:
    got = tuple(c.strip() for c in line.strip().split(","))
    if got != HEADERS[stem]:
        raise RecordingError(
            f"{path}:1: header {','.join(got)!r} is not the expected {','.join(HEADERS[stem])!r}"
        )


def _data_lines(body: str) -> list[int]:
    """Line numbers (header = 1) of the data rows of ``body``: blank and ``#`` lines skipped."""
    return [
        n
        for n, line in enumerate(body.split("\n"), start=2)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _in_time_order(
    path: Path, t: FloatArray, warnings: list[str], lines: Callable[[], Sequence[int]]
) -> NDArray[np.bool_]:
    """Rows to keep: each must be later than every row before it.

    A non-finite timestamp is corrupt data (an error naming the line). A timestamp that is not
    after an earlier one is what a clock set back (NTP correcting a board without a battery-backed
    clock) leaves behind: those rows are dropped with a warning instead of making the whole
    session unreadable. ``lines`` maps row index to line number; it is only built when needed.
    """
    if not np.all(np.isfinite(t)):
        bad = int(np.flatnonzero(~np.isfinite(t))[0])
        raise RecordingError(f"{path}:{lines()[bad]}: non-finite timestamp")
    if t.size < 2:
        return np.ones(t.size, dtype=bool)
    keep = np.concatenate(([True], t[1:] > np.maximum.accumulate(t[:-1])))
    if not keep.all():
        first = int(np.flatnonzero(~keep)[0])
        warnings.append(
            f"{path}:{lines()[first]}: {int((~keep).sum())} rows not later than an earlier row "
            f"were dropped (first: {t[first]:.6f} after {float(np.max(t[:first])):.6f}; was "
            "the clock set back?)"
        )
    return keep


def _numeric_row(ncols: int) -> Callable[[list[str]], list[float]]:
    def parse(row: list[str]) -> list[float]:
        if len(row) != ncols:
            raise ValueError(f"expected {ncols} columns, got {len(row)}")
        try:
            return [float(v) for v in row]
        except ValueError:
            raise ValueError(f"non-numeric value in {','.join(row)!r}") from None

    return parse


def _locate_bad_row(path: Path, body: str, ncols: int) -> str:
    """Re-scan a numeric body to name the first bad line (only used after a fast parse failed)."""
    parse = _numeric_row(ncols)
    for lineno, row in enumerate(csv.reader(io.StringIO(body)), start=2):
        if not row or row[0].lstrip().startswith("#"):
            continue
        try:
            parse(row)
        except ValueError as exc:
            return f"{path}:{lineno}: {exc}"
    return f"{path}: malformed numeric data"


def _load_numeric(path: Path, stem: str, warnings: list[str]) -> FloatArray:
    """Load a numeric stream as an (n, ncols) float64 array, validating header and time order."""
    ncols = len(HEADERS[stem])
    body = _read_body(path, stem, _numeric_row(ncols))
    if _DATA_LINE.search(body.text) is None:  # loadtxt would warn "input contained no data"
        data = np.zeros((0, ncols))
    else:
        try:
            data = np.loadtxt(io.StringIO(body.text), delimiter=",", dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise RecordingError(_locate_bad_row(path, body.text, ncols)) from exc
        if data.shape[1] != ncols:
            raise RecordingError(f"{path}:2: expected {ncols} columns, got {data.shape[1]}")
        rows = data.shape[0]
        keep = _in_time_order(path, data[:, 0], warnings, lambda: _data_lines(body.text))
        if not keep.all():
            data = data[keep]
        _finish(body, rows, warnings)
        return data
    _finish(body, data.shape[0], warnings)
    return data


def _hr_row(row: list[str]) -> HrRow:
    if len(row) != 3:
        raise ValueError(f"expected 3 columns, got {len(row)}")
    return float(row[0]), float(row[1]), tuple(float(v) for v in row[2].split())


def _parse_rows(
    path: Path, body: _Body, parse_row: Callable[[list[str]], _Row]
) -> tuple[list[_Row], list[int]]:
    """Parse the rows of a small stream one by one; also return each row's line number."""
    rows: list[_Row] = []
    lines: list[int] = []
    for lineno, row in enumerate(csv.reader(io.StringIO(body.text)), start=2):
        if not row:
            continue
        try:
            rows.append(parse_row(row))
        except ValueError as exc:
            raise RecordingError(f"{path}:{lineno}: {exc}") from exc
        lines.append(lineno)
    return rows, lines


def _load_hr(path: Path, warnings: list[str]) -> tuple[HrRow, ...]:
    """HR rows carry a variable number of RR intervals, so they are parsed row by row (~1 Hz)."""
    body = _read_body(path, "hr", _hr_row)
    rows, lines = _parse_rows(path, body, _hr_row)
    keep = _in_time_order(
        path, np.array([r[0] for r in rows], dtype=np.float64), warnings, lambda: lines
    )
    _finish(body, len(rows), warnings)
    return tuple(r for r, k in zip(rows, keep.tolist(), strict=True) if k)


def _rsc_row(row: list[str]) -> list[float]:
    if len(row) != len(HEADERS["rsc"]):
        raise ValueError(f"expected {len(HEADERS['rsc'])} columns, got {len(row)}")
    return [float(v) if v.strip() else float("nan") for v in row]


def _load_rsc(path: Path, warnings: list[str]) -> dict[str, FloatArray]:
    """RSC rows may leave stride/total empty (the pod did not report them): read them as NaN."""
    names = HEADERS["rsc"]
    body = _read_body(path, "rsc", _rsc_row)
    rows, lines = _parse_rows(path, body, _rsc_row)
    data = np.array(rows, dtype=np.float64).reshape(-1, len(names))
    data = data[_in_time_order(path, data[:, 0], warnings, lambda: lines)]
    _finish(body, len(rows), warnings)
    return {n: data[:, i].copy() for i, n in enumerate(names)}


def _missing_meta(directory: Path, meta_path: Path) -> str:
    """Explain a missing ``meta.json``, pointing at sessions when given the ``--record`` root."""
    try:
        sessions = sorted(p for p in directory.iterdir() if (p / "meta.json").is_file())
    except OSError:
        sessions = []
    if not sessions:
        return f"{meta_path}: missing (not a recording directory)"
    # session names are the start time (%Y%m%dT%H%M%S), so name order is oldest to newest
    shown = ", ".join(str(p) for p in sessions[-_SESSIONS_SHOWN:])
    if len(sessions) > _SESSIONS_SHOWN:
        shown = f"{len(sessions)} sessions (newest last): ..., {shown}"
    else:
        shown = f"sessions: {shown}"
    return (
        f"{meta_path}: missing: {directory} looks like a --record folder; replay one of its {shown}"
    )


def read_recording(path: str | Path) -> Recording:
    """Load a recording directory; raise :class:`RecordingError` on malformed input.

    A stream cut off by a crash yields its complete rows and a note in ``Recording.warnings``.
    """
    directory = Path(path)
    meta_path = directory / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RecordingError(_missing_meta(directory, meta_path)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{meta_path}: unreadable ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise RecordingError(f"{meta_path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise RecordingError(f"{meta_path}:1: format is {got!r}, expected {FORMAT!r}")

    fields: dict[str, Any] = {}
    warnings: list[str] = []
    p = _stream_file(directory, "acc")
    if p is not None:
        a = _load_numeric(p, "acc", warnings)
        fields["acc_t"], fields["acc"] = a[:, 0].copy(), a[:, 1:4].copy()
    p = _stream_file(directory, "gyro")
    if p is not None:
        g = _load_numeric(p, "gyro", warnings)
        fields["gyro_t"], fields["gyro"] = g[:, 0].copy(), g[:, 1:4].copy()
    p = _stream_file(directory, "pressure")
    if p is not None:
        pr = _load_numeric(p, "pressure", warnings)
        fields["pressure_t"], fields["pressure_hpa"] = pr[:, 0].copy(), pr[:, 1].copy()
    p = _stream_file(directory, "rsc")
    if p is not None:
        fields["rsc"] = _load_rsc(p, warnings)
    p = _stream_file(directory, "hr")
    if p is not None:
        fields["hr"] = _load_hr(p, warnings)

    truth_path = directory / "truth.json"
    if truth_path.is_file():
        try:
            truth = json.loads(truth_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordingError(f"{truth_path}: invalid ({exc})") from exc
        if not isinstance(truth, dict):
            raise RecordingError(f"{truth_path}:1: expected a JSON object")
        fields["truth"] = truth
    return Recording(path=directory, meta=meta, warnings=tuple(warnings), **fields)


def iter_recordings(folder: str | Path) -> Iterator[Path]:
    """Yield recording directories (those holding a ``meta.json``) under ``folder``, sorted."""
    root = Path(folder)
    if (root / "meta.json").is_file():
        yield root
        return
    for meta in sorted(root.rglob("meta.json")):
        yield meta.parent


def _fmt(v: float | None) -> str:
    return "" if v is None else repr(float(v))


class RecordingWriter:
    """Write raw samples into a recording directory, one gzip'd CSV per stream.

    ``meta`` is merged into ``meta.json`` (``format`` and ``streams`` are set by the writer).
    Streams are flushed (gzip sync flush) at most every ``flush_interval_s`` of wall time so a
    crash loses little; ``close()`` finishes every gzip member and writes the final ``meta.json``.
    Battery samples are not part of the format and are ignored.
    """

    def __init__(
        self,
        directory: str | Path,
        meta: dict[str, Any],
        *,
        flush_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._meta = {k: v for k, v in meta.items() if k not in ("format", "streams")}
        self._streams: dict[str, tuple[gzip.GzipFile, IO[str]]] = {}
        self._flush_interval = flush_interval_s
        self._clock = clock
        self._last_flush = clock()
        self._closed = False
        self._write_meta()

    def _write_meta(self) -> None:
        meta = {"format": FORMAT, "streams": [f"{s}.csv.gz" for s in self._streams], **self._meta}
        tmp = self.directory / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        tmp.replace(self.directory / "meta.json")

    def _stream(self, stem: str) -> IO[str]:
        s = self._streams.get(stem)
        if s is None:
            gz = gzip.GzipFile(self.directory / f"{stem}.csv.gz", "wb", compresslevel=6)
            text = io.TextIOWrapper(gz, encoding="utf-8", newline="")
            text.write(",".join(HEADERS[stem]) + "\n")
            s = (gz, text)
            self._streams[stem] = s
            self._write_meta()
        return s[1]

    def write(self, sample: SensorSample) -> None:
        """Append one sample (or block) to its stream; opens the stream on first use."""
        if self._closed:
            raise RecordingError(f"{self.directory}: writer is closed")
        if isinstance(sample, AccBlock | GyroBlock):
            stem = "acc" if isinstance(sample, AccBlock) else "gyro"
            t = np.asarray(sample.t, dtype=np.float64).reshape(-1, 1)
            xyz = np.asarray(sample.xyz, dtype=np.float64).reshape(-1, 3)
            if t.shape[0] != xyz.shape[0]:
                raise RecordingError(f"{stem} block: {t.shape[0]} times but {xyz.shape[0]} rows")
            if t.shape[0]:
                buf = io.StringIO()
                np.savetxt(
                    buf, np.hstack([t, xyz]), fmt=["%.6f", "%.7g", "%.7g", "%.7g"], delimiter=","
                )
                self._stream(stem).write(buf.getvalue())
        elif isinstance(sample, HeartRateSample):
            if sample.contact is False:
                # no skin contact: whatever the strap sent is not a heart rate. The format has no
                # contact column; bpm 0 without RR keeps the gap visible and replays exactly as
                # live processing treats the notification (dropped).
                self._stream("hr").write(f"{sample.t:.6f},0,\n")
            else:
                rr = " ".join(f"{v:g}" for v in sample.rr_ms)
                self._stream("hr").write(f"{sample.t:.6f},{sample.bpm:g},{rr}\n")
        elif isinstance(sample, PressureSample):
            self._stream("pressure").write(f"{sample.t:.6f},{sample.hpa!r}\n")
        elif isinstance(sample, RscSample):
            self._stream("rsc").write(
                f"{sample.t:.6f},{sample.speed_mps!r},{sample.cadence_spm!r},"
                f"{_fmt(sample.stride_m)},{_fmt(sample.total_m)}\n"
            )
        elif isinstance(sample, BatterySample):
            return
        now = self._clock()
        if now - self._last_flush >= self._flush_interval:
            self.flush()

    def flush(self) -> None:
        """Push buffered rows to disk as a complete deflate block (readable after a crash)."""
        for gz, text in self._streams.values():
            text.flush()
            gz.flush(zlib.Z_SYNC_FLUSH)
        self._last_flush = self._clock()

    def close(self) -> None:
        """Finish every stream and write the final ``meta.json``; idempotent."""
        if self._closed:
            return
        self._closed = True
        for _gz, text in self._streams.values():
            text.close()
        self._write_meta()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
