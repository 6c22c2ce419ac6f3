"""Recording format: writer -> reader round trip, validation errors, the shared datasets."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from sensors.base import (
    AccBlock,
    BatterySample,
    GyroBlock,
    HeartRateSample,
    PressureSample,
    RscSample,
)
from sensors.recording import (
    FORMAT,
    RecordingError,
    RecordingWriter,
    iter_recordings,
    read_recording,
)

T0 = 1_767_600_000.123456
REPO = Path(__file__).resolve().parents[2]
DATASETS = REPO / ".." / "shared" / "datasets"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_round_trip_every_stream(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    t = np.asarray(T0 + np.arange(200) * 0.01, dtype=np.float64)
    acc = np.asarray(rng.normal(size=(200, 3)) * 3, dtype=np.float64)
    gyr = np.asarray(rng.normal(size=(200, 3)), dtype=np.float64)
    d = tmp_path / "rec"
    with RecordingWriter(d, {"source": "test", "subject": {"height_m": 1.8}}) as w:
        w.write(AccBlock(t[:120], acc[:120]))
        w.write(AccBlock(t[120:], acc[120:]))
        w.write(GyroBlock(t, gyr))
        w.write(HeartRateSample(T0, 72.0, (810.5, 790.0)))
        w.write(HeartRateSample(T0 + 1, 73.0))
        w.write(HeartRateSample(T0 + 2, 71.0, (845.0,), contact=False))  # stored as bpm 0
        w.write(PressureSample(T0, 1013.25))
        w.write(RscSample(T0, 1.4, 110.0, 1.2, 35.5))
        w.write(RscSample(T0 + 1, 1.5, 112.0))
        w.write(BatterySample(T0, 80))
    r = read_recording(d)
    assert r.meta["format"] == FORMAT
    assert r.meta["subject"] == {"height_m": 1.8}
    assert set(r.meta["streams"]) == {
        "acc.csv.gz",
        "gyro.csv.gz",
        "hr.csv.gz",
        "pressure.csv.gz",
        "rsc.csv.gz",
    }
    assert r.acc_t is not None and r.acc is not None
    np.testing.assert_allclose(r.acc_t, t, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.acc, acc, rtol=1e-6, atol=1e-5)
    assert r.gyro is not None
    np.testing.assert_allclose(r.gyro, gyr, rtol=1e-6, atol=1e-5)
    assert r.hr is not None
    assert r.hr[0][1:] == (72.0, (810.5, 790.0))
    assert r.hr[1][1:] == (73.0, ())
    assert r.hr[2][1:] == (0.0, ())  # no skin contact: no heart rate, like live processing
    assert r.hr[0][0] == pytest.approx(T0, abs=1e-6)
    assert r.pressure_hpa is not None and r.pressure_hpa.tolist() == [1013.25]
    assert r.rsc is not None
    assert r.rsc["speed_mps"].tolist() == [1.4, 1.5]
    assert r.rsc["total_m"][0] == 35.5 and np.isnan(r.rsc["total_m"][1])
    assert r.truth is None


def test_streams_open_lazily_and_meta_lists_them(tmp_path: Path) -> None:
    w = RecordingWriter(tmp_path, {"device": "x"})
    assert json.loads((tmp_path / "meta.json").read_text())["streams"] == []
    w.write(PressureSample(T0, 1000.0))
    assert json.loads((tmp_path / "meta.json").read_text())["streams"] == ["pressure.csv.gz"]
    assert not (tmp_path / "acc.csv.gz").exists()
    w.close()
    w.close()  # idempotent
    with pytest.raises(RecordingError):
        w.write(PressureSample(T0 + 1, 1000.0))


def test_periodic_flush_makes_data_readable_before_close(tmp_path: Path) -> None:
    clock = FakeClock()
    w = RecordingWriter(tmp_path, {}, flush_interval_s=5.0, clock=clock)
    w.write(PressureSample(T0, 1000.0))
    clock.now = 6.0
    w.write(PressureSample(T0 + 1, 1001.0))  # triggers a sync flush
    # a crashed process never closes the file: the flushed prefix must still decode
    with gzip.open(tmp_path / "pressure.csv.gz", "rt") as f, pytest.raises(EOFError):
        f.read()
    raw = (tmp_path / "pressure.csv.gz").read_bytes()
    text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw).decode()
    assert text.splitlines() == ["t,hpa", f"{T0:.6f},1000.0", f"{T0 + 1:.6f},1001.0"]
    w.close()


def _write(d: Path, name: str, text: str, meta: dict[str, object] | None = None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "meta.json").write_text(json.dumps(meta or {"format": FORMAT, "streams": [name]}))
    if name.endswith(".gz"):
        with gzip.open(d / name, "wt") as f:
            f.write(text)
    else:
        (d / name).write_text(text)


def test_plain_csv_is_accepted(tmp_path: Path) -> None:
    _write(tmp_path, "acc.csv", "t,x,y,z\n1.0,0,0,9.8\n1.01,0,0,9.7\n")
    r = read_recording(tmp_path)
    assert r.acc is not None and r.acc.shape == (2, 3)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("t,a,b,c\n1,0,0,0\n", "acc.csv.gz:1: header"),
        ("t,x,y,z\n1,0,0,0\n2,0,zz,0\n", "acc.csv.gz:3: non-numeric"),
        ("t,x,y,z\n1,0,0,0\n2,0,0\n", "acc.csv.gz:3: expected 4 columns"),
        ("t,x,y,z\n1,0,0,0\nnan,0,0,0\n", "acc.csv.gz:3: non-finite timestamp"),
    ],
)
def test_bad_numeric_stream_names_file_and_line(tmp_path: Path, text: str, needle: str) -> None:
    _write(tmp_path, "acc.csv.gz", text)
    with pytest.raises(RecordingError, match=needle.replace(".", r"\.")):
        read_recording(tmp_path)


def test_bad_meta_and_hr_rows(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match=r"meta\.json: missing"):
        read_recording(tmp_path)
    _write(tmp_path, "acc.csv", "t,x,y,z\n", meta={"format": "other/2"})
    with pytest.raises(RecordingError, match="expected 'agent-recording/1'"):
        read_recording(tmp_path)
    hr = tmp_path / "hr"
    _write(hr, "hr.csv.gz", "t,bpm,rr\n1,60,1000\n2,61,9x9\n")
    with pytest.raises(RecordingError, match=r"hr\.csv\.gz:3"):
        read_recording(hr)
    broken = tmp_path / "gz"
    broken.mkdir()
    (broken / "meta.json").write_text(json.dumps({"format": FORMAT}))
    (broken / "acc.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(RecordingError, match="unreadable"):
        read_recording(broken)


def test_iter_recordings_finds_directories(tmp_path: Path) -> None:
    for name in ("b", "a"):
        _write(tmp_path / name, "acc.csv", "t,x,y,z\n")
    (tmp_path / "not-a-recording").mkdir()
    assert [p.name for p in iter_recordings(tmp_path)] == ["a", "b"]
    assert list(iter_recordings(tmp_path / "a")) == [tmp_path / "a"]


@pytest.mark.skipif(not DATASETS.is_dir(), reason=f"datasets folder absent: {DATASETS}")
def test_reads_shared_dataset_with_truth() -> None:
    path = next(iter_recordings(DATASETS / "weallwalk-sighted"))
    r = read_recording(path)
    assert r.acc is not None and r.gyro is not None and r.acc_t is not None
    assert r.acc.shape[1] == 3 and np.all(np.diff(r.acc_t) > 0)
    assert r.truth is not None and r.truth["steps"] == len(r.truth["step_times"])


# -- crashes: a stream without its gzip end-of-stream marker -----------------------------------

#: Child process for the SIGKILL test: records, sync-flushes, writes more, then waits to be killed.
_CRASHING_RECORDER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from sensors.base import AccBlock, GyroBlock
    from sensors.recording import RecordingWriter

    t0, n = float(sys.argv[2]), int(sys.argv[3])
    t = t0 + np.arange(n + 10) * 0.01
    xyz = np.column_stack([np.sin(t), np.cos(t), 9.8 + 0 * t])
    w = RecordingWriter(sys.argv[1], {"source": "crash test"})
    w.write(AccBlock(t[:n], xyz[:n]))
    w.flush()
    w.write(AccBlock(t[n:], xyz[n:]))  # stays in the compressor: lost in the crash
    w.write(GyroBlock(t[:5], xyz[:5]))  # opens gyro.csv.gz, nothing of it reaches the disk
    print("flushed", flush=True)
    sys.stdin.read()
    """
)


def test_sigkilled_recorder_leaves_a_readable_recording(tmp_path: Path) -> None:
    d = tmp_path / "session"
    n = 1000
    with subprocess.Popen(
        [sys.executable, "-c", _CRASHING_RECORDER, str(d), repr(T0), str(n)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "flushed\n"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    r = read_recording(d)
    assert r.acc_t is not None and r.acc is not None and r.gyro is not None
    t = T0 + np.arange(n) * 0.01
    np.testing.assert_allclose(r.acc_t, t, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.acc[:, 0], np.sin(t), rtol=1e-6, atol=1e-6)
    assert r.gyro.shape == (0, 3)
    assert len(r.warnings) == 2
    acc_note, gyro_note = r.warnings
    assert acc_note.startswith(f"{d / 'acc.csv.gz'}: ends abruptly")
    assert acc_note.endswith(f"read {n} complete rows")
    assert gyro_note.startswith(f"{d / 'gyro.csv.gz'}: is empty")


def _complete_rows(gz_prefix: bytes) -> tuple[int, bool]:
    """Reference: rows wholly inside a cut gzip stream, and whether a partial row follows."""
    text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(gz_prefix).decode()
    lines = text.split("\n")
    return max(len(lines) - 2, 0), lines[-1] != ""


def test_gzip_cut_anywhere_yields_the_complete_rows_and_a_warning(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n = 3000
    t = np.asarray(T0 + np.cumsum(rng.uniform(0.005, 0.02, n)), dtype=np.float64)
    acc = np.asarray(rng.normal(size=(n, 3)) * 3, dtype=np.float64)
    with RecordingWriter(tmp_path, {}) as w:
        w.write(AccBlock(t, acc))
        w.write(PressureSample(T0, 1000.0))
    path = tmp_path / "acc.csv.gz"
    full = path.read_bytes()
    assert read_recording(tmp_path).warnings == ()
    seen_partial = seen_middle = False
    # the 8-byte trailer (CRC32, size), then ever deeper into the deflate data
    for cut in (
        len(full) - 1,
        len(full) - 4,
        len(full) - 8,
        len(full) - 9,
        len(full) - 700,
        len(full) // 2,
        3000,
        200,
    ):
        path.write_bytes(full[:cut])
        rows, partial = _complete_rows(full[:cut])
        if cut >= len(full) - 8:
            assert rows == n  # only the trailer is missing: every row is there
        seen_partial |= partial
        seen_middle |= 0 < rows < n
        r = read_recording(tmp_path)
        assert r.acc_t is not None and r.acc is not None
        assert r.acc_t.shape == (rows,) and r.acc.shape == (rows, 3)
        np.testing.assert_allclose(r.acc_t, t[:rows], rtol=0, atol=1e-6)
        np.testing.assert_allclose(r.acc, acc[:rows], rtol=1e-6, atol=1e-5)
        assert r.pressure_hpa is not None and r.pressure_hpa.tolist() == [1000.0]
        (note,) = r.warnings
        assert note.startswith(f"{path}: ends abruptly (the recording agent was stopped")
        assert f"read {rows} complete rows" in note
        assert ("partial row" in note) == partial
    assert seen_partial and seen_middle


def test_a_cut_inside_the_gzip_header_is_an_empty_stream(tmp_path: Path) -> None:
    _write(tmp_path, "hr.csv.gz", "t,bpm,rr\n1,60,1000\n")
    path = tmp_path / "hr.csv.gz"
    path.write_bytes(path.read_bytes()[:6])
    r = read_recording(tmp_path)
    assert r.hr == ()
    (note,) = r.warnings
    assert note.startswith(f"{path}: ends abruptly before the end of its header line")


@pytest.mark.parametrize(
    ("name", "text", "rows", "line"),
    [
        ("acc.csv", "t,x,y,z\n1,0,0,9.8\n2,0,0,9.7\n3,0,", 2, 4),
        ("acc.csv", "t,x,y,z\n1,0,0,9.8\n2,0,0,9.7\n3,0,0,9.x", 2, 4),
        ("acc.csv.gz", "t,x,y,z\n1,0,0,9.8\n2,0", 1, 3),
        ("hr.csv", "t,bpm,rr\n1,60,1000\n2,6", 1, 3),
        ("rsc.csv", "t,speed_mps,cadence_spm,stride_m,total_m\n1,1.2,160,,\n2,1.3", 1, 3),
        ("pressure.csv", "t,hpa\n1,1000.5\n\n2,1000.4\n3,10x", 2, 5),
    ],
)
def test_incomplete_last_line_is_dropped_with_a_warning(
    tmp_path: Path, name: str, text: str, rows: int, line: int
) -> None:
    _write(tmp_path, name, text)
    r = read_recording(tmp_path)
    stem = name.split(".")[0]
    rsc_t = None if r.rsc is None else r.rsc["t"]
    got = {"acc": r.acc_t, "hr": r.hr, "rsc": rsc_t, "pressure": r.pressure_t}[stem]
    assert got is not None and len(got) == rows
    (note,) = r.warnings
    assert note.startswith(f"{tmp_path / name}:{line}: last line is incomplete (no newline")
    assert note.endswith(f"dropped it, read {rows} complete rows")


def test_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    _write(tmp_path, "acc.csv", "t,x,y,z\n1,0,0,9.8\n2,0,0,9.7")
    r = read_recording(tmp_path)
    assert r.acc is not None and r.acc[:, 2].tolist() == [9.8, 9.7]
    assert r.warnings == ()


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("acc.csv", "t,x,y,z\n1,0,0,0\n2,0\n3,0,0,0", "acc.csv:3: expected 4 columns"),
        ("acc.csv", "t,x,y,z\n1,0,0,0\n2,0,0\n3,0,0,0\n", "acc.csv:3: expected 4 columns"),
        ("hr.csv", "t,bpm,rr\n1,60,\n2,6\n3,60,", "hr.csv:3: expected 3 columns"),
        (
            "rsc.csv.gz",
            "t,speed_mps,cadence_spm,stride_m,total_m\n1,1\n2,1,1,,\n",
            "rsc.csv.gz:2: expected 5 columns",
        ),
    ],
)
def test_malformed_row_before_the_last_line_is_still_an_error(
    tmp_path: Path, name: str, text: str, needle: str
) -> None:
    _write(tmp_path, name, text)
    with pytest.raises(RecordingError, match=needle.replace(".", r"\.")):
        read_recording(tmp_path)


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


def test_corrupt_gzip_is_still_an_error(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i % 7},{i % 5},9.8\n" for i in range(1, 2000))
    good = _gz("t,x,y,z\n" + rows)
    crc = bytearray(good)
    crc[-6] ^= 0xFF
    middle = bytearray(good)
    middle[len(good) // 2] ^= 0xFF
    cases = {
        "magic": b"PK\x03\x04" + good[4:],
        "crc": bytes(crc),
        "deflate": bytes(middle),
        "junk after the member": good + b"junk",
    }
    for what, data in cases.items():
        (tmp_path / "meta.json").write_text(json.dumps({"format": FORMAT}))
        (tmp_path / "acc.csv.gz").write_bytes(data)
        with pytest.raises(RecordingError, match=r"acc\.csv\.gz: unreadable") as exc:
            read_recording(tmp_path)
        assert "ends abruptly" not in str(exc.value), what


def test_concatenated_and_zero_padded_gzip_members_are_read(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"format": FORMAT}))
    data = _gz("t,x,y,z\n1,0,0,9.8\n") + b"\0" * 3 + _gz("2,0,0,9.7\n") + b"\0" * 5
    (tmp_path / "acc.csv.gz").write_bytes(data)
    r = read_recording(tmp_path)
    assert r.acc_t is not None and r.acc_t.tolist() == [1.0, 2.0]
    assert r.warnings == ()


# -- time order, empty streams, the --record root ------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "kept", "needle"),
    [
        ("hr.csv.gz", "t,bpm,rr\n1,60,1000\n2,61,\n1.5,62,990 1010\n3,63,\n", [1, 2, 3],
         "hr.csv.gz:4: 1 rows not later than an earlier row were dropped (first: 1.500000 "
         "after 2.000000"),
        ("hr.csv", "t,bpm,rr\n1,60,\n\n2,61,\n2,62,\n", [1, 2], "hr.csv:5: 1 rows"),
        ("rsc.csv.gz",
         "t,speed_mps,cadence_spm,stride_m,total_m\n1,1,160,,\n2,1,160,,\n1.5,1,160,1.2,3\n",
         [1, 2], "rsc.csv.gz:4: 1 rows"),
        ("pressure.csv.gz", "t,hpa\n1,1000\n2,1000\n1.5,1000\n1.8,1000\n2.5,1000\n",
         [1, 2, 2.5], "pressure.csv.gz:4: 2 rows"),
        ("gyro.csv", "t,x,y,z\n1,0,0,0\n# a comment\n\n1,0,0,0\n3,0,0,0\n", [1, 3],
         "gyro.csv:5: 1 rows"),
        ("acc.csv", "t,x,y,z\r1,0,0,0\r0.5,0,0,0\r2,0,0,0\r", [1, 2], "acc.csv:3: 1 rows"),
    ],
)
def test_rows_going_back_in_time_are_dropped_with_a_warning(
    tmp_path: Path, name: str, text: str, kept: list[float], needle: str
) -> None:
    """A clock set back while recording must not make the whole session unreadable."""
    _write(tmp_path, name, text)
    rec = read_recording(tmp_path)
    stem = name.split(".")[0]
    if stem == "hr":
        times = [r[0] for r in rec.hr or ()]
    elif stem == "rsc":
        assert rec.rsc is not None
        times = rec.rsc["t"].tolist()
    else:
        arr = {"acc": rec.acc_t, "gyro": rec.gyro_t, "pressure": rec.pressure_t}[stem]
        assert arr is not None
        times = arr.tolist()
    assert times == kept
    assert any(needle in w for w in rec.warnings), rec.warnings


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("hr.csv", "t,bpm,rr\n1,60,\nnan,61,\n", "hr.csv:3: non-finite timestamp"),
        ("rsc.csv", "t,speed_mps,cadence_spm,stride_m,total_m\n,1,160,,\n",
         "rsc.csv:2: non-finite timestamp"),
        ("gyro.csv", "t,x,y,z\n1,0,0,0\n\n# c\ninf,0,0,0\n", "gyro.csv:5: non-finite"),
    ],
)
def test_non_finite_timestamps_are_errors(
    tmp_path: Path, name: str, text: str, needle: str
) -> None:
    _write(tmp_path, name, text)
    with pytest.raises(RecordingError, match=needle.replace(".", r"\.")):
        read_recording(tmp_path)


@pytest.mark.parametrize(
    "text", ["t,x,y,z\n", "t,x,y,z", "t,x,y,z\n\n", "t,x,y,z\n# no samples yet\n"]
)
def test_header_only_stream_is_empty_and_silent(tmp_path: Path, text: str) -> None:
    # pytest runs with filterwarnings=error: a numpy "input contained no data" warning fails this
    _write(tmp_path, "acc.csv", text)
    r = read_recording(tmp_path)
    assert r.acc_t is not None and r.acc is not None
    assert r.acc_t.shape == (0,) and r.acc.shape == (0, 3)
    assert r.warnings == ()


def test_record_root_error_names_its_sessions(tmp_path: Path) -> None:
    names = ["20261127T234910", "20261127T235350", "20261128T081500", "20261128T090000"]
    for name in reversed(names):
        RecordingWriter(tmp_path / name, {}).close()
    (tmp_path / "notes").mkdir()
    with pytest.raises(RecordingError) as exc:
        read_recording(tmp_path)
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / 'meta.json'}: missing: {tmp_path} looks like a --record")
    newest = ", ".join(str(tmp_path / n) for n in names[1:])
    assert msg.endswith(f"replay one of its 4 sessions (newest last): ..., {newest}")
    assert names[0] not in msg and "notes" not in msg
    (tmp_path / names[0] / "meta.json").unlink()
    with pytest.raises(RecordingError) as exc:
        read_recording(tmp_path)
    assert str(exc.value).endswith(f"sessions: {newest}")
