"""What SquareGrad and VarGrad share: the moments of SmoothGrad's noisy gradients."""

from __future__ import annotations

from xai._lazy import tf
from xai.plugins.smoothgrad import SmoothGrad


class GradientMoments(SmoothGrad):
    """Accumulates, per input value, the sum and the sum of squares of the noisy gradients'
    differences from the clean image's gradient ``c``: ``S1 = sum_j (g_j - c)`` and
    ``S2 = sum_j (g_j - c)**2``. A variance is then ``(S2 - S1**2 / n) / (n - 1)`` without
    float32's cancellation where the noise moves the gradient little, and a mean square is
    ``(S2 + 2 c S1) / n + c**2``. Both statistics come from the same totals, so a comparison
    that runs SquareGrad and VarGrad with the same noise computes the gradients once
    (`shared_totals`): the second method finds the first's totals. Where neither the
    variance nor the sharing needs it (SquareGrad's plain `explain`), ``c`` is 0 and costs
    nothing (`centred`)."""

    def accumulator_shape(self):
        return (2, *self.spec.input_shape)

    def centred(self) -> bool:
        """Whether ``c`` is the clean gradient (one more gradient per image) or 0 (a hook,
        read when `prepare` is traced)."""
        return True

    def prepare(self, images, targets):
        if not self.centred():
            return {"clean": tf.zeros_like(images)}
        return {"clean": self.input_gradients(images, targets)}

    def contribution(self, images, targets, state, rows, copies, noisy):
        shifted = super().contribution(images, targets, state, rows, copies, noisy) - tf.gather(
            state["clean"], rows)
        return tf.stack([shifted, shifted ** 2], axis=1)

    def shared_totals(self):
        if not self.centred():
            return None
        # Everything the noisy copies and their gradients depend on; the reduction is finalize's.
        names = ("score", "noise_level", "antithetic", "n_samples", "batch_size", "jit_compile")
        return ("gradient_moments", *(self.resolved[k] for k in names), int(self._seed.numpy()))
