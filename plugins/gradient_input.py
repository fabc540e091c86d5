"""Gradient * Input (Shrikumar et al. 2016; Ancona et al. 2018)."""

from __future__ import annotations

from xai.plugin_api import SIGNED_REDUCTIONS, Explainer, Param, reduce_channels


class GradientInput(Explainer):
    """``x * d score / d x``, summed over channels.

    Shrikumar et al., "Not Just a Black Box: Learning Important Features Through
    Propagating Activation Differences", 2016; Ancona et al., "Towards better
    understanding of gradient-based attribution methods for Deep Neural Networks", ICLR
    2018. As in Ancona et al., the score is the target's pre-softmax logit and a pixel's
    attribution sums its channels' (signed), so on a model linear in its input a map sums
    to ``logit - bias`` (tested). Xplique's ``GradientInput`` differentiates the model's
    output (``score="probability"`` on a softmax model) and averages the channels
    (``reducer="mean"``: ``"sum"`` divided by the channel count).

    Parameters
    ----------
    score : {"logit", "probability", "loss"}, default "logit"
    reduce : {"sum", "sum_abs", "max_abs"}, default "sum"
    batch_size : int, default 32
    jit_compile : bool, default False

    Examples
    --------
    >>> import numpy as np, xai
    >>> model = xai.models.vgg16_gap(input_shape=(32, 32, 3), width=0.125)
    >>> maps = GradientInput(model).explain(np.ones((2, 32, 32, 3), np.float32), [0, 1])
    >>> maps.shape, maps.dtype
    ((2, 32, 32), dtype('float32'))
    """

    differentiates_score = True

    default_score = "logit"
    parameters = {
        "reduce": Param("sum", choices=SIGNED_REDUCTIONS, doc="Channel reduction (sum: signed)."),
    }

    def compute(self, images, targets):
        attributions = self.input_gradients(images, targets) * images
        return reduce_channels(attributions, self.resolved["reduce"])
