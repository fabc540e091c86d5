"""Vanilla gradient saliency (Simonyan, Vedaldi & Zisserman 2014), the seed's method."""

from __future__ import annotations

from xai.plugin_api import REDUCTIONS, Explainer, Param, reduce_channels


class VanillaGradient(Explainer):
    """The gradient of a class score with respect to the input pixels.

    Simonyan et al., "Deep Inside Convolutional Networks", ICLR workshop 2014. The paper
    differentiates the class logit and takes the maximum |gradient| over channels. The
    default here is the seed's recipe instead: the categorical cross-entropy between the
    one-hot target and the softmax output (``score="loss"``), reduced by the sum of
    |gradient| over channels (``reduce="sum_abs"``). ``score="logit", reduce="max_abs"``
    gives the paper's and Xplique's ``Saliency``.

    Parameters
    ----------
    score : {"loss", "probability", "logit"}, default "loss"
    reduce : {"sum_abs", "max_abs"}, default "sum_abs"
    batch_size : int, default 32
    jit_compile : bool, default False

    Examples
    --------
    >>> import numpy as np, xai
    >>> model = xai.models.vgg16_gap(input_shape=(32, 32, 3), width=0.125)
    >>> maps = VanillaGradient(model).explain(np.zeros((2, 32, 32, 3), np.float32), [0, 1])
    >>> maps.shape, maps.dtype
    ((2, 32, 32), dtype('float32'))
    """

    differentiates_score = True

    default_score = "loss"
    parameters = {
        "reduce": Param("sum_abs", choices=REDUCTIONS, doc="Channel reduction of |gradient|."),
    }

    def compute(self, images, targets):
        return reduce_channels(self.input_gradients(images, targets), self.resolved["reduce"])
