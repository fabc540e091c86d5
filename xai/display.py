"""The seed's pictures: a map in grey, overlaid on the image, and grids of methods.

Functions return `matplotlib.figure.Figure` objects made through matplotlib's object API:
nothing is shown or saved unless asked, pyplot's global state (its backend, its list of open
figures) is never touched, and a figure is freed like any object once unreferenced.
"""

from __future__ import annotations

import textwrap
from typing import Mapping, Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from xai.errors import DataError


def to_grey(saliency: np.ndarray) -> np.ndarray:
    """Min-max normalise a map to uint8 0..255 (the seed's step 4); constant -> zeros."""
    m = np.asarray(saliency, dtype=np.float64)
    if m.ndim != 2:
        raise DataError(f"a map must be (H, W); got shape {m.shape}.")
    lo, hi = np.min(m), np.max(m)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(m.shape, np.uint8)
    return (255 * (m - lo) / (hi - lo)).astype(np.uint8)


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.5,
            cmap: str = "jet") -> np.ndarray:
    """Blend the coloured normalised map over an RGB image in [0, 1]; returns RGB float."""
    heat = matplotlib.colormaps[cmap](to_grey(saliency) / 255.0)[..., :3]
    return np.clip((1 - alpha) * np.asarray(image)[..., :3] + alpha * heat, 0, 1)


def to_unit(image: np.ndarray, input_range=(0.0, 1.0)) -> np.ndarray:
    """An image in the model's pixel range mapped to [0, 1] for display."""
    low, high = input_range
    return np.clip((np.asarray(image, np.float32) - low) / (high - low), 0, 1)


def explanation_figure(image: np.ndarray, maps: Mapping[str, np.ndarray],
                       title: Optional[str] = None, input_range=(0.0, 1.0)) -> Figure:
    """One image (pixel values in `input_range`): the image, then per method its grey map
    and its overlay."""
    image = to_unit(image, input_range)
    cols = 1 + 2 * len(maps)
    fig = Figure(figsize=(2.2 * cols, 2.6))
    axes = fig.subplots(1, cols, squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title(title or "image", fontsize=9)
    for k, (name, m) in enumerate(maps.items()):
        axes[1 + 2 * k].imshow(to_grey(m), cmap="gray", vmin=0, vmax=255)
        axes[1 + 2 * k].set_title(f"{name}", fontsize=9)
        axes[2 + 2 * k].imshow(overlay(image, m))
        axes[2 + 2 * k].set_title(f"{name} overlay", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def grid_figure(images: Sequence[np.ndarray], maps_by_method: Mapping[str, Sequence[np.ndarray]],
                row_titles: Optional[Sequence[str]] = None,
                masks: Optional[Sequence[Optional[np.ndarray]]] = None,
                input_range=(0.0, 1.0)) -> Figure:
    """Images x methods: each row an image (pixel values in `input_range`), each method a
    grey map and an overlay."""
    methods = list(maps_by_method)
    rows, cols = len(images), 1 + 2 * len(methods)
    fig = Figure(figsize=(1.9 * cols, 2.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, image in enumerate(images):
        image = to_unit(image, input_range)
        axes[r, 0].imshow(image)
        if masks is not None and masks[r] is not None:
            axes[r, 0].contour(masks[r], levels=[0.5], colors="white", linewidths=0.8)
        axes[r, 0].set_title(row_titles[r] if row_titles else "image", fontsize=7)
        for k, method in enumerate(methods):
            m = maps_by_method[method][r]
            axes[r, 1 + 2 * k].imshow(to_grey(m), cmap="gray", vmin=0, vmax=255)
            axes[r, 2 + 2 * k].imshow(overlay(image, m))
            if r == 0:
                axes[r, 1 + 2 * k].set_title(method, fontsize=8)
                axes[r, 2 + 2 * k].set_title("overlay", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def gallery_figure(image: np.ndarray, maps_by_method: Mapping[str, np.ndarray],
                   mask: Optional[np.ndarray] = None, input_range=(0.0, 1.0)) -> Figure:
    """One image against every method, readable at report width: the image (object outline
    in white where a mask is known), then a column per method, its grey map above its overlay.

    The panels are tiled into one picture on one set of axes (a report draws one such figure
    per example image: an axes per panel took ten times longer to lay out than to draw)."""
    methods = list(maps_by_method)
    cols = 1 + len(methods)
    image = to_unit(image, input_range)[..., :3]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    h, w = image.shape[:2]
    gap = max(1, w // 16)
    mosaic = np.ones((2 * h + gap, cols * (w + gap) - gap, 3), np.float32)

    def put(row, col, panel):
        top, left = row * (h + gap), col * (w + gap)
        mosaic[top:top + h, left:left + w] = panel

    put(0, 0, image)
    put(1, 0, image)
    for k, method in enumerate(methods, start=1):
        put(0, k, np.repeat(to_grey(maps_by_method[method])[..., None] / 255.0, 3, axis=-1))
        put(1, k, overlay(image, maps_by_method[method]))
    fig = Figure(figsize=(min(1.25 * cols, 11.0), 2.7))
    ax = fig.add_axes((0.0, 0.0, 1.0, 0.84))
    ax.imshow(mosaic, interpolation="nearest")
    # Two short lines rather than one long one: 18 columns share the report's width.
    labels = ["image", *(textwrap.fill(m.replace("_", " "), 11) for m in methods)]
    for col, label in enumerate(labels):
        ax.text(col * (w + gap) + w / 2, -gap, label, ha="center", va="bottom", fontsize=7, clip_on=False)
    if mask is not None:
        ax.contour(np.arange(w), h + gap + np.arange(h), mask, levels=[0.5], colors="white", linewidths=0.8)
        ax.text(w / 2, 2 * h + gap + gap, "object", ha="center", va="top", fontsize=7, clip_on=False)
    ax.set_xlim(-0.5, mosaic.shape[1] - 0.5)
    ax.set_ylim(mosaic.shape[0] - 0.5, -0.5)
    ax.axis("off")
    return fig
