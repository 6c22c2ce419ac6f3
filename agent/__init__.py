"""Wearable producer agent: sensors → processing → durable outbox → Terra Streaming Protocol."""

__version__ = "0.1.0"
