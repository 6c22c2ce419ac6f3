"""``agent relay``: a Terra Streaming Protocol server for development, tests and small deployments.

:mod:`agent.relay.server` (websocket + token HTTP on one port), :mod:`agent.relay.store`
(SQLite dispatch store), :mod:`agent.relay.auth` (credentials and tokens), :mod:`agent.relay.cli`
(the command line).
"""

from agent.relay.server import Relay, RelayConfig

__all__ = ["Relay", "RelayConfig"]
