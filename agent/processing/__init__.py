"""Streaming, causal, block-wise processing of raw sensor samples into the seed's data types."""
