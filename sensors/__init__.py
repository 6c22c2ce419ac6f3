"""Sensor sources: BLE drivers and parsers, simulated wearers, recordings, Linux IIO barometers.

Every source turns what it reads into the immutable sample values of :mod:`sensors.base` (SI units,
host Unix time in seconds) and hands them to a callback; it never knows what happens downstream.
"""
