"""Tools for people and CI, not services: the benchmark and soak harness, the contracts checker, and
the OTLP sink they and the tests share. Reached through the `modelwatch` command; not in the
runtime image (the Dockerfile copies only `services/`, `observability/` and `contracts/`)."""
