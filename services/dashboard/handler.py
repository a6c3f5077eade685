"""The dashboard's handler: takes `metric_record`, `window_report` and `alert`; publishes nothing.

Each message updates the `View` the page is drawn from (view.py); the broker has already decoded
and validated it, and dead-letters what fails its contract like every other consumer's input.
"""

from __future__ import annotations

from collections.abc import Callable

from services.common.messages import Message, Outgoing
from services.dashboard.view import View


def handle(view: View, message: Message) -> list[Outgoing]:
    APPLY[message.type](view, message.payload)
    return []


APPLY: dict[str, Callable[[View, dict], None]] = {
    "metric_record": View.row,
    "window_report": View.window,
    "alert": View.alert,
}
