"""VarGrad (Adebayo et al. 2018): the variance of SmoothGrad's noisy gradients."""

from __future__ import annotations

from xai._lazy import tf
from xai.plugin_api import Param, reduce_channels
from xai.plugins.smoothgrad import SmoothGrad


class VarGrad(SmoothGrad):
    """Variance of the input gradients over ``n_samples`` noisy copies, then reduced.

    Adebayo et al., "Local Explanation Methods for Deep Neural Networks Lack Sensitivity
    to Parameter Values", ICLR workshop 2018 (and "Sanity Checks for Saliency Maps",
    NeurIPS 2018): ``Var_j d score / d x (x + eps_j)`` per input value, with the unbiased
    (``n - 1``) estimator, as Xplique. Everything else is `SmoothGrad`'s, so a seed gives
    the same noisy copies: noise ``N(0, sigma^2)`` with ``sigma = noise_level * (max -
    min)`` of each image, drawn from ``(seed, i * n_samples + j)``; the variance is taken
    per channel and reduced last (``"sum_abs"`` and the sum coincide). The score is the
    logit. The gradients are accumulated as sums and sums of squares of their difference
    from the clean image's gradient (one more gradient per image): the variance does not
    change, and float32 keeps its digits where the noise moves the gradient little.
    Xplique's ``VarGrad`` uses an absolute ``sigma`` (``noise=0.2``), its model's output
    (``score="probability"`` on a softmax model) and the channel mean (``"sum_abs"`` /
    channels).

    Parameters
    ----------
    n_samples : int, default 50
        At least 2.
    noise_level : float, default 0.15
    seed : int, default 0
    score : {"logit", "probability", "loss"}, default "logit"
    reduce : {"sum_abs", "max_abs"}, default "sum_abs"
    batch_size : int, default 32
        Noisy copies per model call.
    jit_compile : bool, default False
    """

    parameters = {**SmoothGrad.parameters,
                  "n_samples": Param(50, int, low=2, doc="Noisy copies per image (a variance needs 2).")}

    def centred(self):
        return True  # float32's cancellation: sum g**2 - (sum g)**2 / n where g hardly moves

    def pooled_scale(self, per, samples):
        # Replicates' mean totals finalised with n = per divide by per - 1; the unbiased
        # variance of all the pooled samples divides by samples - 1.
        return (per - 1) / per * samples / (samples - 1)

    def finalize(self, images, targets, state, total):
        n = self.resolved["n_samples"]
        total_sum, total_squares = total[:, 0], total[:, 1]
        variance = tf.maximum(total_squares - total_sum ** 2 / n, 0.0) / (n - 1)
        return reduce_channels(variance, self.resolved["reduce"])
