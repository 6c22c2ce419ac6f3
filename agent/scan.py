"""``agent scan``: list nearby BLE sensors and print the config lines to use them.

Exit codes: 0 (scan done, even if nothing was found), 69 (``EX_UNAVAILABLE``: no BlueZ, no system
bus or no adapter -- with a one-line explanation instead of a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

#: sysexits.h EX_UNAVAILABLE: a required service (BlueZ / an adapter) is not available.
EX_UNAVAILABLE = 69


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``scan`` options."""
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="how long to listen for advertisements (default: %(default)s s)",
    )
    parser.add_argument(
        "--adapter",
        metavar="hciN",
        default=None,
        help="Bluetooth adapter to scan with (default: the first powered one)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list instead of a table and config snippets",
    )


def run(args: argparse.Namespace) -> int:
    """Scan and print; 69 when there is no usable Bluetooth."""
    from sensors.scan import BluetoothUnavailable, config_lines, scan

    if not args.timeout > 0:
        print("agent scan: --timeout must be positive", file=sys.stderr)
        return 64
    try:
        devices = asyncio.run(scan(args.timeout, args.adapter))
    except BluetoothUnavailable as exc:
        print(f"agent scan: Bluetooth is not available: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    if args.json:
        print(json.dumps([d.as_dict() for d in devices], indent=2))
        return 0
    if not devices:
        print(
            f"No supported BLE sensors found in {args.timeout:g} s "
            "(heart rate, Polar PMD, running speed/cadence, pressure, battery).\n"
            "Wear the strap (Polar straps advertise only with skin contact), make sure it is not "
            "connected to a phone, and try a longer --timeout."
        )
        return 0
    print(f"{'NAME':<28} {'ADDRESS':<17} {'RSSI':>5}  SERVICES")
    for d in devices:
        rssi = "" if d.rssi is None else str(d.rssi)
        print(f"{(d.name or '?')[:28]:<28} {d.address:<17} {rssi:>5}  {', '.join(d.services)}")
    print("\n# Add to the config file to use them:\n")
    print("\n".join(config_lines(d) for d in devices), end="")
    return 0
