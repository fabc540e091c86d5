"""Bad input and faults: refused before the run, one line each, and a store that survives.

Runs use a small VGG16-GAP saved to a file (no default model is trained) on a few 64x64
images. The subprocess tests start a fresh interpreter where a fresh TensorFlow start-up, a
file size limit or another user is the point; each is one process at a time.
"""

import errno
import io
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image, ImageOps

import xai
from xai import data
from xai.cli import main
from xai.errors import DataError, StoreError
from xai.runner import CompareConfig, compare
from xai.store import ResultsStore


def _png(array) -> bytes:
    return tf.io.encode_png(np.asarray(array, np.uint8)).numpy()


def _jpeg(array) -> bytes:
    return tf.io.encode_jpeg(np.asarray(array, np.uint8), quality=95).numpy()


def make_folder(root: Path, classes=("a", "b"), per_class=4, size=64) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / c / f"{i}.png").write_bytes(_png(rng.integers(0, 256, (size, size, 3))))
    return root


def run_cli(*args):
    result = CliRunner().invoke(main, list(args))
    return result, result.output.strip().splitlines()


def compare_args(model_file, dataset, out, *extra):
    return ["compare", "--model", str(model_file), "--dataset", str(dataset), "--methods", "cam,random",
            "--metrics", "deletion", "--n-images", "8", "--batch-size", "4", "--out", str(out), "--quiet",
            *extra]


def config(model_file, dataset, out, **fields):
    return CompareConfig(model=str(model_file), dataset=str(dataset), methods=["cam", "random"],
                         metrics=["deletion"], n_images=8, batch_size=4, out=str(out), **fields)


def batch_seconds(run_dir) -> dict:
    with sqlite3.connect(Path(run_dir) / "results.sqlite") as db:
        return {(m, b): (s, st) for m, b, s, st in db.execute("SELECT method, batch, seconds, status FROM batches")}


# --------------------------------------------------------------------------------------
# Refused before the first batch
# --------------------------------------------------------------------------------------

def test_more_classes_than_model_outputs_is_refused_before_any_work(model_file, tmp_path):
    folder = make_folder(tmp_path / "three", classes=("a", "b", "c"), per_class=1)
    out = tmp_path / "runs"
    with pytest.raises(DataError, match="has 3 classes .* but the model has 2 outputs"):
        compare(config(model_file, folder, out))
    result, lines = run_cli(*compare_args(model_file, folder, out))
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: the dataset")
    assert not out.exists()  # nothing written


def test_truncated_images_are_named_before_the_run(model_file, tmp_path):
    folder = make_folder(tmp_path / "data", per_class=2)
    good_png = (folder / "a" / "0.png").read_bytes()
    good_jpg = _jpeg(np.random.default_rng(1).integers(0, 256, (64, 64, 3)))
    (folder / "a" / "cut.png").write_bytes(good_png[: len(good_png) // 2])  # a valid header
    (folder / "b" / "cut.jpg").write_bytes(good_jpg[: len(good_jpg) // 2])
    (folder / "b" / "no_end.jpg").write_bytes(good_jpg[:-2])  # only the end-of-image marker missing
    with pytest.raises(DataError, match=r"3 unreadable file\(s\).*cut.png.*cut.jpg.*no_end.jpg"):
        data.image_folder(folder, 64)
    result, lines = run_cli(*compare_args(model_file, folder, tmp_path / "runs"))
    assert result.exit_code == 1 and len(lines) == 1
    assert "cut.png (truncated or damaged" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_files_outside_root_class_file_are_named_in_a_warning(tmp_path):
    folder = make_folder(tmp_path / "data", per_class=1, size=8)
    (folder / "a" / "2019").mkdir()
    (folder / "a" / "2019" / "deep.png").write_bytes(_png(np.zeros((8, 8, 3))))
    (folder / "stray.png").write_bytes(_png(np.zeros((8, 8, 3))))
    (folder / "a" / ".hidden").mkdir()
    (folder / "a" / ".hidden" / "x.png").write_bytes(_png(np.zeros((8, 8, 3))))  # hidden: ignored quietly
    with pytest.warns(UserWarning, match=r"2 file\(s\) .* not at ROOT/CLASS/FILE .*stray.png, a/2019/deep.png"):
        ds = data.image_folder(folder, 8)
    assert [e["id"] for e in ds.as_numpy_iterator()] == [b"a/0.png", b"b/0.png"]


def test_every_batch_failed_exits_non_zero_with_the_report(model_file, tmp_path):
    @xai.register_explainer("always_fails")
    class AlwaysFails(xai.Explainer):
        def compute(self, images, targets):
            raise RuntimeError("this method always fails")

    try:
        folder = make_folder(tmp_path / "data", per_class=2)
        args = compare_args(model_file, folder, tmp_path / "runs")
        args[args.index("cam,random")] = "always_fails"
        result, lines = run_cli(*args)
        assert result.exit_code == 1, result.output
        assert lines[-1].startswith("Error: every batch of every method failed (1)")
        assert lines[-1].endswith("report.html.") and Path(lines[-1].split(" in ")[-1][:-1]).is_file()
    finally:
        xai.registry.REGISTRY.unregister("always_fails")


# --------------------------------------------------------------------------------------
# Images as a user sees them
# --------------------------------------------------------------------------------------

def _with_orientation(array, orientation, fmt) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_in_files_and_folders(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 256, (6, 10, 3))  # not square: a rotation changes the shape
    png = _with_orientation(stored, orientation, "PNG")
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(png))).convert("RGB"), np.float32) / 255
    assert data.exif_orientation(png) == orientation
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "photo.png").write_bytes(png)
    np.testing.assert_allclose(data.load_image(tmp_path / "c" / "photo.png"), upright, atol=1e-6)
    h, w = upright.shape[:2]
    in_folder = next(iter(data.image_folder(tmp_path, (h, w)).as_numpy_iterator()))["image"]
    np.testing.assert_allclose(in_folder, upright, atol=1e-6)  # resizing to its own size is exact
    # A phone photo: a JPEG whose halves differ, so a wrong turn cannot go unseen.
    smooth = np.zeros((32, 48, 3))
    smooth[:16, :24] = 255
    jpeg = _with_orientation(smooth, orientation, "JPEG")
    (tmp_path / "c" / "photo.jpg").write_bytes(jpeg)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(jpeg))).convert("RGB"), np.float32) / 255
    loaded = data.load_images([tmp_path / "c" / "photo.jpg"], upright.shape[:2])[0]  # as `xai explain` reads
    assert np.abs(loaded - upright).mean() < 0.02


def _encodings():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 17, 3)).astype(np.uint8)
    gif, bmp = io.BytesIO(), io.BytesIO()
    Image.fromarray(image).save(gif, "GIF")
    Image.fromarray(image).save(bmp, "BMP")
    return {"png": _png(image), "jpg": _jpeg(image), "gif": gif.getvalue(), "bmp": bmp.getvalue(),
            "exif.jpg": _with_orientation(image, 6, "JPEG")}


def test_fuzz_the_image_loader_on_random_and_truncated_bytes(tmp_path):
    """Every input either loads as an RGB float image in [0, 1] or raises a DataError naming the
    file: never another exception, never a crash."""
    rng = np.random.default_rng(7)
    cases = []
    for name, good in _encodings().items():
        cuts = sorted(set(rng.integers(1, len(good), 12).tolist()) | {1, 8, len(good) // 2, len(good) - 1})
        cases += [(f"{name}-cut{c}", good[:c]) for c in cuts]
        for k in range(4):  # flipped bytes after the header
            damaged = bytearray(good)
            for pos in rng.integers(min(16, len(good) - 1), len(good), 6):
                damaged[pos] = int(rng.integers(256))
            cases.append((f"{name}-flip{k}", bytes(damaged)))
        cases.append((f"{name}-header+noise", good[:16] + rng.bytes(200)))
    cases += [(f"noise{k}", rng.bytes(int(rng.integers(0, 300)))) for k in range(10)]
    outcomes = {"loaded": 0, "refused": 0}
    for name, payload in cases:
        path = tmp_path / name
        path.write_bytes(payload)
        try:
            image = data.load_image(path, 16)
        except DataError as exc:
            assert str(path) in str(exc), name
            outcomes["refused"] += 1
            continue
        assert image.shape == (16, 16, 3) and image.dtype == np.float32, name
        assert np.all(np.isfinite(image)) and image.min() >= 0 and image.max() <= 1, name
        outcomes["loaded"] += 1
    assert outcomes["refused"] > 50 and sum(outcomes.values()) == len(cases)


# --------------------------------------------------------------------------------------
# The store: damaged, read-only, full disk, two processes
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(model_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    folder = make_folder(root / "data")
    run_dir = compare(config(model_file, folder, root / "runs"), quiet=True)
    return {"run_dir": run_dir, "folder": folder, "out": root / "runs"}


def test_a_damaged_store_says_what_to_do(finished_run, model_file, tmp_path):
    run_dir = tmp_path / "runs" / finished_run["run_dir"].name
    run_dir.parent.mkdir()
    content = (finished_run["run_dir"] / "results.sqlite").read_bytes()
    for cut in (len(content) // 2, 100):
        run_dir.mkdir(exist_ok=True)
        (run_dir / "results.sqlite").write_bytes(content[:cut])  # truncated, as by a full disk or a crash
        for reader in (lambda: ResultsStore(run_dir), lambda: ResultsStore(run_dir, {"a": 1}, "k")):
            with pytest.raises(StoreError, match=r"it is damaged .*mv '.*' '.*\.damaged'.* same command again"):
                reader()
        result, lines = run_cli("report", str(run_dir))
        assert result.exit_code == 1 and len(lines) == 1 and "is damaged" in lines[0]
    result, lines = run_cli(*compare_args(model_file, finished_run["folder"], tmp_path / "runs"))
    assert result.exit_code == 1 and len(lines) == 1 and f"mv '{run_dir}'" in lines[0]


def test_store_opened_to_read_is_read_only(finished_run):
    store = ResultsStore(finished_run["run_dir"])
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.db.execute("DELETE FROM vals")
    assert store.n_images() == 8
    store.close()


def test_a_read_only_store_still_renders_the_report(finished_run, tmp_path, monkeypatch):
    """The file read-only: `xai report` renders. The directory read-only too: the store still
    opens (as an immutable file: sqlite cannot create its shared-memory index beside it) and
    the report says in one line that it cannot be written. Under root, where permissions do
    not apply, sqlite's refusal is simulated."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(finished_run["run_dir"] / "results.sqlite", run_dir / "results.sqlite")
    (run_dir / "results.sqlite").chmod(0o444)
    try:
        result, lines = run_cli("report", str(run_dir))
        assert result.exit_code == 0, result.output
        assert "cam" in (run_dir / "report.html").read_text()

        run_dir.chmod(0o555)
        if os.geteuid() == 0:
            connect = sqlite3.connect

            def refuse_read_only(database, *args, **kwargs):
                if "mode=ro" in str(database):
                    raise sqlite3.OperationalError("unable to open database file")
                return connect(database, *args, **kwargs)

            monkeypatch.setattr("xai.store.sqlite3.connect", refuse_read_only)
        store = ResultsStore(run_dir)
        assert store.n_images() == 8 and len(list(store.iter_values())) == 8 * 2 * 2
        store.close()
        if os.geteuid() != 0:
            result, lines = run_cli("report", str(run_dir))
            assert result.exit_code == 1 and lines == [f"Error: cannot read or write {run_dir / 'report.html'}: "
                                                       "Permission denied."]
    finally:
        run_dir.chmod(0o755)


def test_tensorflow_start_up_log_is_shown_once_at_most(finished_run):
    """A fresh process at TensorFlow's most verbose level: each line once, the absl preamble
    never (the --quiet case is in the full-disk test below)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}
    report = subprocess.run([sys.executable, "-m", "xai.cli", "report", str(finished_run["run_dir"])], env=env,
                            capture_output=True, text=True, timeout=180)
    assert report.returncode == 0, report.stderr
    lines = [line for line in report.stderr.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), report.stderr
    assert "absl::InitializeLog" not in report.stderr
    assert sum("cudart_stub" in line for line in lines) <= 1


class _FullDisk:
    """A connection whose writes of curves fail as SQLite fails on a full disk."""

    def __init__(self, db):
        self._db = db

    def __getattr__(self, name):
        return getattr(self._db, name)

    def __enter__(self):
        return self._db.__enter__()

    def __exit__(self, *exc):
        return self._db.__exit__(*exc)

    def executemany(self, sql, rows):
        if "curves" in sql:
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.executemany(sql, rows)


def test_a_full_disk_ends_in_one_line_and_a_rerun_resumes(model_file, tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "data")
    commits = []
    original = ResultsStore.commit_batch

    def commit_until_full(self, *args, **kwargs):
        commits.append(args[:2])
        if len(commits) > 1:  # the second commit meets a full disk
            self.db, real = _FullDisk(self.db), self.db
            try:
                return original(self, *args, **kwargs)
            finally:
                self.db = real
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ResultsStore, "commit_batch", commit_until_full)
    result, lines = run_cli(*compare_args(model_file, folder, tmp_path / "runs"))
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("Error: the disk is full: cannot write") and "same command again" in lines[0]
    run_dir = next((tmp_path / "runs").iterdir())
    before = batch_seconds(run_dir)
    assert list(before.values()) == [(before[commits[0]][0], "done")]  # the second batch left no trace
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM images").fetchone() == (4,)
    monkeypatch.setattr(ResultsStore, "commit_batch", original)

    result, _ = run_cli(*compare_args(model_file, folder, tmp_path / "runs"))  # space again
    assert result.exit_code == 0, result.output
    after = batch_seconds(run_dir)
    assert len(after) == 4 and all(status == "done" for _, status in after.values())
    assert after[commits[0]] == before[commits[0]]  # resumed: the committed batch was not recomputed


FULL_DISK = """
    import resource, signal, subprocess, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
    sys.exit(subprocess.run([sys.executable, "-m", "xai.cli", *sys.argv[1:]]).returncode)
"""


def test_a_full_disk_while_saving_the_model_leaves_no_temporary_file(model_file, tmp_path):
    """A real write failure (a file size limit, in a child process): one line, even from a fresh
    TensorFlow start with --quiet, and no model.tmp.keras behind."""
    folder = make_folder(tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(FULL_DISK),
                            *compare_args(model_file, folder, tmp_path / "runs")],
                           capture_output=True, text=True, timeout=180, env=env)
    assert child.returncode == 1, child.stderr
    lines = child.stderr.strip().splitlines()
    assert len(lines) == 1, child.stderr  # nothing from TensorFlow's start-up under --quiet
    assert lines[0].startswith("Error: the disk is full: cannot write") and "model.keras" in lines[0]
    run_dir = next((tmp_path / "runs").iterdir())
    assert not list(run_dir.glob("*.tmp*")) and not (run_dir / "model.keras").exists()
    assert compare(config(model_file, folder, tmp_path / "runs"), quiet=True) == run_dir  # with space
    assert (run_dir / "model.keras").is_file()


HOLD_LOCK = """
    import fcntl, os, sys, time
    handle = open(sys.argv[1], "a+")
    fcntl.flock(handle, fcntl.LOCK_EX)
    handle.seek(0); handle.truncate(); handle.write(f"{os.getpid()}\\n"); handle.flush()
    print("locked", flush=True)
    sys.stdin.readline()  # hold the lock until the test says so
"""


def test_a_second_process_waits_for_the_first_then_finds_the_work_done(finished_run, model_file, capsys):
    run_dir = finished_run["run_dir"]
    before = batch_seconds(run_dir)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_LOCK), str(run_dir / "compare.lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    result, err = {}, ""
    message = (f"another xai compare (pid {holder.pid}) is working on {run_dir}; waiting for it to "
               "finish, then resuming.")
    try:
        assert holder.stdout.readline().strip() == "locked"
        worker = threading.Thread(target=lambda: result.setdefault("run", compare(
            config(model_file, finished_run["folder"], finished_run["out"]), quiet=True, write_report=False)))
        worker.start()
        deadline = time.time() + 120
        while message not in err and time.time() < deadline and worker.is_alive():
            time.sleep(0.1)
            err += capsys.readouterr().err
        assert message in err  # it reached the lock and is waiting, not finished
        assert worker.is_alive()
    finally:
        holder.stdin.write("release\n")
        holder.stdin.flush()
        holder.wait(timeout=30)
    worker.join(timeout=120)
    err += capsys.readouterr().err
    assert result["run"] == run_dir
    assert err.strip().splitlines() == [message]
    assert batch_seconds(run_dir) == before  # nothing computed twice


def test_writes_use_wal_and_a_busy_timeout(tmp_path):
    store = ResultsStore(tmp_path, {"a": 1}, "k")
    assert store.db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000
    store.close()


def test_environment_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, monkeypatch):
    (tmp_path / "results.sqlite").write_bytes(b"")

    def write_report(run_dir, error):
        raise error

    import types
    for error, expected in [(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "report.html")),
                             "Error: the disk is full: cannot write"),
                            (PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "report.html")),
                             "Error: cannot read or write")]:
        monkeypatch.setitem(sys.modules, "xai.report",
                            types.SimpleNamespace(write_report=lambda run_dir, e=error: write_report(run_dir, e)))
        result, lines = run_cli("report", str(tmp_path))
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(expected), result.output
    bug = OSError(errno.EBADF, "Bad file descriptor")  # not the environment: a bug
    monkeypatch.setitem(sys.modules, "xai.report",
                        types.SimpleNamespace(write_report=lambda run_dir: write_report(run_dir, bug)))
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exception is bug
