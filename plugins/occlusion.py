"""Occlusion (Zeiler & Fergus 2014): how much the score drops when a patch is hidden."""

from __future__ import annotations

import numpy as np

from xai._lazy import tf
from xai.plugin_api import Param, ParameterError, PerturbationExplainer, baseline_images, check_baseline


def patch_starts(size: int, patch: int, stride: int) -> np.ndarray:
    """Top/left corners along one axis; the last patch is moved in to touch the border."""
    starts = list(range(0, max(size - patch, 0) + 1, stride))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return np.asarray(starts, np.int32)


class Occlusion(PerturbationExplainer):
    """Per pixel, the mean score drop over the occluded copies whose patch covers it.

    Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014.
    A ``patch_size`` square of the image is replaced by ``baseline`` at every position
    ``stride`` apart (the last row and column of patches are moved in to reach the
    border), and the drop ``s(x) - s(x_occluded)`` of the target's probability is
    spread over the patch. Departures: the paper shows the score per position (a coarse
    grid); here each pixel averages the drops of the patches covering it, as Captum
    does, so the map has the input's size. All occluded copies of a batch are built on
    the device and pushed through the model ``batch_size`` rows at a time.

    Parameters
    ----------
    patch_size : int or None, default None
        Side of the square patch in pixels (None: 1/8 of the image's shorter side).
    stride : int or None, default None
        Step between patch positions (None: half the patch).
    baseline : {"black", "zero", "white", "mean", "blur"} or float, default "black"
    score : {"probability", "logit", "loss"}, default "probability"
    batch_size : int, default 32
    jit_compile : bool, default False
    """

    default_score = "probability"
    parameters = {
        "patch_size": Param(None, int, low=1, allow_none=True, doc="Patch side in pixels."),
        "stride": Param(None, int, low=1, allow_none=True, doc="Step between patches."),
        "baseline": Param("black", (str, float), check=check_baseline, doc="What hides a patch."),
    }

    def setup(self):
        height, width = self.spec.input_shape[:2]
        self.patch_size = self.resolved["patch_size"] or max(1, min(height, width) // 8)
        self.stride = self.resolved["stride"] or max(1, self.patch_size // 2)
        if self.patch_size > min(height, width):
            raise ParameterError(f"{self.display_name}: parameter 'patch_size' ({self.patch_size}) is "
                                 f"larger than the image ({height}x{width}).")
        starts_y = patch_starts(height, self.patch_size, self.stride)
        starts_x = patch_starts(width, self.patch_size, self.stride)
        ys, xs = np.meshgrid(starts_y, starts_x, indexing="ij")
        self._corners = tf.constant(np.stack([ys.ravel(), xs.ravel()], axis=1), tf.int32)
        # Patches form a grid, so the patches covering a pixel are (rows covering it) x (columns).
        per_row = [((np.arange(size)[:, None] >= s) & (np.arange(size)[:, None] < s + self.patch_size)).sum(1)
                   for size, s in ((height, starts_y[None, :]), (width, starts_x[None, :]))]
        self._coverage = tf.constant(np.outer(*per_row), tf.float32)

    @property
    def n_positions(self) -> int:
        """Occluded copies per image (one forward pass each)."""
        return int(self._corners.shape[0])

    def n_copies(self):
        return self.n_positions

    def _patch_masks(self, positions):
        """(R, H, W) float masks, 1 inside the patch at each of `positions`."""
        corners = tf.gather(self._corners, positions)
        height, width = self.spec.input_shape[:2]
        rows = tf.range(height)[None, :]
        cols = tf.range(width)[None, :]
        inside_y = (rows >= corners[:, :1]) & (rows < corners[:, :1] + self.patch_size)
        inside_x = (cols >= corners[:, 1:]) & (cols < corners[:, 1:] + self.patch_size)
        return tf.cast(inside_y[:, :, None] & inside_x[:, None, :], tf.float32)

    def prepare(self, images, targets):
        return {"clean": self.scores(images, targets),
                "baselines": baseline_images(images, self.resolved["baseline"], self.spec.input_range)}

    def contribution(self, images, targets, state, rows, positions, drawn):
        masks = self._patch_masks(positions)[..., None]
        occluded = tf.gather(images, rows) * (1.0 - masks) + tf.gather(state["baselines"], rows) * masks
        drops = tf.gather(state["clean"], rows) - self.scores(occluded, tf.gather(targets, rows))
        return drops[:, None, None] * masks[..., 0]

    def finalize(self, images, targets, state, total):
        return tf.math.divide_no_nan(total, self._coverage)
