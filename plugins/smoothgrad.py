"""SmoothGrad (Smilkov et al. 2017): gradients averaged over noisy copies."""

from __future__ import annotations

from xai._lazy import tf
from xai.plugin_api import REDUCTIONS, Param, PerturbationExplainer, reduce_channels


class SmoothGrad(PerturbationExplainer):
    """Mean input gradient over ``n_samples`` copies with Gaussian noise, then reduced.

    Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017. Noise is
    ``N(0, sigma^2)`` with ``sigma = noise_level * (max - min)`` of each input image (the
    paper's 10–20%). As in the paper and Xplique, raw gradients are averaged and the
    channel reduction (the same ``score`` and ``reduce`` as `VanillaGradient`) comes last.
    The noise of image i, sample j is drawn from a counter-based generator seeded with
    ``(seed, i * n_samples + j)``: maps do not depend on ``batch_size``. The predicted
    class (targets None) is the clean image's, not the noisy copies'.

    The score is the logit, the paper's class score ``S_c`` (as Simonyan et al.'s, before
    the softmax): a gradient of the loss or the probability is the logit's scaled by about
    ``1 - p``, so on an image the model is sure of, the average is dominated by the few
    copies where it is less sure (docs/methods.md, "Saturation"). `vanilla_gradient` keeps
    the seed's loss.

    SquareGrad and VarGrad are statistics of the same noisy gradients, so the three share
    one accumulator: per input value, ``S1 = sum_j (g_j - c)`` and ``S2 = sum_j (g_j - c)**2``
    around ``c``. The mean is ``c + S1 / n``, the mean square ``(S2 + 2 c S1) / n + c**2``,
    the variance ``(S2 - S1**2 / n) / (n - 1)``. ``c`` is the clean image's gradient (one more
    gradient per image and batch) where the variance needs it (VarGrad, against float32's
    cancellation) or where the totals are shared, in tolerance mode (`explain_with_error`,
    what `xai compare` runs): there a comparison running two or three of the methods with
    the same noise computes the gradients once (`shared_totals`). A plain `explain` of
    SmoothGrad or SquareGrad takes ``c = 0`` and costs ``n_samples`` gradients, its floor.

    Parameters
    ----------
    n_samples : int, default 50
    noise_level : float, default 0.15
    seed : int, default 0
    antithetic : bool, default False
        Antithetic pairs: copy ``2j + 1`` takes copy ``2j``'s noise with the opposite sign,
        which cancels the part of the gradient that is odd in the noise (its first-order
        term); the error per forward+backward pass it saves is measured in
        docs/performance.md.
    score : {"logit", "probability", "loss"}, default "logit"
    reduce : {"sum_abs", "max_abs"}, default "sum_abs"
    batch_size : int, default 32
        Noisy copies per model call (several images' copies share a call).
    jit_compile : bool, default False
    """

    differentiates_score = True

    stochastic = True
    sample_count = "n_samples"
    seed_free_state = True  # the clean gradient
    default_score = "logit"
    parameters = {
        "n_samples": Param(50, int, low=1, doc="Noisy copies per image."),
        "noise_level": Param(0.15, float, low=0.0, doc="sigma as a fraction of (max - min)."),
        "seed": Param(0, int, low=0, doc="Seed of the noise."),
        "antithetic": Param(False, bool, doc="Copy 2j+1 takes copy 2j's noise negated (variance reduction)."),
        "reduce": Param("sum_abs", choices=REDUCTIONS, doc="Channel reduction of |gradient|."),
    }

    def setup(self):
        # A variable, not a constant of the traced draw: `reseed` changes it without retracing.
        self._seed = tf.Variable(self.resolved["seed"], dtype=tf.int32, trainable=False)

    def reseed(self, seed):
        self._seed.assign(seed)
        return True

    def smallest_replicate(self):
        return 4  # the map's absolute value is not linear in the samples: not from one or two

    def n_copies(self):
        return self.resolved["n_samples"]

    def accumulator_shape(self):
        return (2, *self.spec.input_shape)

    def centred(self) -> bool:
        """Whether ``c`` is the clean gradient or 0 (a hook, read when `prepare` is traced):
        the clean gradient in `explain_with_error`'s replicates (`Explainer.replicate` marks
        them), where totals are pooled and shared."""
        return self.__dict__.get("is_replicate", False)

    def prepare(self, images, targets):
        if not self.centred():
            return {"clean": tf.zeros_like(images)}
        return {"clean": self.input_gradients(images, targets)}

    def draw(self, images, rows, counters):
        """Image `rows[r]` plus its noise number `counters[r]` (drawn outside XLA: XLA's
        stateless generators give other numbers, and a seed must give the same maps with
        and without jit_compile)."""
        x = tf.gather(images, rows)
        span = tf.reduce_max(x, axis=[1, 2, 3]) - tf.reduce_min(x, axis=[1, 2, 3])
        sigma = self.resolved["noise_level"] * span
        shape = tf.shape(images)[1:]
        seed = self._seed
        if self.resolved["antithetic"]:
            # counters = image * n + copy: copy 2j + 1 reuses copy 2j's draw, negated.
            odd = (counters % self.n_copies()) % 2
            counters = counters - odd
            sigma = sigma * tf.cast(1 - 2 * odd, tf.float32)
        noise = tf.map_fn(lambda c: tf.random.stateless_normal(shape, seed=tf.stack([seed, c])),
                          counters, fn_output_signature=tf.float32)
        return x + noise * sigma[:, None, None, None]

    def contribution(self, images, targets, state, rows, copies, noisy):
        shifted = self.input_gradients(noisy, tf.gather(targets, rows)) - tf.gather(state["clean"], rows)
        return tf.stack([shifted, shifted ** 2], axis=1)

    def shared_totals(self):
        if not self.centred():
            return None
        # Everything the noisy copies and their gradients depend on; the statistic and the
        # reduction are finalize's.
        names = ("score", "noise_level", "antithetic", "n_samples", "batch_size", "jit_compile")
        return ("gradient_moments", *(self.resolved[k] for k in names), int(self._seed.numpy()))

    def finalize(self, images, targets, state, total):
        mean = state["clean"] + total[:, 0] / self.resolved["n_samples"]
        return reduce_channels(mean, self.resolved["reduce"])
