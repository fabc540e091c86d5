"""HSIC attribution (Novello et al. 2022): dependence between each grid cell's mask and the score."""

from __future__ import annotations

from xai._lazy import tf
from xai.plugin_api import Param
from xai.plugins._grid_designs import GRID_INTERPOLATION, GRID_SIZE, PERTURBATION, GridDesignExplainer, qmc_engine


def binary_lhs_designs(n_designs: int, n_cells: int, seed: int):
    """(n_designs, n_cells) float32 in {0, 1}: a seeded Latin hypercube thresholded at 1/2,
    so every cell is kept in exactly half the designs (``n_designs // 2`` or one more)."""
    points = qmc_engine("LatinHypercube", n_cells, seed).random(n_designs)
    return (points >= 0.5).astype("float32")


def median_last_axis(values):
    """The median along the last axis (the mean of the middle two for an even count)."""
    n = int(values.shape[-1])
    ordered = tf.sort(values, axis=-1)
    if n % 2:
        return ordered[..., n // 2]
    return 0.5 * (ordered[..., n // 2 - 1] + ordered[..., n // 2])


def hsic_indices(designs, outputs):
    """HSIC between each cell's mask values and the scores, (n, n_cells).

    ``designs`` (N, n_cells) are the mask values of the N designs and ``outputs`` (n, N)
    each image's scores of them. The paper's estimator
    ``HSIC_i = tr(K_i H L H) / (N - 1)^2``, with ``H = I - 1/N``, the output Gram matrix
    ``L_ab = exp(-(y_a - y_b)^2 / (2 sigma^2))`` (sigma the median of the image's N scores,
    as the authors' code) and the input kernel ``k(x, x') = 1 - (x - x')^2`` (the Dirac
    kernel on binary masks; the paper's ANOVA variant adds a constant, which centring
    removes). Centring also removes every term of ``K_i`` but ``2 x_i x_i^T``, so
    ``HSIC_i = 2 x_i^T (H L H) x_i / (N - 1)^2``: one (N, N) matrix per image, no
    (n_cells, N, N) kernel tensor.
    """
    x = tf.convert_to_tensor(designs, tf.float32)
    y = tf.convert_to_tensor(outputs, tf.float32)
    n = int(x.shape[0])
    sigma = median_last_axis(y)
    # A zero median would divide by zero: a vanishing bandwidth, L = I, equal indices.
    two_sigma2 = tf.maximum(2.0 * sigma ** 2, 1e-12)[:, None, None]
    # L - 1 rather than L: centring removes the constant, and when the scores vary little
    # against sigma, L is nearly all ones and exp would lose the differences to rounding.
    gram = tf.math.expm1(-(y[:, :, None] - y[:, None, :]) ** 2 / two_sigma2)
    centred = (gram - tf.reduce_mean(gram, axis=1, keepdims=True) - tf.reduce_mean(gram, axis=2, keepdims=True)
               + tf.reduce_mean(gram, axis=[1, 2], keepdims=True))
    return 2.0 * tf.reduce_sum(x[None] * tf.einsum("nab,bd->nad", centred, x), axis=1) / (n - 1) ** 2


class HSIC(GridDesignExplainer):
    """HSIC between the mask value of each cell of a ``grid_size`` grid and the score.

    Novello, Fel & Vigouroux, "Making Sense of Dependence: Efficient Black-box
    Explanations Using Dependence Measure", NeurIPS 2022. Each of ``n_designs`` binary
    masks keeps or perturbs each cell (upsampled by nearest neighbour); the perturbed images
    are scored once each, and a cell's importance is the Hilbert-Schmidt independence
    criterion between its mask values and the scores (`hsic_indices`: the paper's Dirac
    kernel on the masks, an RBF kernel with the median bandwidth on the scores, the biased
    estimator ``tr(KHLH) / (N - 1)^2``). An image costs ``n_designs`` forward passes. The
    designs are the paper's: a Latin hypercube thresholded at 1/2 (so each cell is kept in
    half the designs), drawn once from ``seed`` and shared by every image, so maps do not
    depend on ``batch_size``. Perturbations as `Sobol`'s (``"inpainting"``: masked pixels
    become 0).

    Departures: Xplique (2.0.2) draws its designs from the unscrambled Sobol sequence of
    ``tf.math.sobol_sample`` (its docs: because scipy's Latin hypercube needed scipy 1.7)
    and divides the trace by N instead of the paper's (N - 1)^2: a constant factor, the same
    maps up to scale (tests show the same maps on the same designs). The bandwidth is the
    median of the scores themselves, as in the authors' code and Xplique, not the median of
    their pairwise distances; it depends on the scores' offset, so the default probability
    suits it better than a logit. ``"blur"`` and the upsampling as `Sobol`.

    Parameters
    ----------
    grid_size : int, default 8
        Cells per side (Xplique's default; its docs recommend 7).
    n_designs : int, default 500
        Masks per image (Xplique's ``nb_design``; the paper uses 1,500, or 750 for a cheaper
        explanation).
    perturbation : {"inpainting", "blur", "amplitude"}, default "inpainting"
    seed : int, default 0
    interpolation : {"bilinear", "nearest", "bicubic"}, default "bilinear"
    score : {"probability", "logit", "loss"}, default "probability"
    batch_size : int, default 32
    jit_compile : bool, default False
    """

    smallest_designs = 100  # the kernel estimator's bias grows fast below ~100 designs
    parameters = {
        "grid_size": GRID_SIZE,
        "n_designs": Param(500, int, low=2, doc="Binary masks per image (one forward pass each)."),
        "perturbation": PERTURBATION,
        "seed": Param(0, int, low=0, doc="Seed of the Latin hypercube."),
        "interpolation": GRID_INTERPOLATION,
    }

    def make_designs(self, n_cells):
        return binary_lhs_designs(self.resolved["n_designs"], n_cells, self.design_seed)

    def estimate(self, designs, scores):
        return hsic_indices(designs, scores)
