"""A chance-level baseline: seeded uniform noise, so a report shows what chance scores."""

from __future__ import annotations

import numpy as np

from xai._lazy import tf
from xai.plugin_api import Explainer, Param, content_digest


class RandomBaseline(Explainer):
    """Uniform noise in [0, 1) per pixel, independent of the model.

    Not an explanation: the floor every real method must beat on faithfulness and
    localisation metrics. An image's noise is drawn from the counter-based seed ``(seed,
    h)``, ``h`` a hash of the image's values, so an image has one map whatever the
    ``batch_size``, its place in a call or the batch of a run it falls in (seeded by its place
    in a call, every batch of a run drew the same maps for its first, second, ... image, which
    made two halves of the images agree on `random` more than chance).

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
            # 31 bits of the image's content hash: a seed counter.
            tf.random.stateless_uniform((height, width), seed=(
                self.resolved["seed"], int.from_bytes(content_digest(image)[2][:4], "little") & 0x7FFFFFFF))
            for image in np.asarray(images, np.float32)
        ])
