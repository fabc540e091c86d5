"""The results store of a comparison run: one SQLite file, written batch by batch.

Each (method, batch) is committed in one transaction together with its images, values,
curves and timing, so a run killed at any moment (or stopped by a full disk) loses at most
the batch in flight, and a rerun skips every committed one. Only the driver process writes,
in WAL mode with a busy timeout, so readers (``xai report``) never block it. A store opened
only to read is opened read-only (``mode=ro``, or ``immutable=1`` where even that cannot
open it), so the report of a read-only run directory still renders. Every failure of the
file (damaged, full disk, read-only, locked) is a `StoreError` that says what to do.
"""

from __future__ import annotations

import errno
import functools
import inspect
import io
import itertools
import json
import sqlite3
import time
import urllib.parse
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


#: OSError numbers that mean the disk is full (or a file size limit is reached).
FULL_DISK_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if e)
#: OSError numbers that say the environment refuses, not that xai has a bug.
ENVIRONMENT_ERRNOS = FULL_DISK_ERRNOS | {errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}
#: How long a writer waits for another connection's transaction before giving up (seconds).
BUSY_TIMEOUT = 60.0


def _is_environmental(exc: BaseException) -> bool:
    """A failure of the file or the disk, not a bug: these become a `StoreError`."""
    if isinstance(exc, OSError):
        return exc.errno in ENVIRONMENT_ERRNOS
    # sqlite3.IntegrityError, ProgrammingError... are DatabaseErrors too, but bugs.
    return type(exc) in (sqlite3.DatabaseError, sqlite3.OperationalError)


def full_disk_message(where, exc: BaseException) -> str:
    """One line for a full disk at `where` (a run directory or file)."""
    return (f"the disk is full: cannot write {where} ({exc}). Free some space and run the same "
            "command again; everything finished so far is kept.")


def store_error(path: Path, exc: BaseException) -> StoreError:
    """The `StoreError` (one line, with what to do) for a failure `exc` of the store at `path`."""
    run_dir = path.parent
    text = str(exc) or type(exc).__name__
    code = getattr(exc, "sqlite_errorcode", None)
    code = None if code is None else code & 0xFF  # the primary code of an extended one
    if (isinstance(exc, OSError) and exc.errno in FULL_DISK_ERRNOS) or code == sqlite3.SQLITE_FULL \
            or "database or disk is full" in text:
        return StoreError(full_disk_message(path, exc))
    if code == sqlite3.SQLITE_READONLY or "readonly database" in text or \
            (isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)):
        return StoreError(f"cannot write the results store {path}: it is read-only ({text}). Make it "
                          "writable, or choose another --out to start the run afresh.")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "database is locked" in text:
        return StoreError(f"the results store {path} stayed locked by another process for "
                          f"{BUSY_TIMEOUT:.0f} s ({text}); let it finish and run the same command again.")
    if code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN) or isinstance(exc, OSError):
        return StoreError(f"cannot read or write the results store {path} ({text}): the disk may be "
                          "full, failing or unmounted. Fix that and run the same command again.")
    return StoreError(f"cannot use the results store {path}: it is damaged ({text}). To start this run "
                      f"afresh, move it away (mv '{run_dir}' '{run_dir}.damaged') and run the same "
                      "command again.")


def _guarded(method):
    """Turn a failure of the file or the disk inside `method` into a one-line `StoreError`."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def generator(self, *args, **kwargs):
            try:
                yield from method(self, *args, **kwargs)
            except (sqlite3.DatabaseError, OSError) as exc:
                if not _is_environmental(exc):
                    raise
                raise store_error(self.path, exc) from exc
        return generator

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.DatabaseError, OSError) as exc:
            if not _is_environmental(exc):
                raise
            raise store_error(self.path, exc) from exc
    return wrapper


class ResultsStore:
    """Open (or create) ``results.sqlite`` in `run_dir` for the run with `config`.

    Without `config` the store is opened to read only: read-only (``mode=ro``), or as an
    immutable file where the directory does not even allow that.

    Raises
    ------
    StoreError
        The directory holds no store, the store holds another run, or it is damaged,
        read-only (when writing), on a full disk or locked: the message says what to do.
    """

    FILENAME = "results.sqlite"

    def __init__(self, run_dir, config: Optional[dict] = None, key: Optional[str] = None):
        self.path = Path(run_dir) / self.FILENAME
        self.readonly = config is None
        if self.readonly and not self.path.is_file():
            raise StoreError(f"{self.path.parent} holds no {self.FILENAME}; is it a directory made by "
                             "xai compare?")
        self.db = None
        try:
            row = self._open_readonly() if self.readonly else self._open_for_writing()
        except (sqlite3.DatabaseError, OSError) as exc:
            if self.db is not None:
                self.db.close()
            if not _is_environmental(exc):
                raise
            raise store_error(self.path, exc) from exc
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

    def _open_for_writing(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT)
        # WAL: a commit is atomic and durable, and readers never block the writer.
        self.db.execute("PRAGMA journal_mode=WAL")
        check = self.db.execute("PRAGMA quick_check(1)").fetchone()[0]  # damaged? before any work
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check: {check}")
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(batches)")}
        if "traceback" not in columns:  # a store written before tracebacks were kept
            with self.db:
                self.db.execute("ALTER TABLE batches ADD COLUMN traceback TEXT")
        self._traceback_column = "traceback"
        return self.db.execute("SELECT key, config FROM run").fetchone()

    def _open_readonly(self):
        uri = "file:" + urllib.parse.quote(str(self.path.resolve()))
        try:
            self.db = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
            row = self.db.execute("SELECT key, config FROM run").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise sqlite3.DatabaseError(f"{exc}; it is not a results store") from exc
            # A read-only directory holding a WAL-mode file: sqlite cannot create the shared-memory
            # index beside it, but an immutable file needs none (nothing can be writing to it).
            if self.db is not None:
                self.db.close()
            self.db = sqlite3.connect(uri + "?immutable=1", uri=True)
            row = self.db.execute("SELECT key, config FROM run").fetchone()
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(batches)")}
        self._traceback_column = "traceback" if "traceback" in columns else "NULL"
        return row

    @property
    @_guarded
    def config(self) -> dict:
        return json.loads(self.db.execute("SELECT config FROM run").fetchone()[0])

    def close(self):
        self.db.close()

    # -- writing -------------------------------------------------------------------
    def _add_images(self, batch: int, images: Iterable[tuple]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?)",
                            [(i, batch, None if l is None else int(l), int(t)) for i, l, t in images])

    @_guarded
    def is_done(self, method: str, batch: int) -> bool:
        """Committed successfully; a failed batch is tried again on the next run."""
        row = self.db.execute("SELECT status FROM batches WHERE method=? AND batch=?",
                              (method, batch)).fetchone()
        return row is not None and row[0] == "done"

    @_guarded
    def any_done(self, method: str) -> bool:
        """Whether at least one batch of `method` was committed successfully."""
        return self.db.execute("SELECT 1 FROM batches WHERE method=? AND status='done' LIMIT 1",
                               (method,)).fetchone() is not None

    @_guarded
    def commit_batch(self, method: str, batch: int, *, n_images: int, seconds: float,
                     values: Iterable[tuple], curves: Iterable[tuple] = (),
                     examples: Iterable[tuple] = (), images: Iterable[tuple] = (),
                     extras: Optional[dict] = None) -> None:
        """One transaction: the batch's images (image_id, label, target), values
        (image_id, metric, value), curves (image_id, metric, x, y), example maps
        (image_id, image, map, mask), run-level `extras` (name -> value) and its status."""
        with self.db:
            self._add_images(batch, images)
            self.db.executemany("INSERT OR REPLACE INTO extras VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in (extras or {}).items()])
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

    @_guarded
    def record_failure(self, method: str, batch: int, error: str, n_images: int,
                       traceback: Optional[str] = None, images: Iterable[tuple] = ()) -> None:
        """A failed (method, batch): a one-line `error` and the full `traceback`; the next run
        of the same command tries it again."""
        with self.db:
            self._add_images(batch, images)
            self.db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, 'failed', ?, ?, NULL, ?)",
                            (method, batch, error, n_images, traceback))

    @_guarded
    def set_extra(self, name: str, value) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO extras VALUES (?, ?)", (name, json.dumps(value)))

    # -- reading -------------------------------------------------------------------
    @_guarded
    def extra(self, name: str, default=None):
        row = self.db.execute("SELECT value FROM extras WHERE name=?", (name,)).fetchone()
        return default if row is None else json.loads(row[0])

    @_guarded
    def extras_under(self, prefix: str) -> dict:
        """Every extra whose name starts with `prefix`: {rest of the name: value}."""
        rows = self.db.execute("SELECT name, value FROM extras WHERE substr(name, 1, ?) = ?",
                               (len(prefix), prefix)).fetchall()
        return {name[len(prefix):]: json.loads(value) for name, value in rows}

    @_guarded
    def iter_values(self):
        """(image_id, method, metric, value) rows in (method, metric, image_id) order, streamed."""
        for i, m, k, v in self.db.execute("SELECT image_id, method, metric, value FROM vals "
                                          "ORDER BY method, metric, image_id"):
            yield i, m, k, (np.nan if v is None else v)

    @_guarded
    def values_of(self, image_ids) -> list[tuple]:
        """(image_id, method, metric, value) rows of these images only (the report's gallery)."""
        ids, rows = list(image_ids), []
        for start in range(0, len(ids), 500):  # under SQLite's limit on bound parameters
            chunk = ids[start:start + 500]
            rows += self.db.execute("SELECT image_id, method, metric, value FROM vals WHERE image_id IN "
                                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
        return [(i, m, k, np.nan if v is None else v) for i, m, k, v in rows]

    @_guarded
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

    @_guarded
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

    @_guarded
    def failures(self) -> list[dict]:
        rows = self.db.execute(f"SELECT method, batch, error, n_images, {self._traceback_column} FROM "
                               "batches WHERE status='failed' ORDER BY method, batch").fetchall()
        return [{"method": m, "batch": b, "error": e, "n_images": n, "traceback": tb}
                for m, b, e, n, tb in rows]

    @_guarded
    def timings(self) -> dict:
        """method -> seconds per image over its completed batches."""
        out = {}
        for method, seconds, n in self.db.execute(
                "SELECT method, SUM(seconds), SUM(n_images) FROM batches WHERE status='done' "
                "GROUP BY method"):
            out[method] = seconds / n if n else np.nan
        return out

    @_guarded
    def examples(self) -> dict:
        """image_id -> {"image", "mask", "maps": {method: map}} in id order."""
        out = {}
        for image_id, method, image, m, mask in self.db.execute(
                "SELECT image_id, method, image, map, mask FROM examples ORDER BY image_id, method"):
            entry = out.setdefault(image_id, {"image": _unblob(image), "mask": _unblob(mask), "maps": {}})
            entry["maps"][method] = _unblob(m)
        return out

    @_guarded
    def n_images(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    @_guarded
    def batch_counts(self) -> dict:
        """{"done": n, "failed": n}: committed and failed (method, batch) pairs."""
        counts = dict(self.db.execute("SELECT status, COUNT(*) FROM batches GROUP BY status").fetchall())
        return {"done": counts.get("done", 0), "failed": counts.get("failed", 0)}
