"""Publishes waiting for the broker's confirm, and what each one's sender is told.

With publisher confirms on, the broker numbers a channel's publishes 1, 2, 3, ... and answers each
with an ack or a nack, often one `multiple` answer for many. A message that no queue took comes
back first as a `basic.return` and is then acked: its sender must hear "unroutable", not "done".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

Confirmed = Callable[[bool, str], None]  # (ok, why not)


@dataclass
class _Pending:
    on_done: Confirmed
    exchange: str
    message_id: str
    returned: str = ""


class Confirms:
    """The unconfirmed publishes of one channel, by the tag the broker will confirm them with."""

    def __init__(self) -> None:
        self._pending: dict[int, _Pending] = {}  # insertion order is publish order
        self._next_tag = 0

    def sent(self, exchange: str, message_id: str, on_done: Confirmed) -> None:
        """A publish just went out on the channel; `on_done` hears its fate."""
        self._next_tag += 1
        self._pending[self._next_tag] = _Pending(on_done, exchange, message_id)

    def answered(self, tag: int, *, multiple: bool, ok: bool) -> None:
        """The broker acked (`ok`) or nacked `tag`, and with `multiple` every tag before it."""
        if multiple:
            tags = list(itertools.takewhile(lambda t: t <= tag, self._pending))
        else:
            tags = [tag] if tag in self._pending else []
        for each in tags:
            entry = self._pending.pop(each)
            if entry.returned:
                entry.on_done(False, entry.returned)
            else:
                entry.on_done(ok, "" if ok else "the broker refused the message (nack)")

    def returned(self, exchange: str, message_id: str, why: str) -> None:
        """The broker returned the oldest unconfirmed publish with this exchange and id."""
        for entry in self._pending.values():
            if entry.exchange == exchange and entry.message_id == message_id:
                entry.returned = why
                return

    def fail_all(self, why: str) -> None:
        """The channel is gone: no confirm will come, and a new channel numbers from 1 again."""
        pending, self._pending = self._pending, {}
        self._next_tag = 0
        for entry in pending.values():
            entry.on_done(False, why)

    def __len__(self) -> int:
        return len(self._pending)
