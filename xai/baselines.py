"""Reference images ("baselines") that methods and metrics compare an image against.

Integrated Gradients integrates from a baseline, Occlusion pastes it over patches, and
deletion/insertion switch pixels to or from it. One vocabulary for all of them:

- ``"zero"``: all zeros;
- ``"black"`` / ``"white"``: the bottom / top of the model's input range (0 and 1 for
  [0, 1] images, 0 and 255 for a model that takes [0, 255]);
- ``"mean"``: each image's per-channel mean;
- ``"blur"``: RISE's substrate, a Gaussian blur (kernel 11, sigma 5, zero padding);
- a number: that constant everywhere.
"""

from __future__ import annotations

import numpy as np

from xai._lazy import tf
from xai.errors import ParameterError

NAMED_BASELINES = ("zero", "black", "white", "grey", "mean", "blur")


def gaussian_kernel(kernel_size: int = 11, sigma: float = 5.0) -> np.ndarray:
    """The sampled 2-D Gaussian normalised to sum 1, (kernel_size, kernel_size)."""
    r = np.arange(kernel_size) - (kernel_size - 1) / 2
    g = np.exp(-(r ** 2) / (2 * sigma ** 2))
    kernel = np.outer(g, g)
    return kernel / kernel.sum()


def blur(images: tf.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> tf.Tensor:
    """Per-channel Gaussian blur with zero padding, on the device (N, H, W, C)."""
    images = tf.convert_to_tensor(images, tf.float32)
    channels = int(images.shape[-1])
    kernel = gaussian_kernel(kernel_size, sigma)
    k = tf.constant(np.tile(kernel[:, :, None, None], (1, 1, channels, 1)), tf.float32)
    return tf.nn.depthwise_conv2d(images, k, strides=[1, 1, 1, 1], padding="SAME")


def check_range(value) -> tuple[float, float]:
    """A model's pixel range (low, high) as floats, or a `ParameterError` saying what one is."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ParameterError(f"input_range must be two numbers (low, high); got {value!r}.") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ParameterError(f"input_range must be finite with low < high; got {value!r}.")
    return (low, high)


def check_baseline(owner: str, baseline) -> None:
    """Raise a ParameterError naming the allowed baselines when `baseline` is none of them."""
    if isinstance(baseline, str):
        if baseline not in NAMED_BASELINES:
            raise ParameterError(f"{owner}: parameter 'baseline' must be one of {NAMED_BASELINES} or a "
                             f"number; got {baseline!r}.")
    elif isinstance(baseline, bool) or not isinstance(baseline, (int, float, np.number)) \
            or not np.isfinite(baseline):
        raise ParameterError(f"{owner}: parameter 'baseline' must be one of {NAMED_BASELINES} or a "
                         f"finite number; got {baseline!r}.")


def baseline_images(images: tf.Tensor, baseline, input_range=(0.0, 1.0)) -> tf.Tensor:
    """The baseline for each image of the batch, same shape and dtype (traceable);
    `input_range` is the model's pixel range (`xai.models.ModelSpec.input_range`)."""
    if isinstance(baseline, str):
        if baseline == "zero":
            return tf.zeros_like(images)
        if baseline in ("black", "white", "grey"):
            # grey: the middle of the input range (Xplique's LIME reference 0.5 on [0, 1]).
            value = {"black": input_range[0], "white": input_range[1],
                     "grey": (input_range[0] + input_range[1]) / 2}[baseline]
            return tf.fill(tf.shape(images), tf.cast(value, images.dtype))
        if baseline == "mean":
            return tf.broadcast_to(tf.reduce_mean(images, axis=[1, 2], keepdims=True), tf.shape(images))
        if baseline == "blur":
            return blur(images)
    check_baseline("baseline_images", baseline)
    return tf.fill(tf.shape(images), tf.cast(baseline, images.dtype))


def inpaint(images: tf.Tensor, removed: tf.Tensor) -> tf.Tensor:
    """`images` with their `removed` pixels filled in from the kept ones (traceable).

    A push-pull pyramid (Gortler et al., "The Lumigraph", 1996): the sums of the kept values
    and their counts are added up 2x2 at a time until one pixel is left ("push"; odd sides
    are padded with nothing kept); then, from the coarsest level up, each pixel keeps its
    own level's mean where it covers a kept pixel and takes the bilinearly upsampled coarser
    estimate where it covers none ("pull"). Holes fill with a smooth interpolation of their
    surroundings, like ROAD's linear imputation (Rong et al. 2022;
    `xai.evaluation.remove_and_debias`), which it matches to about 6% of the filled values
    (relative L2; tested) at a third of a forward pass of the default model, so a deletion
    curve can build every perturbed image on the device. Kept pixels are returned
    unchanged; with no pixel kept the image is 0.

    images : (N, H, W, C) float, computed in float32; removed : (N, H, W) or (N, H, W, 1) bool.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    removed = tf.convert_to_tensor(removed, tf.bool)
    if removed.shape.rank == 3:
        removed = removed[..., None]
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ParameterError("inpaint needs images of a known height and width (a static shape).")
    known = tf.cast(tf.logical_not(removed), tf.float32)
    # Push: sums of kept values (channels) and kept counts (last channel), 2x2 at a time.
    levels = [tf.concat([images * known, known], axis=-1)]
    while levels[-1].shape[1] > 1 or levels[-1].shape[2] > 1:
        h, w = levels[-1].shape[1], levels[-1].shape[2]
        padded = tf.pad(levels[-1], [[0, 0], [0, h % 2], [0, w % 2], [0, 0]])
        levels.append(tf.nn.avg_pool2d(padded, 2, 2, "VALID") * 4.0)
    filled = None
    for level in reversed(levels):
        sums, counts = level[..., :-1], level[..., -1:]
        mean = tf.math.divide_no_nan(sums, counts)
        if filled is not None:
            # The coarser grid covers this level padded to even sides: upsample to that, crop.
            h, w = level.shape[1], level.shape[2]
            coarse = tf.image.resize(filled, (2 * filled.shape[1], 2 * filled.shape[2]), "bilinear")[:, :h, :w]
            mean = tf.where(counts > 0, mean, coarse)
        filled = mean
    return tf.where(removed, filled, images)
