"""SquareGrad (Hooker et al. 2019): SmoothGrad's noisy gradients, squared, then averaged."""

from __future__ import annotations

from xai._lazy import tf
from xai.plugin_api import reduce_channels
from xai.plugins.smoothgrad import SmoothGrad


class SquareGrad(SmoothGrad):
    """Mean of the squared input gradients over ``n_samples`` noisy copies, then reduced.

    Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks"
    (SmoothGrad-Squared), NeurIPS 2019: ``mean_j (d score / d x (x + eps_j))**2``.
    Everything else is `SmoothGrad`'s, so a seed gives the same noisy copies: noise
    ``N(0, sigma^2)`` with ``sigma = noise_level * (max - min)`` of each image, drawn
    from ``(seed, i * n_samples + j)``; the squares are summed per channel and reduced
    last (``"sum_abs"`` and the sum coincide: squares are not negative). The score is
    the logit, as for the paper's gradient maps. Xplique's ``SquareGrad`` uses an
    absolute ``sigma`` (``noise=0.2``: ``noise_level=0.2`` on an image spanning [0, 1]),
    its model's output (``score="probability"`` on a softmax model) and the channel mean
    (``"sum_abs"`` / channels). The squares come from SmoothGrad's moments of the noisy
    gradients: in tolerance mode (`explain_with_error`, what `xai compare` runs) they are
    taken around the clean image's gradient (one more gradient per image and batch), so that
    SmoothGrad, SquareGrad and VarGrad in one comparison compute their noisy gradients once;
    a plain `explain` sums the raw squares.

    Parameters
    ----------
    n_samples : int, default 50
    noise_level : float, default 0.15
    seed : int, default 0
    score : {"logit", "probability", "loss"}, default "logit"
    reduce : {"sum_abs", "max_abs"}, default "sum_abs"
    batch_size : int, default 32
        Noisy copies per model call.
    jit_compile : bool, default False
    """

    def finalize(self, images, targets, state, total):
        n, clean = self.resolved["n_samples"], state["clean"]
        mean_square = (total[:, 1] + 2.0 * clean * total[:, 0]) / n + clean ** 2
        return reduce_channels(tf.maximum(mean_square, 0.0), self.resolved["reduce"])
