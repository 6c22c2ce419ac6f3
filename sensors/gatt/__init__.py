"""Pure, sans-I/O parsers for standard Bluetooth SIG GATT characteristics.

Every parser takes the raw characteristic value (``bytes``) and returns a frozen value object, or
raises :class:`ParseError` -- never anything else -- so a BLE driver needs a single ``except`` to
count malformed notifications and keep streaming.
"""

from sensors.gatt.battery import BATTERY_LEVEL_UUID, BATTERY_SERVICE_UUID, parse_battery_level
from sensors.gatt.errors import BytesLike, ParseError, UnsupportedFrameError
from sensors.gatt.ess import ESS_SERVICE_UUID, PRESSURE_UUID, parse_pressure
from sensors.gatt.hrs import (
    BODY_SENSOR_LOCATION_UUID,
    HEART_RATE_MEASUREMENT_UUID,
    HEART_RATE_SERVICE_UUID,
    BodySensorLocation,
    HeartRateMeasurement,
    parse_body_sensor_location,
    parse_heart_rate_measurement,
)
from sensors.gatt.rsc import (
    RSC_MEASUREMENT_UUID,
    RSC_SERVICE_UUID,
    RscMeasurement,
    parse_rsc_measurement,
)

__all__ = [
    "BATTERY_LEVEL_UUID",
    "BATTERY_SERVICE_UUID",
    "BODY_SENSOR_LOCATION_UUID",
    "ESS_SERVICE_UUID",
    "HEART_RATE_MEASUREMENT_UUID",
    "HEART_RATE_SERVICE_UUID",
    "PRESSURE_UUID",
    "RSC_MEASUREMENT_UUID",
    "RSC_SERVICE_UUID",
    "BodySensorLocation",
    "BytesLike",
    "HeartRateMeasurement",
    "ParseError",
    "RscMeasurement",
    "UnsupportedFrameError",
    "parse_battery_level",
    "parse_body_sensor_location",
    "parse_heart_rate_measurement",
    "parse_pressure",
    "parse_rsc_measurement",
]
