"""The live view of ``agent run``: pure rendering of what the embedded consumer received."""

from __future__ import annotations

from agent.live_view import LiveView, render, summary
from agent.protocol import Dispatch


def test_latest_value_rate_and_count_per_type() -> None:
    view = LiveView()
    for i in range(20):
        view.add(Dispatch({"ts": f"t{i}", "val": 60 + i}, "u", i + 1, "HEART_RATE"), now=i * 0.5)
    view.add(Dispatch({"ts": "a", "d": [0.1, 9.81, -0.2]}, "u", 21, "ACCELERATION"), now=9.5)
    lines = render(view, {"uplink": {"state": "ready"},
                          "outbox": {"depth": 4, "oldest_age_s": 0.3, "dropped": 0}}, now=9.5)
    hr = next(line for line in lines if line.startswith("HEART_RATE"))
    assert "79" in hr and "bpm" in hr and " 20 " in hr and "2.0" in hr  # 20 in the last 10 s
    acc = next(line for line in lines if line.startswith("ACCELERATION"))
    assert "[0.1, 9.81, -0.2]" in acc
    assert next(line for line in lines if line.startswith("STEPS")).rstrip().endswith("-")
    assert lines[-1] == ("uplink ready | outbox 4 rows, oldest 0.3s, dropped 0 | received 21 "
                         "(last seq 21)")


def test_rate_window_forgets_old_arrivals() -> None:
    view = LiveView()
    view.add(Dispatch({"val": 1}, "u", 1, "STEPS"), now=0.0)
    assert view.types["STEPS"].rate(5.0) == 0.1
    assert view.types["STEPS"].rate(20.0) == 0.0
    assert "received 1" in summary(view, {})
