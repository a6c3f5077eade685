"""The dashboard without a broker or a browser: the view, the batched updates, the state file.

The page in a real browser, on the real pipeline, is tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from services.common.contracts import Contracts
from services.common.messages import Message
from services.dashboard import hub as hub_
from services.dashboard.handler import APPLY, handle
from services.dashboard.hub import Hub
from services.dashboard.store import ViewStore
from services.dashboard.view import HEARTBEAT_S, ROWS, View
from tests.conftest import REPO


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def examples(type_: str) -> list[dict]:
    folder = REPO / "contracts" / type_ / "v1" / "examples" / "valid"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def row(n: int) -> dict:
    return {**examples("metric_record")[1], "message_id": f"row-{n}"}


def message(type_: str, payload: dict) -> Message:
    return Message(type_, 1, payload)


def test_the_handler_takes_every_type_the_catalog_routes_to_it(contracts: Contracts) -> None:
    routed = {t.name for t in contracts.types.values()
              if any(c.service == "dashboard" for c in t.consumers)}  # fmt: skip
    assert routed == set(APPLY)


def test_every_valid_example_is_applied_and_publishes_nothing() -> None:
    view = View()
    for type_ in APPLY:
        for payload in examples(type_):
            assert handle(view, message(type_, payload)) == []
    snap = view.snapshot()
    assert snap["rows_total"] == len({r["message_id"] for r in examples("metric_record")})
    assert {w["stream"] for s in snap["windows"].values() for w in s} == {"features", "predictions"}
    assert snap["windows"]["features"][0]["statistics"]["psi/bmi"] == [1.93, 0.1, True]


def test_updates_are_batched_and_carry_only_what_changed() -> None:
    clock = Clock()
    view = View(clock)
    for n in range(3 * ROWS):
        view.row(row(n))
    update = view.take_update()
    assert update is not None
    latest = [f"row-{n}" for n in range(2 * ROWS, 3 * ROWS)]
    assert [r["message_id"] for r in update["rows"]] == latest
    assert update["rows_total"] == 3 * ROWS
    assert view.take_update() is None, "nothing changed and no heartbeat due"
    clock.now += HEARTBEAT_S
    heartbeat = view.take_update()
    assert heartbeat is not None and heartbeat["rows"] == [] and heartbeat["windows"] == []


def test_a_redelivered_row_is_shown_and_counted_once_even_after_a_restart(tmp_path: Path) -> None:
    view = View()
    for n in (1, 2, 1, 3, 2):
        view.row(row(n))
    assert [r["message_id"] for r in view.rows] == ["row-1", "row-2", "row-3"]
    assert view.rows_total == 3
    ViewStore(tmp_path / "state.json", view).save()
    again = View()
    ViewStore(tmp_path / "state.json", again).load()
    again.row(row(3))  # what the broker redelivers after the restart: it was not acked yet
    again.row(row(4))
    assert [r["message_id"] for r in again.rows] == ["row-1", "row-2", "row-3", "row-4"]
    assert again.rows_total == 4


def test_rows_per_second_counts_the_last_ten_seconds() -> None:
    clock = Clock()
    view = View(clock)
    for second in range(20):
        clock.now = 1000.0 + second
        for n in range(5):
            view.row(row(second * 10 + n))
    assert view.rate() == pytest.approx(5.0)
    clock.now += 30
    assert view.rate() == 0


def test_a_window_reported_again_replaces_itself_and_alerts_keep_their_latest_state() -> None:
    view = View()
    report = examples("window_report")[0]
    view.window(report)
    view.window({**report, "statistics": []})
    assert [w["statistics"] for w in view.windows["features"].values()] == [{}]
    firing, resolved = examples("alert")
    view.alert(firing)
    assert [a["alert"] for a in view.open_alerts()] == [firing["alert"]]
    view.alert({**resolved, "alert": firing["alert"]})
    assert view.open_alerts() == []
    assert [a["state"] for a in view.alert_events] == ["firing", "resolved"]


def test_the_state_file_brings_the_view_back(tmp_path: Path) -> None:
    view = View()
    for n in range(5):
        view.row(row(n))
    view.window(examples("window_report")[1])
    view.alert(examples("alert")[0])
    ViewStore(tmp_path / "state.json", view).save()
    again = View()
    ViewStore(tmp_path / "state.json", again).load()
    assert again.to_dict() == view.to_dict()


def test_a_broken_state_file_is_set_aside_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    view = View()
    ViewStore(path, view).load()
    assert view.rows_total == 0


def test_flush_saves_a_batch_only_when_it_brought_a_window_or_an_alert(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    view = View()
    store = ViewStore(path, view)
    view.row(row(1))
    store.flush()
    assert not path.exists(), "rows alone wait for the timer"
    view.alert(examples("alert")[0])
    store.flush()
    assert json.loads(path.read_text())["view"]["alerts"][0]["state"] == "firing"


def test_a_page_gets_a_snapshot_then_updates_and_a_slow_page_is_cut_off() -> None:
    async def scenario() -> None:
        view = View()
        hub = Hub(view, 0.01, {"jaeger_ui_url": "http://jaeger:16686"})
        stream = hub.stream()
        first = await anext(stream)
        assert first.startswith(b"event: snapshot\ndata: ")
        assert (
            json.loads(first.split(b"data: ", 1)[1])["page"]["jaeger_ui_url"]
            == "http://jaeger:16686"
        )
        view.row(row(1))
        hub.push()
        update = await anext(stream)
        assert update.startswith(b"event: update\n") and b"row-1" in update
        for n in range(hub_.BEHIND + 1):  # the page reads nothing meanwhile
            view.row(row(100 + n))
            hub.push()
        got = [event async for event in stream]
        assert len(got) == hub_.BEHIND, "what was queued, then the stream ends"
        assert hub.clients == set()

    asyncio.run(scenario())
