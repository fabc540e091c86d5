"""DeconvNet (Zeiler & Fergus 2014): ReLUs send back the positive part of the gradient."""

from __future__ import annotations

from xai._lazy import tf
from xai.plugins.guided_backprop import GuidedBackprop


class DeconvNet(GuidedBackprop):
    """The input gradient of a class score with every ReLU's backward pass replaced by a ReLU.

    Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014.
    Their deconvolutional network runs the network backwards with transposed filters,
    max-pooling "switches" and a ReLU on the reconstruction at each ReLU of the network:
    that is the input gradient with each ReLU sending back ``R_in = max(R_out, 0)``,
    whatever its forward input was (Springenberg et al. 2015 show the equivalence). At
    a ReLU6 the incoming gradient's positive part passes above 6 too, as in Xplique.
    Everything else (the private copy of the model, which models apply, the score and the
    channel reduction) is `GuidedBackprop`'s.

    Parameters
    ----------
    score : {"logit", "probability", "loss"}, default "logit"
        Xplique differentiates the model's output: ``"probability"`` on a softmax model.
    reduce : {"sum", "sum_abs", "max_abs"}, default "sum_abs"
        Channel reduction (Xplique's default ``reducer="mean"`` is ``"sum"`` / channels).
    batch_size : int, default 32
    jit_compile : bool, default False
    """


    def relu_backward(self, upstream, backward):
        return tf.nn.relu(upstream)
