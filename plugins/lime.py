"""LIME (Ribeiro, Singh & Guestrin 2016): a weighted ridge fit of the score on superpixels."""

from __future__ import annotations

from xai._lazy import tf
from xai.plugin_api import Param
from xai.plugins._coalitions import CoalitionExplainer, least_squares


class LIME(CoalitionExplainer):
    """Each superpixel's coefficient in a locally weighted ridge fit of the target's score.

    Ribeiro, Singh & Guestrin, "'Why Should I Trust You?': Explaining the Predictions of Any
    Classifier", KDD 2016. The image is cut into superpixels (SLIC-zero by default, see
    ``segmentation``); each of ``n_samples`` coalitions keeps every superpixel with
    probability 1/2 and shows ``baseline`` in the others. The probability ``y`` of the
    target class on each copy is fitted by ridge regression with an intercept,
    ``min sum_z pi(z) (y(z) - b - z.beta)^2 + alpha |beta|^2``, with the paper's
    exponential kernel ``pi(z) = exp(-D(z)^2 / kernel_width^2)``; every pixel gets its
    superpixel's ``beta``. The normal equations are summed copy by copy through the same
    chunked loop as RISE and Occlusion and solved for all images at once (float64).

    Choices and departures:

    - Distance: ``"cosine"``, as the authors' ``lime`` package for images, is the cosine
      distance between the coalition's indicators ``z`` and the all-ones vector,
      ``1 - sqrt(k / m)`` for ``k`` of ``m`` superpixels kept (1 when none is); ``"euclidean"``
      is ``|1 - z| / sqrt(m) = sqrt((m - k) / m)`` (normalised by ``sqrt(m)`` so one width
      serves any segment count). Xplique's default is the L2 distance between the pixels of
      the image and of the copy with width 45, which depends on the image's size and range;
      it is not offered.
    - The kernel is the paper's ``exp(-D^2 / sigma^2)`` with ``lime``'s width 0.25; the
      ``lime`` package takes the square root of it (a width ``sqrt(2)`` larger).
    - No K-LASSO feature selection (the paper's Algorithm 1): every superpixel gets a
      coefficient, as ``lime``'s image explainer (default ``num_features=100000``) and
      Xplique do. ``alpha`` is ``lime``'s ridge penalty (1; Xplique's is 2); the intercept is
      not penalised, as in scikit-learn's ``Ridge``, which this fit equals (with ``alpha=0``
      and fewer samples than superpixels, the minimum-norm least-squares solution).
    - Superpixels: ``lime`` and Xplique use quickshift, whose count follows the image
      (about 50 at 64x64 and 300 at 224x224 with Xplique's settings, 1000 on noise), too
      many for a fit on a few hundred samples; SLIC-zero's count follows ``n_segments``.
    - Switched-off superpixels show ``"grey"`` (the middle of the input range: Xplique's
      ``ref_value`` 0.5 for [0, 1] images); ``lime`` shows each superpixel's mean colour.
    - Coalitions are drawn from (seed, image number * n_samples + copy): maps do not depend
      on ``batch_size``. ``lime`` adds the unperturbed image as a first sample; this does not.

    Cost: ``n_samples + 1`` forward passes per image (the image itself centres the fitted
    scores: float32 sums of uncentred scores lose coefficients of 1e-3 to rounding), plus one
    SLIC segmentation on the host.

    Parameters
    ----------
    n_samples : int, default 1000
        ``lime``'s default for images (Xplique's is 150).
    segmentation : {"slic", "grid"}, default "slic"
    n_segments : int, default 50
        SLIC: the approximate count (SLIC-zero, scikit-image); grid: exactly this many
        rectangles.
    baseline : {"grey", "zero", "black", "white", "mean", "blur"} or float, default "grey"
    distance : {"cosine", "euclidean"}, default "cosine"
    kernel_width : float, default 0.25
    alpha : float, default 1.0
        Ridge penalty on the superpixel coefficients.
    seed : int, default 0
    score : {"probability", "logit", "loss"}, default "probability"
    batch_size : int, default 32
    jit_compile : bool, default False
    """

    parameters = {
        **CoalitionExplainer.coalition_parameters(1000),
        "distance": Param("cosine", choices=("cosine", "euclidean"),
                          doc="Distance of a coalition to the whole image, on the superpixel indicators."),
        "kernel_width": Param(0.25, float, low=1e-6, doc="Width sigma of the kernel exp(-D^2 / sigma^2)."),
        "alpha": Param(1.0, float, low=0.0, doc="Ridge penalty on the coefficients."),
    }

    def coalitions(self, uniforms, copies, n_features):
        present = tf.range(self.max_features)[None, :] < n_features[:, None]
        return tf.cast((uniforms[:, 1:] < 0.5) & present, tf.float32)

    def sample_weights(self, z, n_features):
        kept = tf.reduce_sum(z, axis=1) / tf.cast(n_features, tf.float32)
        if self.resolved["distance"] == "cosine":
            squared = tf.square(1.0 - tf.sqrt(kept))
        else:
            squared = 1.0 - kept
        return tf.exp(-squared / self.resolved["kernel_width"] ** 2)

    def solve(self, gram, moments, present, state):
        penalty = tf.pad(present, [[0, 0], [1, 0]]) * self.resolved["alpha"]
        return least_squares(gram + tf.linalg.diag(penalty), moments)[:, 1:]
