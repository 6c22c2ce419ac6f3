"""Reader and writer for recording directories in the ``agent-recording/1`` format.

A recording is one directory per session holding ``meta.json`` plus one gzip'd CSV per raw stream
(``acc``, ``gyro``, ``hr``, ``pressure``, ``rsc``); see ``../shared/datasets/README.md``. The same
format serves field data collection (``agent run --record``), replay and the accuracy benchmark,
so the reader is strict about structure (clear :class:`RecordingError` naming file and line) but
fast: numeric streams are parsed with :func:`numpy.loadtxt` straight from the gzip stream, and only
on failure re-scanned row by row to point at the offending line.

The writer opens a stream lazily on its first sample (a session without a barometer has no
``pressure.csv.gz``), rewrites ``meta.json`` whenever the list of streams changes, and flushes the
gzip members periodically so a crash loses at most a few seconds of data (gzip readers accept the
truncated tail of a stream that was sync-flushed).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeAlias

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


class RecordingError(ValueError):
    """A recording directory or one of its files is malformed; the message names file and line."""


@dataclass(frozen=True, slots=True, eq=False)
class Recording:
    """One loaded recording. Streams absent from the directory are ``None``.

    ``rsc`` maps column name (``t``, ``speed_mps``, ``cadence_spm``, ``stride_m``, ``total_m``) to
    a float array; missing optional values (stride, total) are NaN. ``truth`` is the content of
    ``truth.json`` when present (evaluation data only, never part of a live recording).
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


def _stream_file(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.csv.gz", f"{stem}.csv"):
        p = directory / name
        if p.is_file():
            return p
    return None


def _open_text(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _check_header(path: Path, line: str, stem: str) -> None:
    got = tuple(c.strip() for c in line.strip().split(","))
    if got != HEADERS[stem]:
        raise RecordingError(
            f"{path}:1: header {','.join(got)!r} is not the expected {','.join(HEADERS[stem])!r}"
        )


def _locate_bad_row(path: Path, ncols: int) -> str:
    """Re-scan a numeric CSV to name the first bad line (only used after a fast parse failed)."""
    try:
        with _open_text(path) as f:
            for lineno, row in enumerate(csv.reader(f), start=1):
                if lineno == 1 or not row:
                    continue
                if len(row) != ncols:
                    return f"{path}:{lineno}: expected {ncols} columns, got {len(row)}"
                try:
                    [float(v) for v in row]
                except ValueError:
                    return f"{path}:{lineno}: non-numeric value in {','.join(row)!r}"
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        return f"{path}: unreadable ({exc})"
    return f"{path}: malformed numeric data"


def _load_numeric(path: Path, stem: str) -> FloatArray:
    """Load a numeric stream as an (n, ncols) float64 array, validating header and time order."""
    ncols = len(HEADERS[stem])
    try:
        with _open_text(path) as f:
            header = f.readline()
            _check_header(path, header, stem)
            data = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    except RecordingError:
        raise
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path}: unreadable ({exc})") from exc
    except ValueError as exc:
        raise RecordingError(_locate_bad_row(path, ncols)) from exc
    if data.size == 0:
        return np.zeros((0, ncols))
    if data.shape[1] != ncols:
        raise RecordingError(f"{path}:2: expected {ncols} columns, got {data.shape[1]}")
    t = data[:, 0]
    if not np.all(np.isfinite(t)):
        bad = int(np.flatnonzero(~np.isfinite(t))[0])
        raise RecordingError(f"{path}:{bad + 2}: non-finite timestamp")
    back = np.flatnonzero(np.diff(t) <= 0)
    if back.size:
        i = int(back[0]) + 1
        raise RecordingError(
            f"{path}:{i + 2}: timestamp {t[i]:.6f} is not after the previous one {t[i - 1]:.6f}"
        )
    return data


def _load_hr(path: Path) -> tuple[HrRow, ...]:
    rows: list[HrRow] = []
    lineno = 0
    try:
        with _open_text(path) as f:
            reader = csv.reader(f)
            for lineno, row in enumerate(reader, start=1):
                if lineno == 1:
                    _check_header(path, ",".join(row), "hr")
                    continue
                if not row:
                    continue
                if len(row) != 3:
                    raise RecordingError(f"{path}:{lineno}: expected 3 columns, got {len(row)}")
                rr = tuple(float(v) for v in row[2].split())
                rows.append((float(row[0]), float(row[1]), rr))
    except RecordingError:
        raise
    except ValueError as exc:
        raise RecordingError(f"{path}:{lineno}: {exc}") from exc
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path}: unreadable ({exc})") from exc
    return tuple(rows)


def read_recording(path: str | Path) -> Recording:
    """Load a recording directory; raise :class:`RecordingError` on malformed input."""
    directory = Path(path)
    meta_path = directory / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RecordingError(f"{meta_path}: missing (not a recording directory)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{meta_path}: unreadable ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise RecordingError(f"{meta_path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise RecordingError(f"{meta_path}:1: format is {got!r}, expected {FORMAT!r}")

    fields: dict[str, Any] = {}
    p = _stream_file(directory, "acc")
    if p is not None:
        a = _load_numeric(p, "acc")
        fields["acc_t"], fields["acc"] = a[:, 0].copy(), a[:, 1:4].copy()
    p = _stream_file(directory, "gyro")
    if p is not None:
        g = _load_numeric(p, "gyro")
        fields["gyro_t"], fields["gyro"] = g[:, 0].copy(), g[:, 1:4].copy()
    p = _stream_file(directory, "pressure")
    if p is not None:
        pr = _load_numeric(p, "pressure")
        fields["pressure_t"], fields["pressure_hpa"] = pr[:, 0].copy(), pr[:, 1].copy()
    p = _stream_file(directory, "rsc")
    if p is not None:
        r = _load_rsc(p)
        fields["rsc"] = r
    p = _stream_file(directory, "hr")
    if p is not None:
        fields["hr"] = _load_hr(p)

    truth_path = directory / "truth.json"
    if truth_path.is_file():
        try:
            truth = json.loads(truth_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordingError(f"{truth_path}: invalid ({exc})") from exc
        if not isinstance(truth, dict):
            raise RecordingError(f"{truth_path}:1: expected a JSON object")
        fields["truth"] = truth
    return Recording(path=directory, meta=meta, **fields)


def _load_rsc(path: Path) -> dict[str, FloatArray]:
    """RSC rows may leave stride/total empty (the pod did not report them): read them as NaN."""
    names = HEADERS["rsc"]
    cols: list[list[float]] = [[] for _ in names]
    lineno = 0
    try:
        with _open_text(path) as f:
            for lineno, row in enumerate(csv.reader(f), start=1):
                if lineno == 1:
                    _check_header(path, ",".join(row), "rsc")
                    continue
                if not row:
                    continue
                if len(row) != len(names):
                    raise RecordingError(
                        f"{path}:{lineno}: expected {len(names)} columns, got {len(row)}"
                    )
                for c, v in zip(cols, row, strict=True):
                    c.append(float(v) if v.strip() else float("nan"))
    except RecordingError:
        raise
    except ValueError as exc:
        raise RecordingError(f"{path}:{lineno}: {exc}") from exc
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path}: unreadable ({exc})") from exc
    return {n: np.asarray(c, dtype=np.float64) for n, c in zip(names, cols, strict=True)}


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
