"""Tracing and metrics, set up once per process from the standard OTEL_* variables."""

from observability.metrics import instruments, setup_metrics, shutdown_metrics
from observability.tracing import setup_tracing, shutdown_tracing, tracer

__all__ = [
    "instruments", "setup_metrics", "setup_tracing", "shutdown_metrics", "shutdown_tracing",
    "tracer",
]  # fmt: skip
