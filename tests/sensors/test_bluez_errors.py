"""Classification of BlueZ / D-Bus / bleak failures into retry / wait / give up."""

from __future__ import annotations

import pytest
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakCharacteristicNotFoundError,
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
)

from sensors.bluez_errors import (
    Action,
    Classification,
    DeviceNotFound,
    SessionError,
    classify,
)


@pytest.mark.parametrize(
    ("exc", "action", "unavailable", "words"),
    [
        (
            BleakDBusError("org.freedesktop.DBus.Error.ServiceUnknown", ["not activatable"]),
            Action.WAIT,
            True,
            "systemctl",
        ),
        (
            BleakDBusError("org.bluez.Error.Failed", ["le-connection-abort-by-local"]),
            Action.RETRY,
            False,
            "rfkill",
        ),
        (
            BleakDBusError("org.bluez.Error.Failed", ["Operation already in progress"]),
            Action.RETRY,
            False,
            "failed",
        ),
        (
            BleakDBusError("org.bluez.Error.InProgress", []),
            Action.WAIT,
            False,
            "bluetoothctl remove",
        ),
        (
            BleakDBusError("org.bluez.Error.NotReady", ["Resource Not Ready"]),
            Action.WAIT,
            False,
            "power on",
        ),
        (
            BleakDBusError("org.bluez.Error.NotPermitted", ["Notify not permitted"]),
            Action.GIVE_UP,
            False,
            "pair",
        ),
        (
            BleakDBusError("org.freedesktop.DBus.Error.AccessDenied", []),
            Action.GIVE_UP,
            False,
            "bluetooth` group",
        ),
        (
            BleakDBusError("org.freedesktop.DBus.Error.UnknownObject", []),
            Action.RETRY,
            False,
            "rescanning",
        ),
        (BleakDBusError("com.example.Weird", ["x"]), Action.RETRY, False, "com.example.weird"),
        (BleakDeviceNotFoundError("AA:BB"), Action.WAIT, False, "in range"),
        (DeviceNotFound("address=AA"), Action.WAIT, False, "worn"),
        (
            BleakBluetoothNotAvailableError("off", BleakBluetoothNotAvailableReason.POWERED_OFF),
            Action.WAIT,
            True,
            "power on",
        ),
        (
            BleakBluetoothNotAvailableError("none", BleakBluetoothNotAvailableReason.NO_BLUETOOTH),
            Action.WAIT,
            True,
            "adapter",
        ),
        (
            BleakBluetoothNotAvailableError(
                "no", BleakBluetoothNotAvailableReason.DENIED_BY_SYSTEM
            ),
            Action.GIVE_UP,
            True,
            "group",
        ),
        (BleakError("adapter 'hci7' not found"), Action.GIVE_UP, True, "bluetoothctl list"),
        (BleakError("Not connected"), Action.RETRY, False, "dropped"),
        (BleakCharacteristicNotFoundError("2a37"), Action.GIVE_UP, False, "service"),
        (TimeoutError(), Action.RETRY, False, "timed out"),
        (FileNotFoundError(2, "No such file"), Action.WAIT, True, "system bus"),
        (EOFError(), Action.RETRY, False, "broke"),
        (RuntimeError("boom"), Action.RETRY, False, "boom"),
    ],
)
def test_classify(exc: BaseException, action: Action, unavailable: bool, words: str) -> None:
    c = classify(exc)
    assert c.action is action
    assert c.unavailable is unavailable
    assert words.lower() in c.message().lower()


def test_session_error_carries_its_classification() -> None:
    verdict = Classification(Action.GIVE_UP, "nothing to read", "enable heart_rate")
    err = SessionError(verdict)
    assert classify(err) is verdict
    assert str(err) == "nothing to read: enable heart_rate"
    assert Classification(Action.RETRY, "x", "").message() == "x"
