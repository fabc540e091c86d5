"""A chance-level baseline: seeded uniform noise, so a report shows what chance scores."""

from __future__ import annotations

from xai._lazy import tf
from xai.plugin_api import Explainer, Param


class RandomBaseline(Explainer):
    """Uniform noise in [0, 1) per pixel, independent of the model.

    Not an explanation: the floor every real method must beat on faithfulness and
    localisation metrics. Image i of a call gets the counter-based seed ``(seed, i)``, so
    maps do not depend on ``batch_size``.

    Parameters
    ----------
    seed : int, default 0
    batch_size : int, default 32
    """

    stochastic = True
    uses_model = False
    parameters = {"seed": Param(0, int, low=0, doc="Seed of the noise.")}

    def explain_batch(self, images, targets, offset):
        height, width = self.spec.input_shape[:2]
        return tf.stack([
            tf.random.stateless_uniform((height, width), seed=(self.resolved["seed"], offset + i))
            for i in range(int(images.shape[0]))
        ])
