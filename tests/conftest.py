"""Suite-wide isolation: no test reads the developer's own agent configuration.

``agent run`` and ``agent replay`` read ``$AGENT_CONFIG``, ``$CONFIGURATION_DIRECTORY/config.toml``
or the platformdirs user config file; on a developer's machine that file would silently change
what the tests measure. Each test gets an empty config home instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_user_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                    ) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config-home")))
    for key in ("AGENT_CONFIG", "CONFIGURATION_DIRECTORY"):
        monkeypatch.delenv(key, raising=False)
    for key in [k for k in os.environ if k.startswith("AGENT_") and "__" in k]:
        monkeypatch.delenv(key)
    assert not (Path(os.environ["XDG_CONFIG_HOME"]) / "wearable-agent").exists()
