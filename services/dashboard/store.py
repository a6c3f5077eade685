"""The dashboard's view on disk, so a restart shows what it showed before (DASHBOARD_STATE_PATH).

The view is a cache of what the pipeline already keeps durably (rows in the metrics CSV, windows
and alerts in the monitor's state and history streams): losing its last seconds costs a few rows
on the page, never data. Windows and alerts are rare and matter, so a batch that brought one is
saved before it is acknowledged; rows alone are saved every SAVE_EVERY_S.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import orjson

from services.dashboard.view import View

log = logging.getLogger("modelwatch.dashboard")
SAVE_EVERY_S = 5.0
FORMAT = 1


class ViewStore:
    def __init__(self, path: Path, view: View) -> None:
        self.path = path
        self.view = view
        self._saved = (0, 0)  # the (version, key_version) the file holds: an empty view

    def load(self) -> None:
        try:
            saved = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("ignoring the dashboard state in %s (%s): starting empty", self.path, exc)
            return
        if saved.get("format") != FORMAT:
            log.warning("ignoring the dashboard state in %s: format %r, not %d",
                        self.path, saved.get("format"), FORMAT)  # fmt: skip
            return
        self.view.restore(saved["view"])
        self._saved = (self.view.version, self.view.key_version)
        log.info("restored the dashboard's view from %s: %d rows seen, %d alerts",
                 self.path, self.view.rows_total, len(self.view.alerts))  # fmt: skip

    def flush(self) -> None:
        """Before acknowledging a batch: save it if it brought a window or an alert."""
        if self.view.key_version != self._saved[1]:
            try:
                self.save()
            except OSError as exc:  # a cache: the page goes on; the next save tries again
                log.error("could not save the dashboard state to %s: %s", self.path, exc)

    def save(self) -> None:
        if (self.view.version, self.view.key_version) == self._saved:
            return
        data = orjson.dumps({"format": FORMAT, "view": self.view.to_dict()})
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._saved = (self.view.version, self.view.key_version)
