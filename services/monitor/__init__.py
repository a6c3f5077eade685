"""The monitor service: windowed model quality, drift and alerts (see docs/monitoring.md)."""
