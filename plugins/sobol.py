"""Sobol attribution (Fel et al. 2021): total Sobol indices of a grid of perturbation masks."""

from __future__ import annotations

import warnings

import numpy as np

from xai._lazy import tf
from xai.plugin_api import Param
from xai.plugins._grid_designs import GRID_INTERPOLATION, GRID_SIZE, PERTURBATION, GridDesignExplainer, qmc_engine

#: Floor of the output variance (Xplique's), so a constant score gives 0, not NaN.
VARIANCE_FLOOR = 1e-12


def sobol_designs(n_designs: int, n_cells: int, seed: int) -> np.ndarray:
    """Saltelli's replicated design, (n_designs * (n_cells + 2), n_cells) float32 in [0, 1):
    matrices A and B from one scrambled Sobol sequence of dimension ``2 * n_cells``, then for
    each cell i the matrix C_i, A with column i taken from B."""
    with warnings.catch_warnings():
        # Powers of two keep the sequence balanced; other counts still work.
        warnings.filterwarnings("ignore", message=".*balance properties of Sobol")
        ab = qmc_engine("Sobol", 2 * n_cells, seed, scramble=True).random(n_designs)
    a, b = ab[:, :n_cells], ab[:, n_cells:]
    swap = np.eye(n_cells, dtype=bool)[:, None, :]
    c = np.where(swap, b[None], a[None]).reshape(n_cells * n_designs, n_cells)
    return np.concatenate([a, b, c]).astype(np.float32)


def jansen_total_indices(outputs, n_designs: int):
    """Jansen's estimator of every cell's total Sobol index, (n, n_cells).

    ``outputs`` (n, n_designs * (n_cells + 2)) are each image's scores of the designs of
    `sobol_designs`, in its order (A, B, C_1 ... C_d). For cell i,
    ``ST_i = sum_j (f(A_j) - f(C_i,j))^2 / (2 N Var f(A))`` with the unbiased variance of
    the N scores of A.
    """
    outputs = tf.convert_to_tensor(outputs, tf.float32)
    a, c = design_blocks(outputs, n_designs)
    return jansen_from_blocks(a, c)


def design_blocks(outputs, n_designs: int):
    """The scores of A (n, N) and of every C_i (n, n_cells, N) in `sobol_designs`' order."""
    n = n_designs
    return outputs[:, :n], tf.reshape(outputs[:, 2 * n:], (tf.shape(outputs)[0], -1, n))


def jansen_from_blocks(a, c):
    """`jansen_total_indices` from the scores of A (n, N) and of the C_i (n, n_cells, N)."""
    n = int(a.shape[1])
    centred = a - tf.reduce_mean(a, axis=1, keepdims=True)
    variance = tf.maximum(tf.reduce_sum(centred ** 2, axis=1) / max(n - 1, 1), VARIANCE_FLOOR)
    return tf.reduce_sum((a[:, None, :] - c) ** 2, axis=-1) / (2.0 * n * variance[:, None])


class Sobol(GridDesignExplainer):
    """Total Sobol indices of the cells of a ``grid_size`` x ``grid_size`` grid.

    Fel, Cadène, Chalvidal, Cord, Vigouroux & Serre, "Look at the Variance! Efficient
    Black-box Explanations with Sobol-based Sensitivity Analysis", NeurIPS 2021. Each cell i
    carries a mask value ``M_i`` in [0, 1]; the image perturbed by the mask, upsampled by
    nearest neighbour, is scored, and a cell's total index ``ST_i = E[Var(f | M_~i)] / Var f``
    is the share of the score's variance it explains, alone or with any other cells.
    Designs are the paper's quasi-Monte Carlo ones: matrices A and B from a scrambled Sobol
    sequence (``scipy.stats.qmc``, seeded), and for each cell C_i = A with column i from B,
    so an image costs ``n_designs * (grid_size**2 + 2)`` forward passes; the indices come
    from Jansen's estimator (`jansen_total_indices`). The designs are drawn once from
    ``seed`` and every image shares them, so maps do not depend on ``batch_size``. The
    perturbations are the paper's: ``"inpainting"`` ``x M`` (masked pixels become 0),
    ``"blur"`` ``x M + (1 - M) blur(x)`` and ``"amplitude"`` ``x (M - 1/2) sigma`` with
    sigma 1. The grid of indices is upsampled to the input size with ``interpolation``.

    Departures: Xplique (2.0.2) and the authors' code draw the unscrambled Sobol sequence of
    ``tf.math.sobol_sample``, the same whatever the seed; scrambled (randomised) QMC keeps
    the sequence's balance, makes ``seed`` draw independent replicates and the estimates
    unbiased (tests show the same maps as Xplique's on its designs). ``"blur"`` is xai's
    Gaussian blur (kernel 11, sigma 5, RISE's substrate) where both codes use OpenCV's 10x10
    box filter. The map is upsampled bilinearly by default (bicubically in both:
    ``interpolation="bicubic"``, which XLA cannot compile). The amplitude perturbation
    follows both codes, ``x (M - 1/2) sigma``; their docstrings write ``x + (M - 1/2) sigma``.

    Parameters
    ----------
    grid_size : int, default 8
        Cells per side (Xplique's default).
    n_designs : int, default 32
        Rows N of A and B (Xplique's ``nb_design``); a power of two keeps the Sobol
        sequence balanced.
    perturbation : {"inpainting", "blur", "amplitude"}, default "inpainting"
    seed : int, default 0
        Scrambling of the Sobol sequence.
    interpolation : {"bilinear", "nearest", "bicubic"}, default "bilinear"
        Upsampling of the grid of indices ("nearest": each cell's index over its pixels).
    score : {"probability", "logit", "loss"}, default "probability"
    batch_size : int, default 32
    jit_compile : bool, default False
    """

    parameters = {
        "grid_size": GRID_SIZE,
        "n_designs": Param(32, int, low=2, doc="Quasi-Monte Carlo designs N (forward passes: N (grid^2 + 2))."),
        "perturbation": PERTURBATION,
        "seed": Param(0, int, low=0, doc="Scrambling of the Sobol sequence."),
        "interpolation": GRID_INTERPOLATION,
    }

    def make_designs(self, n_cells):
        return sobol_designs(self.resolved["n_designs"], n_cells, self.design_seed)

    def estimate(self, designs, scores):
        return jansen_total_indices(scores, self.resolved["n_designs"])

    def estimate_pooled(self, designs, scores):
        """Jansen's estimator on the union of the replicates' A and C_i (each replicate's
        designs are of its own N: their count divided by ``grid^2 + 2``)."""
        blocks = [design_blocks(tf.convert_to_tensor(s, tf.float32), len(d) // (d.shape[1] + 2))
                  for d, s in zip(designs, scores)]
        return jansen_from_blocks(tf.concat([a for a, _ in blocks], axis=1), tf.concat([c for _, c in blocks], axis=2))
