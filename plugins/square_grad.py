"""SquareGrad (Hooker et al. 2019): SmoothGrad's noisy gradients, squared, then averaged."""

from __future__ import annotations

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
    (``"sum_abs"`` / channels).

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

    default_score = "logit"

    def contribution(self, images, targets, state, rows, copies, noisy):
        return super().contribution(images, targets, state, rows, copies, noisy) ** 2
