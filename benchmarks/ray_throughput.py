"""Images per second of `xai compare` on the local backend and on Ray workers (docs/scaling.md).

    .venv/bin/python benchmarks/ray_throughput.py N_IMAGES [WORKERS ...]

A small VGG16-GAP (64x64, width 0.125, random weights) saved to a temporary file; methods
vanilla_gradient, cam and rise (256 masks); deletion and insertion; batch 8. Each run writes
to a fresh directory; wall time of the whole call, start-up included, and the time after the
first committed batch (steady state) are printed.
"""

import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import keras

import xai
from xai.runner import CompareConfig, compare


def main(n_images: int, worker_counts: list[int]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="xai-ray-bench-"))
    keras.utils.set_random_seed(3)
    model = tmp / "tiny.keras"
    xai.models.save_model(xai.vgg16_gap((64, 64, 3), num_classes=2, width=0.125), model)
    config = dict(model=str(model), methods=["vanilla_gradient", "cam", "rise"], n_images=n_images,
                  batch_size=8, method_params={"rise": {"n_masks": 256}}, metrics=["deletion", "insertion"],
                  protocol="rise", tolerance=None)  # fixed counts: the same work on every backend and every run
    for label, extra in [("local", {})] + [(f"ray x{w}", {"backend": "ray", "workers": w}) for w in worker_counts]:
        out = tmp / label.replace(" ", "")
        start = time.perf_counter()
        run_dir = compare(CompareConfig(**config, **extra, out=str(out)), quiet=True, write_report=False)
        wall = time.perf_counter() - start
        with sqlite3.connect(run_dir / "results.sqlite") as db:
            explain = db.execute("SELECT SUM(seconds) FROM batches WHERE status='done'").fetchone()[0]
        print(f"{label:8s} {n_images} images: {wall:6.1f} s wall, {n_images / wall:5.2f} images/s; "
              f"explaining alone {explain:6.1f} s (summed over workers)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), [int(w) for w in sys.argv[2:]] or [1, 2])
