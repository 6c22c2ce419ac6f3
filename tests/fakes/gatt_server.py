"""A minimal BlueZ GATT server (peripheral side) over its own D-Bus connection.

Theory of operation: a virtual wearable is a separate D-Bus client, exactly like a real
peripheral application on BlueZ. It exports ``org.bluez.GattService1`` /
``org.bluez.GattCharacteristic1`` objects under ``/app`` and an ``org.bluez.LEAdvertisement1``
at ``/adv``, then calls ``GattManager1.RegisterApplication`` and
``LEAdvertisingManager1.RegisterAdvertisement`` on *its own* emulated adapter (BlueZoo reports
only the first advertisement of an adapter, so each wearable gets one adapter). BlueZoo links the
objects into the central's view when bleak connects; setting ``Value`` while ``Notifying`` is how
a notification travels to the central (BlueZoo then calls our ``Confirm``).

dbus-fast (bleak's own D-Bus library) is used so the fakes share the test's event loop and need
no extra dependency.
"""

# No "from __future__ import annotations": dbus-fast evaluates the annotations at runtime.

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from dbus_fast import BusType, Message, MessageType, PropertyAccess, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusBytes, DBusObjectPath, DBusSignature, DBusStr
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

Options = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
StrList = Annotated[list[str], DBusSignature("as")]

WriteHandler = Callable[[bytes], Awaitable[None] | None]
ReadHandler = Callable[[], bytes]


class GattService(ServiceInterface):
    """``org.bluez.GattService1`` of the peripheral."""

    def __init__(self, uuid: str) -> None:
        super().__init__("org.bluez.GattService1")
        self._uuid = uuid

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self._uuid

    @dbus_property(access=PropertyAccess.READ)
    def Primary(self) -> DBusBool:
        return True


class GattCharacteristic(ServiceInterface):
    """``org.bluez.GattCharacteristic1``: value, notify state, read/write hooks.

    ``notifying_changed`` is set whenever a central subscribes, so tests and the wearables can
    await a subscription instead of sleeping.
    """

    def __init__(
        self,
        uuid: str,
        service_path: str,
        flags: list[str],
        *,
        on_read: ReadHandler | None = None,
        on_write: WriteHandler | None = None,
    ) -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self.uuid = uuid
        self._service_path = service_path
        self._flags = flags
        self._value = b""
        self._notifying = False
        self.on_read = on_read
        self.on_write = on_write
        self.subscribed = asyncio.Event()
        self.start_count = 0
        self.writes: list[bytes] = []

    @property
    def notifying(self) -> bool:
        return self._notifying

    def notify(self, value: bytes) -> bool:
        """Send one notification/indication; returns False when nobody is subscribed."""
        self._value = bytes(value)
        if not self._notifying:
            return False
        self.emit_properties_changed({"Value": self._value})
        return True

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Service(self) -> DBusObjectPath:
        return self._service_path

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> StrList:
        return self._flags

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return self._value

    @dbus_property(access=PropertyAccess.READ)
    def Notifying(self) -> DBusBool:
        return self._notifying

    @dbus_method()
    def ReadValue(self, options: Options) -> DBusBytes:
        if self.on_read is not None:
            self._value = self.on_read()
        return self._value

    @dbus_method()
    async def WriteValue(self, value: DBusBytes, options: Options) -> None:
        self.writes.append(bytes(value))
        if self.on_write is not None:
            result = self.on_write(bytes(value))
            if result is not None:
                await result

    @dbus_method()
    def StartNotify(self) -> None:
        self.start_count += 1
        self._notifying = True
        self.emit_properties_changed({"Notifying": True})
        self.subscribed.set()

    @dbus_method()
    def StopNotify(self) -> None:
        self._notifying = False
        self.subscribed.clear()
        self.emit_properties_changed({"Notifying": False})

    @dbus_method()
    def Confirm(self) -> None:
        """Indication confirmations from BlueZoo: nothing to do."""


class LEAdvertisement(ServiceInterface):
    """``org.bluez.LEAdvertisement1``: what the scanner sees."""

    def __init__(self, local_name: str, service_uuids: list[str]) -> None:
        super().__init__("org.bluez.LEAdvertisement1")
        self._name = local_name
        self._uuids = service_uuids

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> DBusStr:
        return "peripheral"

    @dbus_property(access=PropertyAccess.READ)
    def ServiceUUIDs(self) -> StrList:
        return self._uuids

    @dbus_property(access=PropertyAccess.READ)
    def LocalName(self) -> DBusStr:
        return self._name

    @dbus_property(access=PropertyAccess.READ)
    def Discoverable(self) -> DBusBool:
        return True

    @dbus_method()
    def Release(self) -> None:
        """Called by BlueZ when the advertisement is dropped."""


class GattApplication:
    """One peripheral: its D-Bus connection, services, characteristics and advertisement."""

    def __init__(self, bus_address: str, adapter_path: str, local_name: str) -> None:
        self.bus_address = bus_address
        self.adapter_path = adapter_path
        self.local_name = local_name
        self._bus: MessageBus | None = None
        self._services: list[tuple[str, GattService, list[tuple[str, GattCharacteristic]]]] = []
        self._advertised: list[str] = []

    def add_service(self, uuid: str, *, advertise: bool = True) -> str:
        path = f"/app/service{len(self._services)}"
        self._services.append((path, GattService(uuid), []))
        if advertise:
            self._advertised.append(uuid)
        return path

    def add_characteristic(
        self,
        service_path: str,
        uuid: str,
        flags: list[str],
        *,
        on_read: ReadHandler | None = None,
        on_write: WriteHandler | None = None,
    ) -> GattCharacteristic:
        for path, _svc, chars in self._services:
            if path == service_path:
                char = GattCharacteristic(
                    uuid, service_path, flags, on_read=on_read, on_write=on_write
                )
                chars.append((f"{path}/char{len(chars)}", char))
                return char
        raise KeyError(service_path)

    async def start(self) -> None:
        """Connect, export everything and register with the emulated adapter."""
        bus = await MessageBus(bus_address=self.bus_address, bus_type=BusType.SYSTEM).connect()
        self._bus = bus
        for path, svc, chars in self._services:
            bus.export(path, svc)
            for char_path, char in chars:
                bus.export(char_path, char)
        bus.export("/adv", LEAdvertisement(self.local_name, self._advertised))
        await self.call(
            self.adapter_path,
            "org.bluez.GattManager1",
            "RegisterApplication",
            "oa{sv}",
            ["/app", {}],
        )
        await self.call(
            self.adapter_path,
            "org.bluez.LEAdvertisingManager1",
            "RegisterAdvertisement",
            "oa{sv}",
            ["/adv", {}],
        )

    async def call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
    ) -> list[Any]:
        """Call a method on ``org.bluez`` and raise on a D-Bus error reply."""
        assert self._bus is not None
        return await bluez_call(self._bus, path, interface, member, signature, body)

    async def stop(self) -> None:
        """Vanish from the bus (BlueZoo drops the application and advertisement)."""
        if self._bus is not None:
            self._bus.disconnect()
            await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
            self._bus = None


async def bluez_call(
    bus: MessageBus,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
) -> list[Any]:
    """Call a method on ``org.bluez`` over ``bus``; raise on a D-Bus error reply."""
    reply = await bus.call(
        Message(
            destination="org.bluez",
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        raise RuntimeError(f"{member} failed: {reply.error_name} {reply.body}")
    return list(reply.body)
