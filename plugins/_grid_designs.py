"""What Sobol and HSIC attribution share: one set of grid masks drawn from the seed, every
image scored under each, and an estimator that reads all of an image's scores at once."""

from __future__ import annotations

import numpy as np

from xai._lazy import tf
from xai.plugin_api import INTERPOLATIONS, Param, ParameterError, PerturbationExplainer, blur

#: How a mask value m in [0, 1] perturbs a pixel x (the papers' three perturbation functions).
PERTURBATIONS = ("inpainting", "blur", "amplitude")
#: The amplitude perturbation's sigma (the authors' and Xplique's default).
AMPLITUDE_SIGMA = 1.0


def check_grid(owner: str, grid_size: int, input_shape) -> None:
    """A grid finer than the image would leave cells without a pixel."""
    height, width = input_shape[:2]
    if grid_size > min(height, width):
        raise ParameterError(f"{owner}: parameter 'grid_size' ({grid_size}) exceeds the image size "
                             f"({height}x{width}).")


def qmc_engine(name: str, dimension: int, seed: int, **options):
    """A seeded `scipy.stats.qmc` engine (``rng=`` since SciPy 1.15, ``seed=`` before)."""
    from scipy.stats import qmc

    generator = np.random.default_rng(seed)
    try:
        return getattr(qmc, name)(dimension, rng=generator, **options)
    except TypeError:
        return getattr(qmc, name)(dimension, seed=generator, **options)


def perturbation_substrate(images, perturbation: str):
    """What a mask value of 0 reveals: 0 (inpainting), the blurred image (blur)."""
    if perturbation == "blur":
        return blur(images)
    return tf.zeros_like(images)


def masked_scores(explainer, designs, images, targets, state, rows, copies):
    """The score of image ``rows[r]`` perturbed by design ``copies[r]`` (a grid of mask
    values, upsampled by nearest neighbour), as the one-hot row ``score * e_copy`` so that
    each image's total holds the score of every design and the estimator can see them all
    at once in `finalize`."""
    grid = explainer.resolved["grid_size"]
    masks = tf.reshape(tf.gather(designs, copies), (-1, grid, grid, 1))
    masks = tf.image.resize(masks, explainer.spec.input_shape[:2], method="nearest")
    x = tf.gather(images, rows)
    if explainer.resolved["perturbation"] == "amplitude":
        perturbed = x * (masks - 0.5) * AMPLITUDE_SIGMA
    else:
        perturbed = x * masks + (1.0 - masks) * tf.gather(state["substrate"], rows)
    scores = explainer.scores(perturbed, tf.gather(targets, rows))
    return tf.one_hot(copies, int(designs.shape[0]), dtype=tf.float32) * scores[:, None]


#: The parameters every grid-design method takes besides its design count and seed.
GRID_SIZE = Param(8, int, low=1, doc="Cells per side of the mask grid.")
PERTURBATION = Param("inpainting", choices=PERTURBATIONS, doc="How a mask value perturbs pixels.")
GRID_INTERPOLATION = Param("bilinear", choices=INTERPOLATIONS, doc="Upsampling of the grid of indices.")


class GridDesignExplainer(PerturbationExplainer):
    """Base of the methods that score every image under designs of ``grid_size`` x
    ``grid_size`` mask values drawn once from ``seed`` (so maps do not depend on
    ``batch_size``), then estimate each cell's importance from all of an image's scores.

    Hooks: ``make_designs(n_cells) -> (n_copies, n_cells)`` mask values in [0, 1], and
    ``estimate(designs, scores) -> (n, n_cells)`` from each image's scores ``(n, n_copies)``.
    """

    stochastic = True
    sample_count = "n_designs"
    in_default_comparison = False  # thousands of model calls per image: opt-in
    default_score = "probability"

    #: The fewest designs of one replicate of `explain_with_error`: the estimators are
    #: ratios of variances, biased when estimated from a handful of designs.
    smallest_designs = 8
    #: Replicates are independent randomisations of the design (randomised quasi-Monte
    #: Carlo): their totals (scores of different designs) cannot be averaged, nor their maps
    #: (the mean of k maps of N designs converges to E[map of N designs], not the method's
    #: map: measured 0.5-0.6 away from a high-count reference): the estimator reads the union
    #: of their designs (`pooled_maps`).
    averages_totals = False
    pools_designs = True
    #: How many (designs x designs) kernel entries `pooled_maps` lets an estimator hold at once.
    POOLED_CHUNK = 2 ** 26
    seed_free_state = True  # the blurred substrate

    def smallest_replicate(self):
        return self.smallest_designs

    def make_designs(self, n_cells: int) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement make_designs(n_cells).")

    def estimate(self, designs, scores):
        raise NotImplementedError(f"{type(self).__name__} must implement estimate(designs, scores).")

    def setup(self):
        grid = self.resolved["grid_size"]
        check_grid(self.display_name, grid, self.spec.input_shape)
        self.design_seed = self.resolved["seed"]
        self.designs = self.make_designs(grid * grid)

    @property
    def designs(self) -> np.ndarray:
        """The mask values of every copy, (n_copies, grid^2); assignable (same shape)."""
        return self._design_values

    @designs.setter
    def designs(self, values):
        self._design_values = np.asarray(values, np.float32)
        # A variable, not a constant of the traced functions: `reseed` redraws it without retracing.
        if not hasattr(self, "_designs"):
            self._designs = tf.Variable(self._design_values, trainable=False)
        else:
            self._designs.assign(self._design_values)

    def reseed(self, seed):
        self.design_seed = seed
        self.designs = self.make_designs(self.resolved["grid_size"] ** 2)
        return True

    def n_copies(self):
        return int(self.designs.shape[0])

    def accumulator_shape(self):
        return (self.n_copies(),)

    def prepare(self, images, targets):
        return {"substrate": perturbation_substrate(images, self.resolved["perturbation"])}

    def contribution(self, images, targets, state, rows, copies, drawn):
        return masked_scores(self, self._designs, images, targets, state, rows, copies)

    def estimate_pooled(self, designs: list, scores: list):
        """The estimator on the union of several designs' (each replicate's designs and their
        scores (m, n_copies)): by default the designs and the scores side by side (a hook:
        Sobol's designs come in blocks)."""
        return self.estimate(np.concatenate(designs), np.concatenate(scores, axis=1))

    def pooled_maps(self, designs: list, scores: list) -> np.ndarray:
        """Maps (m, H, W) from the union of the replicates' `designs` (each (n_copies, cells))
        and the m images' `scores` of them (each (m, n_copies)), a few images at a time: an
        estimator may hold a (designs x designs) matrix per image (HSIC)."""
        grid, n_copies = self.resolved["grid_size"], sum(len(d) for d in designs)
        step = max(1, self.POOLED_CHUNK // n_copies ** 2)
        maps = []
        for s in range(0, len(scores[0]), step):
            cells = self.estimate_pooled(designs, [np.asarray(x[s:s + step], np.float32) for x in scores])
            maps.append(np.asarray(self.upsample(tf.reshape(cells, (-1, grid, grid))), np.float32))
        return np.concatenate(maps)

    def finalize(self, images, targets, state, total):
        grid = self.resolved["grid_size"]
        return self.upsample(tf.reshape(self.estimate(self._designs, total), (-1, grid, grid)))
