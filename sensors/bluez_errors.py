"""Classify BlueZ / D-Bus / bleak failures into what a reconnect loop should do, with advice.

Why one table: a BLE session fails in many ways (strap out of range, adapter off, bluetoothd
restarted, RF interference, a stuck discovery, missing permissions), and each needs a different
response. Deciding it in one place keeps :mod:`sensors.ble` a plain loop and gives the operator
one actionable sentence instead of a D-Bus error name.

Actions:

* ``RETRY`` -- transient; reconnect after the normal (short, growing) backoff.
* ``WAIT``  -- an external condition that will not clear by retrying harder (nothing advertising,
  adapter powered off, BlueZ not running); keep retrying with the normal growing backoff (it
  reaches the cap after a few attempts, and a strap put back on is found at the next scan) and
  tell the operator, once, what to check.
* ``GIVE_UP`` -- configuration or permission problem that retrying cannot fix; the source reports
  itself FAILED with the advice and only probes again at the cap (so fixing the cause -- plugging
  in the adapter, adding the user to the ``bluetooth`` group -- heals it without a restart).

``unavailable`` marks "there is no usable Bluetooth at all" (no ``org.bluez`` on the bus, no system
bus, no adapter): ``agent scan`` turns it into exit code 69 instead of a traceback.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakCharacteristicNotFoundError,
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
    BleakGATTProtocolError,
)


class Action(enum.StrEnum):
    """What the reconnect loop does next."""

    RETRY = "retry"
    WAIT = "wait"
    GIVE_UP = "give_up"


@dataclass(frozen=True, slots=True)
class Classification:
    """The decision for one failure: action, a short reason and operator advice."""

    action: Action
    reason: str
    advice: str
    unavailable: bool = False

    def message(self) -> str:
        """One line for logs and ``agent status``."""
        return f"{self.reason}: {self.advice}" if self.advice else self.reason


class DeviceNotFound(Exception):
    """The configured device was not seen during the scan that precedes every connect."""


class SessionError(Exception):
    """A BLE session could not be used; ``classification`` says what to do about it."""

    def __init__(self, classification: Classification) -> None:
        super().__init__(classification.message())
        self.classification = classification


# D-Bus error name -> (action, reason, advice, unavailable)
_DBUS_TABLE: dict[str, tuple[Action, str, str, bool]] = {
    "org.freedesktop.DBus.Error.ServiceUnknown": (
        Action.WAIT,
        "BlueZ is not running (no org.bluez on the system bus)",
        "install and start bluetoothd: `sudo systemctl enable --now bluetooth`",
        True,
    ),
    "org.freedesktop.DBus.Error.NameHasNoOwner": (
        Action.WAIT,
        "BlueZ is not running (no org.bluez on the system bus)",
        "install and start bluetoothd: `sudo systemctl enable --now bluetooth`",
        True,
    ),
    "org.freedesktop.DBus.Error.AccessDenied": (
        Action.GIVE_UP,
        "D-Bus denied access to BlueZ",
        "run as a user in the `bluetooth` group or allow org.bluez in the D-Bus policy",
        False,
    ),
    "org.freedesktop.DBus.Error.UnknownObject": (
        Action.RETRY,
        "the device or adapter object vanished from BlueZ",
        "BlueZ dropped it (scan ended, bluetoothd restarted); rescanning",
        False,
    ),
    "org.freedesktop.DBus.Error.NoReply": (Action.RETRY, "BlueZ did not answer in time", "", False),
    "org.freedesktop.DBus.Error.Timeout": (Action.RETRY, "BlueZ did not answer in time", "", False),
    "org.bluez.Error.InProgress": (
        Action.WAIT,
        "another BlueZ operation is in progress on this adapter/device",
        "if this persists: `bluetoothctl remove <address>` or restart bluetoothd",
        False,
    ),
    "org.bluez.Error.NotReady": (
        Action.WAIT,
        "the Bluetooth adapter is not ready (powered off?)",
        "power it on: `bluetoothctl power on`; check `rfkill list`",
        False,
    ),
    "org.bluez.Error.NotPermitted": (
        Action.GIVE_UP,
        "BlueZ refused the operation (not permitted)",
        "the device may require pairing: `bluetoothctl pair <address>`",
        False,
    ),
    "org.bluez.Error.NotAuthorized": (
        Action.GIVE_UP,
        "not authorized by BlueZ",
        "pair and trust the device: `bluetoothctl pair <address>; bluetoothctl trust <address>`",
        False,
    ),
    "org.bluez.Error.AuthenticationFailed": (
        Action.GIVE_UP,
        "authentication with the device failed",
        "remove and re-pair it: `bluetoothctl remove <address>` then pair again",
        False,
    ),
    "org.bluez.Error.NotSupported": (
        Action.GIVE_UP,
        "the adapter or device does not support this operation",
        "use a Bluetooth 4.0+ (LE) adapter",
        False,
    ),
    "org.bluez.Error.DoesNotExist": (
        Action.RETRY,
        "BlueZ no longer knows the device",
        "rescanning",
        False,
    ),
    "org.bluez.Error.NotConnected": (
        Action.RETRY,
        "the link dropped during the operation",
        "",
        False,
    ),
}

# Substrings of org.bluez.Error.Failed details that are known transient radio failures.
_TRANSIENT_FAILED = (
    "le-connection-abort-by-local",
    "br-connection-canceled",
    "software caused connection abort",
    "connection refused",
    "page-timeout",
)
_RF_ADVICE = (
    "often RF interference; on a Raspberry Pi try `sudo rfkill block wlan` or a USB adapter"
)


def classify(exc: BaseException) -> Classification:
    """Decide retry / wait / give up for one exception raised by a BLE operation."""
    if isinstance(exc, SessionError):
        return exc.classification
    if isinstance(exc, DeviceNotFound | BleakDeviceNotFoundError):
        return Classification(
            Action.WAIT,
            "device not found while scanning",
            "is it in range, awake and not connected to a phone? (a Polar strap advertises "
            "only while worn with moist electrodes)",
        )
    if isinstance(exc, BleakBluetoothNotAvailableError):
        return _classify_not_available(exc)
    if isinstance(exc, BleakDBusError):
        return _classify_dbus(exc)
    if isinstance(exc, BleakCharacteristicNotFoundError):
        return Classification(
            Action.GIVE_UP,
            f"characteristic missing: {exc}",
            "the device does not offer what the configuration asks for; check `service`",
        )
    if isinstance(exc, BleakGATTProtocolError):
        return Classification(Action.RETRY, f"GATT error from the device: {exc}", "")
    if isinstance(exc, TimeoutError):
        return Classification(Action.RETRY, "BLE operation timed out", "")
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return Classification(
            Action.WAIT,
            "the system D-Bus is not reachable",
            "is dbus running? bleak talks to BlueZ over the system bus",
            unavailable=True,
        )
    if isinstance(exc, EOFError | BrokenPipeError | ConnectionResetError):
        return Classification(Action.RETRY, "the D-Bus connection to BlueZ broke", "")
    if isinstance(exc, PermissionError):
        return Classification(
            Action.GIVE_UP,
            "permission denied talking to BlueZ",
            "run as a user in the `bluetooth` group",
            unavailable=True,
        )
    if isinstance(exc, BleakError):
        text = str(exc)
        if "adapter" in text.lower() and "not found" in text.lower():
            return Classification(
                Action.GIVE_UP,
                text,
                "check the `adapter` setting; list adapters with `bluetoothctl list`",
                unavailable=True,
            )
        if "not connected" in text.lower():
            return Classification(Action.RETRY, "the link dropped during the operation", "")
        return Classification(Action.RETRY, text or type(exc).__name__, "")
    return Classification(Action.RETRY, f"{type(exc).__name__}: {exc}", "")


def _classify_not_available(exc: BleakBluetoothNotAvailableError) -> Classification:
    reason = exc.reason
    if reason is BleakBluetoothNotAvailableReason.POWERED_OFF:
        return Classification(
            Action.WAIT,
            "the Bluetooth adapter is powered off",
            "`bluetoothctl power on`; check `rfkill list`",
            unavailable=True,
        )
    if reason in (
        BleakBluetoothNotAvailableReason.DENIED_BY_SYSTEM,
        BleakBluetoothNotAvailableReason.DENIED_BY_USER,
        BleakBluetoothNotAvailableReason.DENIED_BY_UNKNOWN,
    ):
        return Classification(
            Action.GIVE_UP,
            "access to Bluetooth was denied",
            "run as a user in the `bluetooth` group",
            unavailable=True,
        )
    return Classification(
        Action.WAIT,
        "no Bluetooth LE adapter found",
        "plug in an adapter and check `bluetoothctl list`",
        unavailable=True,
    )


def _classify_dbus(exc: BleakDBusError) -> Classification:
    name = exc.dbus_error
    details = exc.dbus_error_details or ""
    if name in _DBUS_TABLE:
        action, reason, advice, unavailable = _DBUS_TABLE[name]
        if details:
            reason = f"{reason} ({details})"
        return Classification(action, reason, advice, unavailable)
    if name == "org.bluez.Error.Failed":
        lowered = details.lower()
        if any(s in lowered for s in _TRANSIENT_FAILED):
            return Classification(Action.RETRY, f"connection aborted ({details})", _RF_ADVICE)
        return Classification(Action.RETRY, f"BlueZ operation failed ({details})", "")
    return Classification(Action.RETRY, f"{name} ({details})" if details else name, "")
