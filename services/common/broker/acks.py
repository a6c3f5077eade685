"""Which deliveries one `multiple` ack may cover.

A frame per ack cost the services and the broker CPU for every message, so acks are coalesced: one
`basic.ack(multiple=True)` up to the newest delivery whose older deliveries are all settled. An ack
must never cover a delivery still being handled (its output may yet fail and need a reject), and the
broker refuses a multiple ack whose own tag it no longer counts as unacked, which is why a rejected
tag is never the one acked.
"""

from __future__ import annotations

import collections


class AckWindow:
    """The delivery tags of one channel that the broker still counts as unacked, in order."""

    def __init__(self) -> None:
        self._unacked: collections.deque[int] = collections.deque()
        self._settled: dict[int, bool] = {}  # tag -> True for an ack, False for a reject (sent)

    def delivered(self, tag: int) -> None:
        self._unacked.append(tag)

    def settle(self, tag: int, *, ack: bool) -> None:
        """`tag` is done: to be acked (`ack`) or already rejected by the caller."""
        self._settled[tag] = ack

    def take(self) -> int:
        """The tag to ack with `multiple=True` now (0: none), forgetting every tag it settles.

        Up to and including the newest ack: rejected tags below it are no longer unacked.
        """
        newest_ack = 0
        unacked, settled = self._unacked, self._settled
        while unacked and unacked[0] in settled:
            tag = unacked.popleft()
            if settled.pop(tag):
                newest_ack = tag
        return newest_ack

    def clear(self) -> None:
        """The channel is gone: its deliveries come back from the broker."""
        self._unacked.clear()
        self._settled.clear()

    def holds_up_to(self, tag: int) -> bool:
        """Whether a delivery at or before `tag` is still unacked (settled or not)."""
        return bool(self._unacked) and self._unacked[0] <= tag

    @property
    def unsettled(self) -> int:
        """Deliveries not yet settled (still being handled, or waiting for a flush)."""
        return len(self._unacked) - len(self._settled)

    def __len__(self) -> int:
        """Deliveries the broker counts against the prefetch window."""
        return len(self._unacked)
