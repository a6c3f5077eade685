"""Tracing for modelwatch: set up once per process from the standard OTEL_* variables."""

from observability.tracing import setup_tracing, shutdown_tracing, tracer

__all__ = ["setup_tracing", "shutdown_tracing", "tracer"]
