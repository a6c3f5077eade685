"""The broker's bookkeeping without a broker: coalesced acks and publisher confirms.

The end-to-end behaviour (every delivery settled exactly once against the real RabbitMQ) is in
tests/test_pipeline.py; these pin the rules themselves, over every order hypothesis can find.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.common.broker.acks import AckWindow
from services.common.broker.confirms import Confirms


def test_an_ack_waits_for_an_older_delivery_still_being_handled() -> None:
    window = AckWindow()
    for tag in (1, 2, 3):
        window.delivered(tag)
    window.settle(2, ack=True)
    window.settle(3, ack=True)
    assert window.take() == 0  # 1 is still being handled: acking 3 multiple would cover it
    assert window.unsettled == 1 and len(window) == 3
    window.settle(1, ack=True)
    assert window.take() == 3
    assert window.unsettled == 0 and len(window) == 0


def test_a_nacked_tag_is_never_the_one_acked() -> None:
    window = AckWindow()
    for tag in (1, 2, 3):
        window.delivered(tag)
    window.settle(1, ack=True)
    window.settle(3, ack=False)  # nacked by the caller: the broker no longer counts it
    assert window.take() == 1
    window.settle(2, ack=True)
    assert window.take() == 2  # not 3: a multiple ack on a nacked tag is a channel error
    assert len(window) == 0


@st.composite
def settle_orders(draw):
    n = draw(st.integers(1, 40))
    acks = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    order = draw(st.permutations(range(1, n + 1)))
    takes = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return acks, order, takes


@given(settle_orders())
def test_every_delivery_is_settled_exactly_once_whatever_the_order(case) -> None:
    acks, order, takes = case
    window = AckWindow()
    for tag in range(1, len(acks) + 1):
        window.delivered(tag)
    settled: set[int] = set()
    covered: dict[int, str] = {}  # what the broker saw for each tag

    def take() -> None:
        newest = window.take()
        assert newest == 0 or acks[newest - 1], "a multiple ack on a nacked tag"
        for tag in range(1, newest + 1):
            if tag not in covered:
                assert tag in settled, f"ack {newest} covers {tag}, still being handled"
                covered[tag] = "ack" if acks[tag - 1] else "nack"

    for tag, take_now in zip(order, takes, strict=True):
        settled.add(tag)
        if not acks[tag - 1]:
            assert tag not in covered
            covered[tag] = "nack"  # the caller sent the nack at once
        window.settle(tag, ack=acks[tag - 1])
        if take_now:
            take()
    take()
    for tag in range(1, len(acks) + 1):
        if acks[tag - 1]:
            assert covered.get(tag) == "ack", f"{tag} never acked"
    assert window.unsettled == 0


def test_confirms_answer_each_publish_once_in_order() -> None:
    confirms, heard = Confirms(), []
    for i in range(1, 5):
        confirms.sent("features", f"m{i}", lambda ok, why, i=i: heard.append((i, ok, why)))
    confirms.answered(2, multiple=True, ok=True)
    confirms.answered(4, multiple=False, ok=False)
    assert heard == [
        (1, True, ""),
        (2, True, ""),
        (4, False, "the broker refused the message (nack)"),
    ]
    confirms.answered(2, multiple=False, ok=True)  # a second answer for a tag changes nothing
    assert len(heard) == 3 and len(confirms) == 1
    confirms.fail_all("connection lost")
    assert heard[-1] == (3, False, "connection lost") and len(confirms) == 0


def test_a_returned_publish_is_unroutable_even_though_the_broker_acks_it() -> None:
    confirms, heard = Confirms(), []
    for message_id in ("a", "b"):
        confirms.sent(
            "y_pred", message_id, lambda ok, why, m=message_id: heard.append((m, ok, why))
        )
    confirms.returned("y_pred", "b", "unroutable: NO_ROUTE")
    confirms.answered(2, multiple=True, ok=True)
    assert heard == [("a", True, ""), ("b", False, "unroutable: NO_ROUTE")]


def test_a_new_channel_numbers_its_publishes_from_one_again() -> None:
    confirms, heard = Confirms(), []
    confirms.sent("features", "old", lambda ok, why: heard.append(("old", ok)))
    confirms.fail_all("a new channel")
    confirms.sent("features", "new", lambda ok, why: heard.append(("new", ok)))
    confirms.answered(1, multiple=False, ok=True)
    assert heard == [("old", False), ("new", True)]
