"""The shared machinery of LIME and KernelSHAP: a linear surrogate fitted to the model's scores
on coalitions of superpixels.

Both methods segment each image into superpixels, score copies of the image in which a
random coalition of superpixels keeps its pixels and the others take a baseline, and fit a
weighted linear model of the score on the coalition's 0/1 indicators; the map gives each
pixel its superpixel's coefficient. They differ only in which coalitions they draw, how
they weight them and how they solve the fit, which are their hooks here.

The perturbed copies go through `PerturbationExplainer`'s chunked loop, the same one RISE
and Occlusion use. A fit needs every copy's score, and a least-squares fit needs no more
than its normal equations, which are sums over copies: each copy adds ``w z z^T`` and
``w z y`` (``z`` the indicators with a leading 1 for the intercept, ``w`` the copy's
weight, ``y`` its score) to its image's total, so memory is bounded by ``batch_size``
whatever the number of samples, and `finalize` solves every image's system at once.
"""

from __future__ import annotations

import math

import numpy as np

from xai._lazy import tf
from xai.plugin_api import DataError, Param, ParameterError, PerturbationExplainer, baseline_images, check_baseline

SEGMENTATIONS = ("slic", "grid")
#: A coalition's normal equations grow as segments^2 per copy: 256 keeps a chunk of 32
#: copies under ~35 MB at SLIC's worst case (~2 x 256 segments).
MAX_SEGMENTS = 256
#: Eigenvalues of a fit's normal equations below this fraction of the largest are treated
#: as 0 (the minimum-norm least-squares solution): they appear when fewer coalitions than
#: superpixels were drawn, and would otherwise amplify float32 rounding of the sums.
RCOND = 1e-6


def grid_segments(height: int, width: int, n_segments: int) -> np.ndarray:
    """Exactly `n_segments` rectangular cells, as square as the image allows, (H, W) int32.

    ``round(sqrt(n H / W))`` rows of cells; the ``n % rows`` top rows get one cell more than
    the others, so every count is reachable (a plain rows x cols grid skips most).
    """
    rows = min(height, max(1, round(math.sqrt(n_segments * height / width))))
    per_row = np.array([n_segments // rows + (r < n_segments % rows) for r in range(rows)])
    first = np.concatenate([[0], np.cumsum(per_row)[:-1]])
    row_of_y = np.arange(height) * rows // height
    cols = per_row[row_of_y][:, None]
    col_of_x = np.arange(width)[None, :] * cols // width
    return (first[row_of_y][:, None] + col_of_x).astype(np.int32)


def slic_bound(height: int, width: int, n_segments: int) -> int:
    """The most segments scikit-image's SLIC can return for this size.

    SLIC seeds a regular grid of centroids (`skimage.util.regular_grid`) and its
    connectivity step merges every component below half the mean segment size into a
    neighbour, so each segment left has at least ``int(0.5 H W / centroids)`` pixels.
    """
    from skimage.util import regular_grid

    centroids = np.zeros((1, height, width), bool)[regular_grid((1, height, width), n_segments)].size
    min_size = int(0.5 * height * width / centroids)
    return height * width if min_size < 1 else min(height * width, height * width // min_size + 1)


class CoalitionExplainer(PerturbationExplainer):
    """Base of the surrogate methods on superpixel coalitions (LIME, KernelSHAP).

    Not an explainer by itself. Subclasses write `coalitions` (the 0/1 indicators of each
    copy from its uniform draws), `sample_weights`, `solve` and, optionally, `prepare`
    (which must return the ``baselines`` and, for the default `response`, the ``clean``
    scores) and `response`.

    Segmentation is host work (scikit-image), done once per image before the traced part of
    `prepare`: `segment` labels a batch, and its labels and segment counts join the state
    the base class passes to every chunk. Coalitions come from counter-based draws
    (``seed``, image number * n_samples + copy), so maps do not depend on ``batch_size``.
    Systems are sized for the most segments the segmentation can return
    (``max_features``); the indicators of absent segments stay 0 and their coefficient 0.
    """

    stochastic = True
    sample_count = "n_samples"
    in_default_comparison = False  # thousands of model calls per image: opt-in
    default_score = "probability"
    #: Whether copies 2i and 2i+1 share their draws, the second taking the complement
    #: coalition (KernelSHAP, as the shap package samples).
    paired = False
    seed_free_state = True  # the segmentation, the baselines, the clean scores

    @staticmethod
    def coalition_parameters(n_samples: int) -> dict:
        """The parameters every coalition method takes (its own default sample count)."""
        return {
            "n_samples": Param(n_samples, int, low=1, doc="Coalitions scored per image."),
            "segmentation": Param("slic", choices=SEGMENTATIONS,
                                  doc="Superpixels: SLIC-zero (scikit-image) or a grid of rectangles."),
            "n_segments": Param(50, int, low=1, high=MAX_SEGMENTS,
                                doc="Superpixels per image (SLIC: approximate; grid: exact)."),
            "baseline": Param("grey", (str, float), check=check_baseline,
                              doc="What a switched-off superpixel shows ('grey': the middle of the input range)."),
            "seed": Param(0, int, low=0, doc="Seed of the coalitions."),
        }

    def setup(self):
        self._seed = tf.Variable(self.resolved["seed"], dtype=tf.int32, trainable=False)  # see `reseed`
        height, width = self.spec.input_shape[:2]
        n = self.resolved["n_segments"]
        if n > height * width:
            raise ParameterError(f"{self.display_name}: parameter 'n_segments' ({n}) exceeds the number "
                                 f"of pixels ({height}x{width}).")
        if self.resolved["segmentation"] == "grid":
            self._grid = grid_segments(height, width, n)
            self.max_features = n
        else:
            self.max_features = slic_bound(height, width, n)

    def reseed(self, seed):
        self._seed.assign(seed)
        return True

    def smallest_replicate(self):
        # A least-squares fit's variance is far from its large-sample 1/n below a few
        # coalitions per superpixel: replicates that small overstate the pooled fit's error
        # (measured: 1.7x at two per superpixel).
        return 4 * self.resolved["n_segments"]

    # -- host step ------------------------------------------------------------------------
    def segment(self, images) -> np.ndarray:
        """Superpixel labels 0..m-1 of each image, (n, H, W) int32 (numpy, on the host)."""
        images = np.asarray(images)
        if self.resolved["segmentation"] == "grid":
            return np.broadcast_to(self._grid, images.shape[:3]).copy()
        from skimage.segmentation import slic

        labels = np.empty(images.shape[:3], np.int32)
        for i, image in enumerate(images):
            # SLIC-zero adapts compactness per superpixel, so the count follows n_segments on
            # any image (plain SLIC's fixed compactness collapses a noisy image to one segment).
            raw = slic(image.astype(np.float64), n_segments=self.resolved["n_segments"], slic_zero=True,
                       start_label=0, channel_axis=-1)
            labels[i] = np.unique(raw, return_inverse=True)[1].reshape(raw.shape)
        return labels

    def host_prepare(self, images, targets) -> dict:
        labels = self.segment(images)
        counts = labels.reshape(len(labels), -1).max(axis=1) + 1
        if counts.max() > self.max_features:
            raise DataError(f"{self.display_name}: the segmentation returned {counts.max()} superpixels, "
                            f"more than the {self.max_features} this explainer was sized for.")
        return {"segments": tf.constant(labels), "n_features": tf.constant(counts.astype(np.int32))}

    # -- hooks for subclasses -------------------------------------------------------------
    def coalitions(self, uniforms, copies, n_features):
        """(R, max_features) 0/1 float indicators from each row's (R, 1 + max_features)
        uniforms: one for the row as a whole, then one per superpixel."""
        raise NotImplementedError

    def sample_weights(self, z, n_features):
        """(R,) regression weight of each coalition."""
        return tf.ones_like(z[:, 0])

    def response(self, scores, state, rows):
        """What the surrogate fits: by default the scores less the image's own score, which
        moves only the intercept, and keeps the float32 sums of ``w z y`` from losing the
        coefficients (often 1e-3 of a score near 1) to rounding."""
        return scores - tf.gather(state["clean"], rows)

    def solve(self, gram, moments, present, state):
        """(n, max_features) coefficients from the (n, K+1, K+1) weighted Gram matrices of
        [1, z] and their (n, K+1) weighted moments with the response (float64)."""
        raise NotImplementedError

    # -- PerturbationExplainer hooks ------------------------------------------------------
    def n_copies(self):
        return self.resolved["n_samples"]

    def accumulator_shape(self):
        return (self.max_features + 1, self.max_features + 2)

    def prepare(self, images, targets):
        return {"baselines": baseline_images(images, self.resolved["baseline"], self.spec.input_range),
                "clean": self.scores(images, targets)}

    def draw(self, images, rows, counters):
        """(R, max_features + 1) uniforms per row, drawn outside XLA (whose stateless
        generators give other numbers) from (seed, counter)."""
        if self.paired:
            counters = counters - (counters % self.n_copies()) % 2
        shape, seed = (self.max_features + 1,), self._seed
        return tf.map_fn(lambda c: tf.random.stateless_uniform(shape, seed=tf.stack([seed, c])),
                         counters, fn_output_signature=tf.float32)

    def contribution(self, images, targets, state, rows, copies, uniforms):
        n_features = tf.gather(state["n_features"], rows)
        z = self.coalitions(uniforms, copies, n_features)
        keep = tf.gather(z, tf.gather(state["segments"], rows), batch_dims=1)[..., None]
        x, base = tf.gather(images, rows), tf.gather(state["baselines"], rows)
        y = self.response(self.scores(base + keep * (x - base), tf.gather(targets, rows)), state, rows)
        w = self.sample_weights(z, n_features)
        design = tf.concat([tf.ones_like(z[:, :1]), z], axis=1)
        weighted = w[:, None] * design
        return tf.concat([weighted[:, :, None] * design[:, None, :], (weighted * y[:, None])[:, :, None]],
                         axis=2)

    def finalize(self, images, targets, state, total):
        total = tf.cast(total, tf.float64)
        present = tf.cast(tf.range(self.max_features)[None, :] < state["n_features"][:, None], tf.float64)
        coefficients = self.solve(total[:, :, :-1], total[:, :, -1], present, state)
        return tf.gather(tf.cast(coefficients, tf.float32), state["segments"], batch_dims=1)


def least_squares(matrix, rhs):
    """Minimum-norm solution of the symmetric positive semi-definite systems
    ``matrix x = rhs``, (n, K, K) and (n, K) -> (n, K), eigenvalues below `RCOND` of the
    largest dropped (absent superpixels' all-zero rows get 0)."""
    values, vectors = tf.linalg.eigh(matrix)
    kept = values > RCOND * tf.reduce_max(tf.abs(values), axis=1, keepdims=True)
    inverse = tf.where(kept, 1.0 / tf.where(kept, values, tf.ones_like(values)), tf.zeros_like(values))
    projected = tf.einsum("nji,nj->ni", vectors, rhs)
    return tf.einsum("nij,nj->ni", vectors, inverse * projected)
