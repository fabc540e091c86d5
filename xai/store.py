"""The results store of a comparison run: one SQLite file, written batch by batch.

Each (method, batch) is committed in one transaction together with its images, values,
curves and timing, so a run killed at any moment loses at most the batch in flight, and a
rerun skips every committed one. Only the driver process writes.
"""

from __future__ import annotations

import io
import itertools
import json
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from xai.errors import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, config TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    image_id TEXT PRIMARY KEY, batch INTEGER NOT NULL, label INTEGER, target INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    method TEXT NOT NULL, batch INTEGER NOT NULL, status TEXT NOT NULL, error TEXT,
    n_images INTEGER, seconds REAL, traceback TEXT, PRIMARY KEY (method, batch));
CREATE TABLE IF NOT EXISTS vals (
    image_id TEXT NOT NULL, method TEXT NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (image_id, method, metric));
CREATE TABLE IF NOT EXISTS curves (
    image_id TEXT NOT NULL, method TEXT NOT NULL, metric TEXT NOT NULL, x TEXT NOT NULL,
    y TEXT NOT NULL, PRIMARY KEY (image_id, method, metric));
CREATE TABLE IF NOT EXISTS examples (
    image_id TEXT NOT NULL, method TEXT NOT NULL, image BLOB, map BLOB, mask BLOB,
    PRIMARY KEY (image_id, method));
CREATE TABLE IF NOT EXISTS extras (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _blob(array: Optional[np.ndarray]) -> Optional[bytes]:
    if array is None:
        return None
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def _unblob(data: Optional[bytes]) -> Optional[np.ndarray]:
    return None if data is None else np.load(io.BytesIO(data), allow_pickle=False)


class ResultsStore:
    """Open (or create) ``results.sqlite`` in `run_dir` for the run with `config`."""

    FILENAME = "results.sqlite"

    def __init__(self, run_dir, config: Optional[dict] = None, key: Optional[str] = None):
        self.path = Path(run_dir) / self.FILENAME
        if config is None and not self.path.is_file():
            raise StoreError(f"{self.path.parent} holds no {self.FILENAME}; is it a directory made by "
                             "xai compare?")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path)
            self.db.executescript(SCHEMA)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(batches)")}
            if "traceback" not in columns:  # a store written before tracebacks were kept
                with self.db:
                    self.db.execute("ALTER TABLE batches ADD COLUMN traceback TEXT")
            row = self.db.execute("SELECT key, config FROM run").fetchone()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"cannot use the results store {self.path}: {exc}. Move it away (or choose "
                             "another --out) to start the run again.") from exc
        if config is not None:
            if row is None:
                with self.db:
                    self.db.execute("INSERT INTO run VALUES (?, ?, ?)",
                                    (key, json.dumps(config, sort_keys=True), time.time()))
            elif row[0] != key:
                raise StoreError(f"{self.path} holds run {row[0]}, not {key}; runs never mix. "
                                 "Choose another --out or remove that directory.")
        elif row is None:
            raise StoreError(f"{self.path} holds no run.")
        self.key = key if row is None else row[0]

    @property
    def config(self) -> dict:
        return json.loads(self.db.execute("SELECT config FROM run").fetchone()[0])

    def close(self):
        self.db.close()

    # -- writing -------------------------------------------------------------------
    def _add_images(self, batch: int, images: Iterable[tuple]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?)",
                            [(i, batch, None if l is None else int(l), int(t)) for i, l, t in images])

    def is_done(self, method: str, batch: int) -> bool:
        """Committed successfully; a failed batch is tried again on the next run."""
        row = self.db.execute("SELECT status FROM batches WHERE method=? AND batch=?",
                              (method, batch)).fetchone()
        return row is not None and row[0] == "done"

    def any_done(self, method: str) -> bool:
        """Whether at least one batch of `method` was committed successfully."""
        return self.db.execute("SELECT 1 FROM batches WHERE method=? AND status='done' LIMIT 1",
                               (method,)).fetchone() is not None

    def commit_batch(self, method: str, batch: int, *, n_images: int, seconds: float,
                     values: Iterable[tuple], curves: Iterable[tuple] = (),
                     examples: Iterable[tuple] = (), images: Iterable[tuple] = ()) -> None:
        """One transaction: the batch's images (image_id, label, target), values
        (image_id, metric, value), curves (image_id, metric, x, y), example maps
        (image_id, image, map, mask), and its status."""
        with self.db:
            self._add_images(batch, images)
            self.db.executemany("INSERT OR REPLACE INTO vals VALUES (?, ?, ?, ?)",
                                [(i, method, m, None if not np.isfinite(v) else float(v))
                                 for i, m, v in values])
            self.db.executemany("INSERT OR REPLACE INTO curves VALUES (?, ?, ?, ?, ?)",
                                [(i, method, m, json.dumps(np.asarray(x).tolist()),
                                  json.dumps(np.asarray(y).tolist())) for i, m, x, y in curves])
            self.db.executemany("INSERT OR REPLACE INTO examples VALUES (?, ?, ?, ?, ?)",
                                [(i, method, _blob(im), _blob(mp), _blob(mk))
                                 for i, im, mp, mk in examples])
            self.db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, 'done', NULL, ?, ?, NULL)",
                            (method, batch, n_images, seconds))

    def record_failure(self, method: str, batch: int, error: str, n_images: int,
                       traceback: Optional[str] = None, images: Iterable[tuple] = ()) -> None:
        """A failed (method, batch): a one-line `error` and the full `traceback`; the next run
        of the same command tries it again."""
        with self.db:
            self._add_images(batch, images)
            self.db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, 'failed', ?, ?, NULL, ?)",
                            (method, batch, error, n_images, traceback))

    def set_extra(self, name: str, value) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO extras VALUES (?, ?)", (name, json.dumps(value)))

    # -- reading -------------------------------------------------------------------
    def extra(self, name: str, default=None):
        row = self.db.execute("SELECT value FROM extras WHERE name=?", (name,)).fetchone()
        return default if row is None else json.loads(row[0])

    def iter_values(self):
        """(image_id, method, metric, value) rows in (method, metric, image_id) order, streamed."""
        for i, m, k, v in self.db.execute("SELECT image_id, method, metric, value FROM vals "
                                          "ORDER BY method, metric, image_id"):
            yield i, m, k, (np.nan if v is None else v)

    def value_arrays(self) -> dict:
        """metric -> method -> (image ids, float64 values): compact, for summaries."""
        out: dict = {}
        for (metric, method), group in itertools.groupby(
                self.db.execute("SELECT metric, method, image_id, value FROM vals "
                                "ORDER BY metric, method, image_id"), key=lambda r: (r[0], r[1])):
            rows = list(group)
            out.setdefault(metric, {})[method] = (
                [r[2] for r in rows], np.array([np.nan if r[3] is None else r[3] for r in rows], np.float64))
        return out

    def curve_stats(self, metric: str) -> dict:
        """method -> (x, mean curve, std curve, n images), accumulated row by row (streamed)."""
        sums: dict = {}
        for method, x, y in self.db.execute("SELECT method, x, y FROM curves WHERE metric=?", (metric,)):
            y = np.asarray(json.loads(y), np.float64)
            if method not in sums:
                sums[method] = [np.asarray(json.loads(x)), np.zeros_like(y), np.zeros_like(y), 0]
            entry = sums[method]
            entry[1] += y
            entry[2] += y * y
            entry[3] += 1
        out = {}
        for method, (x, total, squares, n) in sums.items():
            mean = total / n
            var = np.maximum(squares / n - mean ** 2, 0.0) * (n / (n - 1) if n > 1 else 0.0)
            out[method] = (x, mean, np.sqrt(var), n)
        return out

    def failures(self) -> list[dict]:
        rows = self.db.execute("SELECT method, batch, error, n_images, traceback FROM batches "
                               "WHERE status='failed' ORDER BY method, batch").fetchall()
        return [{"method": m, "batch": b, "error": e, "n_images": n, "traceback": tb}
                for m, b, e, n, tb in rows]

    def timings(self) -> dict:
        """method -> seconds per image over its completed batches."""
        out = {}
        for method, seconds, n in self.db.execute(
                "SELECT method, SUM(seconds), SUM(n_images) FROM batches WHERE status='done' "
                "GROUP BY method"):
            out[method] = seconds / n if n else np.nan
        return out

    def examples(self) -> dict:
        """image_id -> {"image", "mask", "maps": {method: map}} in id order."""
        out = {}
        for image_id, method, image, m, mask in self.db.execute(
                "SELECT image_id, method, image, map, mask FROM examples ORDER BY image_id, method"):
            entry = out.setdefault(image_id, {"image": _unblob(image), "mask": _unblob(mask), "maps": {}})
            entry["maps"][method] = _unblob(m)
        return out

    def n_images(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
