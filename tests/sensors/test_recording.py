"""Recording format: writer -> reader round trip, validation errors, the shared datasets."""

from __future__ import annotations

import gzip
import json
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
DATASETS = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"


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
        ("t,x,y,z\n1,0,0,0\n2,0,0,0\n1.5,0,0,0\n", "acc.csv.gz:4: timestamp"),
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
