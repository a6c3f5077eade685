"""The metric store on real files: crash recovery, torn lines, refusing a foreign CSV."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import pytest

from services.common.contracts import Contracts
from services.common.settings import ConfigError
from services.metric.handler import Half, metric_row
from services.metric.store import AppendOnlyCsv, Store

ID = "3f2b8c1e-6a4d-4e2f-9b1a-0c7d5e8f9a01"


def open_store(folder: Path, contracts: Contracts) -> Store:
    return Store(
        folder / "state.sqlite3",
        AppendOnlyCsv(folder / "metric_log.csv", contracts.columns("metric_record"), "M"),
        AppendOnlyCsv(folder / "orphans.csv", contracts.columns("orphan_record"), "O"),
    )


def halves(id_: str = ID) -> tuple[Half, Half]:
    y_true = Half(id_, "y_true", 151.0, "", "2026-11-27T11:40:35Z", "2026-11-27T11:40:35Z", "")
    y_pred = Half(
        id_, "y_pred", 206.0, "linreg-1", "2026-11-27T11:40:35Z", "2026-11-27T11:40:35Z", ""
    )
    return y_true, y_pred


def record(store: Store, id_: str = ID) -> None:
    y_true, y_pred = halves(id_)
    store.keep(y_true)
    store.record(y_pred, metric_row(y_true, y_pred, "2026-11-27T11:40:36Z"))


def test_pending_half_survives_a_restart(tmp_path: Path, contracts: Contracts) -> None:
    store = open_store(tmp_path, contracts)
    store.keep(halves()[0])
    store.flush()
    store.close()
    reopened = open_store(tmp_path, contracts)
    same, partner = reopened.lookup(ID, "y_pred")
    assert same is None and partner is not None and partner.state == "pending"


def test_unflushed_work_is_lost_with_the_process_not_half_kept(
    tmp_path: Path, contracts: Contracts
) -> None:
    store = open_store(tmp_path, contracts)
    store.flush()
    record(store)
    store.close()  # a crash before flush: nothing was acknowledged, the broker redelivers
    reopened = open_store(tmp_path, contracts)
    assert reopened.lookup(ID, "y_true") == (None, None)
    assert (tmp_path / "metric_log.csv").read_text().count("\n") == 1


def test_rows_written_before_a_crash_are_known_after_it(
    tmp_path: Path, contracts: Contracts
) -> None:
    store = open_store(tmp_path, contracts)
    store.flush()
    record(store)
    store.metrics.flush()  # the CSV write happened, the database commit did not
    store.close()
    reopened = open_store(tmp_path, contracts)
    same, partner = reopened.lookup(ID, "y_true")
    assert same is not None and same.state == "joined" and same.value == 151.0
    assert partner is not None and partner.model_version == "linreg-1"


def test_a_torn_last_line_is_cut_off(tmp_path: Path, contracts: Contracts) -> None:
    store = open_store(tmp_path, contracts)
    record(store)
    store.flush()
    store.close()
    csv_path = tmp_path / "metric_log.csv"
    good = csv_path.read_bytes()
    csv_path.write_bytes(good + b"5e0c1e2a-0000-4000-8000-00000000,12.0,1")
    open_store(tmp_path, contracts).close()
    assert csv_path.read_bytes() == good


def test_a_csv_with_other_columns_is_refused(tmp_path: Path, contracts: Contracts) -> None:
    (tmp_path / "metric_log.csv").write_text("message_id,y_true,y_pred,absolute_error\n")
    with pytest.raises(ConfigError, match=r"M: .*columns"):
        open_store(tmp_path, contracts)


def test_expired_and_forgotten(tmp_path: Path, contracts: Contracts) -> None:
    store = open_store(tmp_path, contracts)
    y_true, _ = halves()
    store.keep(y_true)
    assert store.expired(older_than=0) == []
    [expired] = store.expired(older_than=2**40)
    assert replace(expired, state="new") == y_true
    record(store, "00000000-0000-4000-8000-000000000001")
    assert store.forget(settled_before=2**40) == 2
    assert store.pending_count() == 1


@pytest.mark.root("mounts a tmpfs")
def test_a_commit_refused_by_a_full_disk_is_retried_and_loses_nothing(
    tmp_path: Path, small_disk: Path, contracts: Contracts
) -> None:
    # SQLite rolls the whole transaction back when a commit finds the disk full: the halves of
    # that batch must neither be lost nor raise anything but the OSError the broker retries on.
    store = Store(
        small_disk / "state.sqlite3",
        AppendOnlyCsv(tmp_path / "metric_log.csv", contracts.columns("metric_record"), "M"),
        AppendOnlyCsv(tmp_path / "orphans.csv", contracts.columns("orphan_record"), "O"),
    )
    store.flush()
    ids = [f"{n:08d}-6a4d-4e2f-9b1a-0c7d5e8f9a01" for n in range(60)]
    for id_ in ids[:30]:
        record(store, id_)  # joined rows
    for id_ in ids[30:]:
        store.keep(halves(id_)[0])  # halves waiting for a partner
    filler = small_disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as handle:
        while True:
            handle.write(b"\0" * 4096)
    with pytest.raises(OSError, match="database or disk is full"):
        store.flush()
    assert store.pending_count() == 30  # what the batch did is still seen by later lookups
    assert store.lookup(ids[0], "y_pred")[0] is not None
    filler.unlink()
    store.flush()
    store.close()
    reopened = open_store_at(small_disk / "state.sqlite3", tmp_path, contracts)
    assert reopened.pending_count() == 30
    assert all(reopened.lookup(id_, "y_true")[0] for id_ in ids)
    assert len(reopened.metrics.rows_after(0)) == 31  # the header and 30 rows, once each


def open_store_at(db: Path, folder: Path, contracts: Contracts) -> Store:
    return Store(
        db,
        AppendOnlyCsv(folder / "metric_log.csv", contracts.columns("metric_record"), "M"),
        AppendOnlyCsv(folder / "orphans.csv", contracts.columns("orphan_record"), "O"),
    )


def test_rows_flushed_but_not_confirmed_as_messages_are_published_after_a_restart(
    tmp_path: Path, contracts: Contracts
) -> None:
    store = open_store(tmp_path, contracts)
    store.flush()
    record(store, ID)
    store.flush()
    [(rows, end)] = store.outbox
    assert rows[0][0]["message_id"] == ID
    store.mark_published(end)  # confirmed: saved with the next commit
    second = "3f2b8c1e-6a4d-4e2f-9b1a-0c7d5e8f9a02"
    record(store, second)
    store.flush()
    store.close()  # the process dies before the second row's message is confirmed
    reopened = open_store(tmp_path, contracts)
    [(again, _)] = reopened.outbox
    row = again[0][0]
    assert row["message_id"] == second and len(again) == 1
    assert contracts.errors("metric_record", 1, row) is None  # numbers are numbers again


def test_a_log_from_before_rows_were_published_is_not_sent_again(
    tmp_path: Path, contracts: Contracts
) -> None:
    store = open_store(tmp_path, contracts)
    record(store)
    store.flush()
    store._db.execute("DELETE FROM file_ends WHERE path LIKE 'published:%'")  # an older store
    store._db.commit()
    store.close()
    assert not open_store(tmp_path, contracts).outbox


def test_nothing_is_kept_to_publish_when_no_queue_takes_metric_record(
    tmp_path: Path, contracts: Contracts
) -> None:
    csv = AppendOnlyCsv(tmp_path / "metric_log.csv", contracts.columns("metric_record"), "M")
    orphans = AppendOnlyCsv(tmp_path / "orphans.csv", contracts.columns("orphan_record"), "O")
    store = Store(tmp_path / "state.sqlite3", csv, orphans, publish=False)
    record(store)
    store.flush()
    assert not store.outbox


def test_shards_append_to_one_log_and_each_recovers_only_its_own_rows(
    tmp_path: Path, contracts: Contracts
) -> None:
    """Two shards' stores (as two processes would) on one metrics CSV: each row once, a dead
    writer's torn line cut by the next writer, and recovery that marks only the shard's ids."""

    def shard(name: str, owns: str) -> Store:
        return Store(
            tmp_path / f"{name}.sqlite3",
            AppendOnlyCsv(tmp_path / "metric_log.csv", contracts.columns("metric_record"), "M"),
            AppendOnlyCsv(tmp_path / "orphans.csv", contracts.columns("orphan_record"), "O"),
            owns=lambda id_: id_.startswith(owns),
        )

    a, b = shard("a", "a"), shard("b", "b")
    record(a, "a1")
    a.flush()
    record(b, "b1")
    b.flush()
    record(a, "a2")
    a.metrics.flush()  # a's row reaches the CSV, then a dies before its commit
    a.close()
    with open(tmp_path / "metric_log.csv", "a") as log:
        log.write("a3,torn")  # and a writer died inside a write
    record(b, "b2")
    b.flush()  # cuts the torn line under the lock, then appends
    rows = (tmp_path / "metric_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["a1", "b1", "a2", "b2"]
    assert rows[0].startswith("message_id,")  # one header, written once
    a = shard("a", "a")  # a's next owner: a2 was written, so it is a duplicate now
    assert a.lookup("a2", "y_true")[0] is not None and a.lookup("a2", "y_true")[0].state == "joined"
    assert a.lookup("b2", "y_true") == (None, None)  # b's rows are b's
    b.close()
    a.close()
