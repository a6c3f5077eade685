"""The dashboard's web app (Starlette): the page, its scripts, the event stream, the view as JSON.

/              the page (static/index.html)
/static/...    its script and style; /vendor/... the chart library, served from npm's copy
/events        server-sent events: `snapshot`, then `update` every DASHBOARD_PUSH_S
/api/state     the whole view as JSON (what `snapshot` carries), for scripts and curl
/healthz       200 once connected to the broker, 503 before
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from services.dashboard.hub import Hub

STATIC = Path(__file__).with_name("static")


def build(hub: Hub, assets_dir: Path, connected: Callable[[], bool]) -> Starlette:
    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def events(_: Request) -> Response:
        # X-Accel-Buffering: a proxy in front (nginx) must not hold the stream back.
        return StreamingResponse(
            hub.stream(), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    async def state(_: Request) -> Response:
        return JSONResponse(hub.snapshot())

    async def health(_: Request) -> Response:
        ok = connected()
        return JSONResponse({"broker": "connected" if ok else "connecting"}, 200 if ok else 503)

    return Starlette(
        routes=[
            Route("/", page),
            Route("/events", events),
            Route("/api/state", state),
            Route("/healthz", health),
            Mount("/static", StaticFiles(directory=STATIC)),
            Mount("/vendor", StaticFiles(directory=assets_dir)),
        ]
    )
