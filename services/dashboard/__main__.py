"""`modelwatch dashboard`: a live page of the model's quality, drift, alerts, rows, dead letters."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket

import uvicorn

from services.common.broker import Broker
from services.common.contracts import Contracts
from services.common.runtime import run
from services.common.settings import ConfigError, environ
from services.dashboard import app
from services.dashboard.handler import APPLY, handle
from services.dashboard.hub import Hub
from services.dashboard.settings import Settings
from services.dashboard.store import SAVE_EVERY_S, ViewStore
from services.dashboard.view import View

log = logging.getLogger("modelwatch.dashboard")
DEAD_LETTERS_EVERY_S = 5.0


def listen(settings: Settings) -> socket.socket:
    """Bind DASHBOARD_ADDR before anything else, so a taken port fails at start-up."""
    try:
        info = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as exc:
        raise ConfigError(
            f"DASHBOARD_ADDR {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def count_dead_letters(broker: Broker, view: View) -> None:
    while True:
        try:
            view.set_dead_letters(await broker.dead_letter_counts())
        except Exception as exc:  # noqa: BLE001 - the channel closed: the reconnect handles it
            log.debug("dead-letter counts skipped: %r", exc)
        await asyncio.sleep(DEAD_LETTERS_EVERY_S)


async def save_every(store: ViewStore) -> None:
    while True:
        await asyncio.sleep(SAVE_EVERY_S)
        try:
            store.save()
        except OSError as exc:
            log.error("could not save the dashboard state to %s: %s", store.path, exc)


async def end_pages_on_exit(server: uvicorn.Server, hub: Hub) -> None:
    """uvicorn waits for open responses when it stops: end the event streams cleanly first (the
    browser then reconnects on its own) instead of having them cut off mid-stream."""
    while not server.should_exit:
        await asyncio.sleep(0.1)
    hub.close()


async def main(stop: asyncio.Event) -> int | None:
    settings = Settings.from_env(environ())
    contracts = Contracts(settings.contracts_dir)
    view = View()
    store = ViewStore(settings.state_path, view)
    store.load()
    sock = listen(settings)
    broker = Broker(settings.broker, contracts, "dashboard")
    for type_ in APPLY:
        # A view of many messages, like the monitor: one span per delivery batch, linked to each.
        broker.consume(type_, functools.partial(handle, view), aggregate=True)
    broker.on_flush(store.flush)
    hub = Hub(view, settings.push_s, {"jaeger_ui_url": settings.jaeger_ui_url})
    server = uvicorn.Server(uvicorn.Config(
        app.build(hub, settings.assets_dir, lambda: broker.connected),
        log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2,
    ))  # fmt: skip
    # uvicorn takes SIGTERM and Ctrl+C while it serves, and raises them again once it has stopped,
    # which sets `stop` through the service's own handlers (runtime.py).
    web = asyncio.create_task(server.serve(sockets=[sock]), name="web server")
    web.add_done_callback(lambda _: stop.set())
    closer = asyncio.create_task(end_pages_on_exit(server, hub))
    log.info("dashboard on http://%s:%d/", settings.host, settings.port)
    try:
        if await broker.start(stop):
            tasks = [broker.watch(hub.run(), "page updates"),
                     broker.watch(count_dead_letters(broker, view), "dead-letter counts"),
                     broker.watch(save_every(store), "state saver")]  # fmt: skip
            try:
                await broker.run_until(stop)
            finally:
                for task in tasks:
                    task.cancel()
    finally:
        hub.close()
        server.should_exit = True
        await web
        closer.cancel()
        store.save()
    return None


if __name__ == "__main__":
    run("dashboard", main)
