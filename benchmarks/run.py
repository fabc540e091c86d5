"""Benchmark every xai explainer and metric against its floor and against the peers, in one run.

Floors, on the same model and images: one forward pass (CAM; per perturbed copy for
Occlusion, RISE and Score-CAM; per curve point for deletion/insertion) and one
forward+backward pass (gradient methods; per noise sample or path point for SmoothGrad and
Integrated Gradients). Copies are timed in full batches of --rows rows, the batch size our
methods use too. Figures are ratios measured in this run (median of --repeats after a
warm-up): ours / floor, ours / each peer on the same work (Xplique, tf-keras-vis, when
installed by benchmarks/setup.sh), and the speed-up of XLA and bfloat16 with the largest
change they cause in maps and AUCs. Not part of the test suite.

    ./benchmarks/setup.sh                                  # .venv-bench with the peers
    .venv-bench/bin/python benchmarks/run.py               # width 1.0, 64x64, 8 images
    .venv-bench/bin/python benchmarks/run.py --precision   # + XLA / bfloat16 table
    .venv-bench/bin/python benchmarks/run.py --size 224 --images 4
    .venv-bench/bin/python benchmarks/run.py --model resnet50 --size 224 --images 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message="The structure of `inputs`")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import xai  # noqa: E402
from xai import evaluation as ev  # noqa: E402
from xai.models import with_precision  # noqa: E402
from xai.evaluation.remove_and_debias import DEFAULT_FRACTIONS  # noqa: E402
from xai.plugins.occlusion import patch_starts  # noqa: E402


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def floor_fns(model, images, targets, rows: int, jit: bool, layer: str):
    """Compiled forward and forward+backward on `rows` rows, as lean as a method can be."""
    spec = tf.TensorSpec((None, *images.shape[1:]), tf.float32)

    @tf.function(input_signature=[spec], jit_compile=jit, autograph=False)
    def forward(x):
        return tf.cast(model(x, training=False), tf.float32)

    @tf.function(input_signature=[spec, tf.TensorSpec((None,), tf.int32)], jit_compile=jit, autograph=False)
    def forward_backward(x, t):
        with tf.GradientTape() as tape:
            tape.watch(x)
            p = tf.cast(model(x, training=False), tf.float32)
            s = tf.reduce_sum(tf.gather(p, t, batch_dims=1))
        return tape.gradient(s, x)

    graph = keras.Model(model.inputs[0], [model.get_layer(layer).output, model.output])

    @tf.function(input_signature=[spec, tf.TensorSpec((None,), tf.int32)], jit_compile=jit, autograph=False)
    def forward_backward_to_layer(x, t):
        with tf.GradientTape() as tape:
            features, p = graph(x, training=False)
            s = tf.reduce_sum(tf.gather(tf.cast(p, tf.float32), t, batch_dims=1))
        return tape.gradient(s, features)

    x = tf.constant(np.resize(images, (rows, *images.shape[1:])))
    t = tf.constant(np.resize(targets, (rows,)).astype(np.int32))
    return {"fwd": lambda: forward(x).numpy(), "fwd+bwd": lambda: forward_backward(x, t).numpy(),
            "fwd+bwd to layer": lambda: forward_backward_to_layer(x, t).numpy()}


def method_settings(args):
    """name -> (params, floor kind, passes per image): the work each explainer is timed on."""
    rows = {"batch_size": args.rows}
    n = {"batch_size": args.images}
    patch = args.size // 4
    positions = len(patch_starts(args.size, patch, patch)) ** 2
    return {
        "vanilla_gradient": ({"score": "probability", "reduce": "max_abs", **n}, "fwd+bwd", 1),
        "grad_cam": ({"score": "probability", **n}, "fwd+bwd to layer", 1),
        "grad_cam_plus_plus": ({"score": "probability", **n}, "fwd+bwd to layer", 1),
        "cam": (n, "fwd", 1),
        "smoothgrad": ({"n_samples": args.samples, "score": "probability", "reduce": "max_abs", **rows},
                       "fwd+bwd", args.samples),
        "integrated_gradients": ({"steps": args.samples, "score": "probability", **rows}, "fwd+bwd",
                                 args.samples),
        "occlusion": ({"patch_size": patch, "stride": patch, **rows}, "fwd", positions + 1),
        "rise": ({"n_masks": args.masks, **rows}, "fwd", args.masks),
        "score_cam": ({"max_maps": args.maps, **rows}, "fwd", args.maps + 1),
        # Issue 16's methods. Signed maps ("sum"): the peers' channel mean times 3.
        "gradient_input": ({"score": "probability", **n}, "fwd+bwd", 1),
        "guided_backprop": ({"score": "probability", "reduce": "sum", **n}, "fwd+bwd", 1),
        "deconvnet": ({"score": "probability", "reduce": "sum", **n}, "fwd+bwd", 1),
        "square_grad": ({"n_samples": args.samples, "noise_level": 0.2, "score": "probability", **rows},
                        "fwd+bwd", args.samples),
        # VarGrad's variance is taken around the clean image's gradient: one pass more.
        "var_grad": ({"n_samples": args.samples, "noise_level": 0.2, "score": "probability", **rows},
                     "fwd+bwd", args.samples + 1),
        "fem": (n, "fwd", 1),
        "layer_cam": ({"score": "probability", **n}, "fwd+bwd to layer", 1),
        "lime": ({"n_samples": args.coalitions, **rows}, "fwd", args.coalitions + 1),
        "kernel_shap": ({"n_samples": args.coalitions, **rows}, "fwd", args.coalitions + 2),
        "sobol": ({"n_designs": args.designs, **rows}, "fwd", args.designs * (8 * 8 + 2)),
        "hsic": ({"n_designs": args.hsic_designs, **rows}, "fwd", args.hsic_designs),
    }


#: Methods whose maps sum the channels with their sign, where the peers average them.
SIGNED = ("gradient_input", "guided_backprop", "deconvnet")


def peer_cases(model, images, targets, args, settings, layer: str):
    """(our method, peer label, callable) for every peer method installed."""
    onehot = np.eye(2, dtype=np.float32)[targets]
    cases = []
    try:
        from xplique.attributions import (FEM, DeconvNet, GradCAM, GradCAMPP, GradientInput, GuidedBackprop,
                                          HsicAttributionMethod, IntegratedGradients, KernelShap, Lime,
                                          Occlusion, Rise, Saliency, SmoothGrad, SobolAttributionMethod,
                                          SquareGrad, VarGrad)
        from xplique.metrics import AverageStability, Complexity, Deletion, Insertion, MuFidelity, Sparseness
    except ImportError:
        print("Xplique not installed (./benchmarks/setup.sh): no Xplique columns.")
    else:
        occ = settings["occlusion"][0]
        for ours, peer in [
            ("vanilla_gradient", Saliency(model, batch_size=args.images)),
            ("grad_cam", GradCAM(model, batch_size=args.images, conv_layer=layer)),
            ("grad_cam_plus_plus", GradCAMPP(model, batch_size=args.images, conv_layer=layer)),
            ("smoothgrad", SmoothGrad(model, nb_samples=args.samples, batch_size=args.rows)),
            ("integrated_gradients", IntegratedGradients(model, steps=args.samples, batch_size=args.rows)),
            ("occlusion", Occlusion(model, patch_size=occ["patch_size"], patch_stride=occ["stride"],
                                    batch_size=args.rows)),
            ("rise", Rise(model, nb_samples=args.masks, batch_size=args.rows)),
            ("gradient_input", GradientInput(model, batch_size=args.images)),
            ("guided_backprop", GuidedBackprop(model, batch_size=args.images)),
            ("deconvnet", DeconvNet(model, batch_size=args.images)),
            ("square_grad", SquareGrad(model, nb_samples=args.samples, noise=0.2, batch_size=args.rows)),
            ("var_grad", VarGrad(model, nb_samples=args.samples, noise=0.2, batch_size=args.rows)),
            ("fem", FEM(model, batch_size=args.images, conv_layer=layer)),
            # Xplique's own superpixels (quickshift) and kernel: the same number of model calls.
            ("lime", Lime(model, nb_samples=args.coalitions, batch_size=args.rows)),
            ("kernel_shap", KernelShap(model, nb_samples=args.coalitions, batch_size=args.rows)),
            ("sobol", SobolAttributionMethod(model, grid_size=8, nb_design=args.designs, batch_size=args.rows)),
            ("hsic", HsicAttributionMethod(model, grid_size=8, nb_design=args.hsic_designs,
                                           batch_size=args.rows)),
        ]:
            cases.append((ours, f"Xplique {type(peer).__name__}",
                          lambda p=peer: np.asarray(p.explain(images, onehot))))
        for metric, cls in (("deletion", Deletion), ("insertion", Insertion)):
            peer = cls(model, images, onehot, batch_size=args.rows, steps=args.steps)
            cases.append((metric, f"Xplique {cls.__name__}", lambda p=peer, m=metric: p))
        cases.append(("mufidelity", "Xplique MuFidelity",
                      lambda: MuFidelity(model, images, onehot, batch_size=args.rows, grid_size=9,
                                         subset_percent=0.2, baseline_mode=0.0, nb_samples=args.subsets)))
        for metric, cls in (("sparseness", Sparseness), ("complexity", Complexity)):
            cases.append((metric, f"Xplique {cls.__name__}", lambda c=cls: c()))
        cases.append(("average_stability", "Xplique AverageStability(Saliency)",
                      lambda: (AverageStability(model, images, onehot, batch_size=args.rows, radius=0.1,
                                                distance="l2", nb_samples=args.stability_samples),
                               Saliency(model, batch_size=args.rows))))
    try:
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
        from tf_keras_vis.layercam import Layercam
        from tf_keras_vis.saliency import Saliency as TkvSaliency
        from tf_keras_vis.scorecam import Scorecam
        from tf_keras_vis.utils.scores import CategoricalScore
    except ImportError:
        print("tf-keras-vis not installed (./benchmarks/setup.sh): no tf-keras-vis columns.")
    else:
        score = CategoricalScore(list(targets))
        saliency, gradcam = TkvSaliency(model, clone=False), Gradcam(model, clone=False)
        gradcampp, scorecam = GradcamPlusPlus(model, clone=False), Scorecam(model, clone=False)
        layercam = Layercam(model, clone=False)
        cases += [
            ("vanilla_gradient", "tf-keras-vis Saliency", lambda: saliency(score, images, normalize_map=False)),
            ("smoothgrad", "tf-keras-vis Saliency(smooth_samples)",
             lambda: saliency(score, images, smooth_samples=args.samples, normalize_map=False)),
            ("grad_cam", "tf-keras-vis Gradcam",
             lambda: gradcam(score, images, penultimate_layer=layer, normalize_cam=False)),
            ("grad_cam_plus_plus", "tf-keras-vis GradcamPlusPlus",
             lambda: gradcampp(score, images, penultimate_layer=layer, normalize_cam=False)),
            ("score_cam", "tf-keras-vis Scorecam(max_N)",
             lambda: scorecam(score, images, penultimate_layer=layer, max_N=args.maps,
                              batch_size=args.rows, normalize_cam=False)),
            ("layer_cam", "tf-keras-vis Layercam",
             lambda: layercam(score, images, penultimate_layer=layer, normalize_cam=False)),
        ]
    return cases


def metric_floors(args) -> dict:
    """metric -> (floor kind, passes per image): the forward passes each metric must make."""
    return {"deletion": ("fwd", args.steps + 1), "insertion": ("fwd", args.steps + 1),
            "deletion_debiased": ("fwd", args.steps + 1), "deletion_road_exact": ("fwd", args.steps + 1),
            "symmetric_relevance_gain": ("fwd", 2 * (args.steps + 1)),
            "road_morf": ("fwd", len(DEFAULT_FRACTIONS)),
            "mufidelity": ("fwd", args.subsets + 1),
            "average_stability": ("fwd+bwd", args.stability_samples + 1),
            "sparseness": ("sort", 1), "complexity": ("log", 1)}


def ours_fns(model, images, targets, args, settings, jit: bool):
    """name -> (callable, explainer or None) for every method and metric."""
    fns = {}
    for name, (params, _, _) in settings.items():
        explainer = xai.create_explainer(name, model, **params, jit_compile=jit)
        fns[name] = (lambda e=explainer: e.explain(images, targets), explainer)
    gradient = xai.create_explainer("vanilla_gradient", model, score="probability", reduce="max_abs",
                                    batch_size=args.rows, jit_compile=jit)
    # The maps every metric scores: the same ones main() gives the peers.
    maps = xai.create_explainer("vanilla_gradient", model).explain(images, targets)
    scorer = ev.ModelScorer(model, jit_compile=jit)

    def mufidelity():
        scorer.__dict__.pop("mufidelity_cache", None)  # time the first method on a batch, not a cache hit
        return ev.mufidelity(scorer, images, targets, maps, n_subsets=args.subsets, batch_size=args.rows)

    metrics = {
        "deletion": lambda: ev.causal_curves("deletion", scorer, images, targets, maps, protocol="xplique",
                                             steps=args.steps, batch_size=args.rows),
        "insertion": lambda: ev.causal_curves("insertion", scorer, images, targets, maps, protocol="xplique",
                                              steps=args.steps, batch_size=args.rows),
        # `xai compare`'s deletion: the deleted pixels inpainted on the device (the floor has
        # no inpainting: the ratio is what debiasing costs), and the same curves with ROAD's
        # exact imputation, one sparse solve per image and step on the host.
        "deletion_debiased": lambda: ev.causal_curves("deletion", scorer, images, targets, maps,
                                                      protocol="debiased", steps=args.steps, batch_size=args.rows),
        "deletion_road_exact": lambda: ev.causal_curves("deletion", scorer, images, targets, maps,
                                                        protocol="debiased", baseline="noisy_linear",
                                                        steps=args.steps, batch_size=args.rows),
        "symmetric_relevance_gain": lambda: ev.symmetric_relevance_gain(
            scorer, images, targets, maps, protocol="xplique", steps=args.steps, batch_size=args.rows),
        "road_morf": lambda: ev.road(scorer, images, targets, maps, batch_size=args.rows),
        "mufidelity": mufidelity,
        "average_stability": lambda: ev.average_stability(gradient, images, targets,
                                                          n_samples=args.stability_samples, batch_size=args.rows),
        "sparseness": lambda: ev.sparseness(maps),
        "complexity": lambda: ev.complexity(maps),
    }
    for metric, fn in metrics.items():
        if not args.only or metric in args.only.split(","):
            fns[metric] = (fn, None)
    return fns, maps


def paired(fn, floor_fn, floor_factor: float, repeats: int) -> tuple[float, float, float]:
    """(ours, floor, ratio) medians, timing the floor and ours alternately in each repeat.

    On a shared machine the speed drifts by several percent within a minute; pairing the
    two measurements cancels most of that drift in the ratio.
    """
    fn(), floor_fn()  # warm-up: tracing and allocation stay out of the figures
    ours, floors, ratios = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        floor_fn()
        floor = (time.perf_counter() - start) * floor_factor
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        ours.append(seconds), floors.append(floor), ratios.append(seconds / floor)
    return statistics.median(ours), statistics.median(floors), statistics.median(ratios)


def measure(model, images, targets, args, settings, jit: bool, layer: str):
    """Ours against floors on one model: {name: (seconds, floor seconds, ratio, floor text)}."""
    n = len(images)
    single = floor_fns(model, images, targets, n, jit, layer)
    chunk = floor_fns(model, images, targets, args.rows, jit, layer)
    fns, maps = ours_fns(model, images, targets, args, settings, jit)
    # A Gini index must sort each map; an entropy must take a log of every value.
    single["sort"] = lambda: np.sort(np.abs(maps).reshape(n, -1), axis=1)
    single["log"] = lambda: np.log(np.abs(maps) + 1e-8)
    results = {}
    for name, (fn, _) in fns.items():
        _, kind, passes = settings[name] if name in settings else (None, *metric_floors(args)[name])
        if passes == 1:
            floor_fn, factor, text = single[kind], 1.0, kind.replace("layer", layer)
        else:  # copies in full chunks of --rows rows, scaled to this count
            floor_fn, factor, text = chunk[kind], n * passes / args.rows, f"{kind} x {passes} per image"
        results[name] = (*paired(fn, floor_fn, factor, args.repeats), text)
    return results, fns


def outputs(fns, images, targets):
    """Maps of every method and AUCs of both metrics, for precision comparisons."""
    out = {}
    for name, (fn, _) in fns.items():
        value = fn()
        out[name] = value.auc if hasattr(value, "auc") else value
    return out


def largest_change(reference: dict, other: dict) -> dict:
    """Per method: max |change| / max |reference| for maps, max |change| for AUCs."""
    changes = {}
    for name, ref in reference.items():
        diff = np.abs(np.asarray(other[name], np.float64) - np.asarray(ref, np.float64)).max()
        changes[name] = float(diff if name.startswith("deletion") or name == "insertion" else diff / (np.abs(ref).max() + 1e-30))
    return changes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg16_gap", choices=["vgg16_gap", "resnet50"],
                        help="VGG16-GAP (--width scales it) or keras.applications.ResNet50 (weights=None)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--samples", type=int, default=16, help="SmoothGrad samples, IG steps")
    parser.add_argument("--masks", type=int, default=64, help="RISE masks")
    parser.add_argument("--maps", type=int, default=32, help="Score-CAM max_maps")
    parser.add_argument("--coalitions", type=int, default=256, help="LIME and KernelSHAP samples")
    parser.add_argument("--designs", type=int, default=4, help="Sobol designs N (N x 66 copies at grid 8)")
    parser.add_argument("--hsic-designs", type=int, default=256, help="HSIC designs")
    parser.add_argument("--steps", type=int, default=10, help="deletion/insertion steps (Xplique's default)")
    parser.add_argument("--subsets", type=int, default=200, help="MuFidelity subsets (Xplique's default)")
    parser.add_argument("--stability-samples", type=int, default=20, help="AverageStability samples")
    parser.add_argument("--rows", type=int, default=64, help="batch rows for copies")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--precision", action="store_true",
                        help="also time XLA, bfloat16 and both, with the largest change they cause")
    parser.add_argument("--only", default=None, help="comma-separated subset of methods/metrics to time")
    parser.add_argument("--ours-precision", default="float32", choices=["float32", "mixed_bfloat16"],
                        help="run our methods (and their floors) on a copy of the model in this precision; "
                             "the peers stay in float32")
    parser.add_argument("--out", default="benchmarks/results/latest.json")
    args = parser.parse_args()
    if args.precision and args.ours_precision != "float32":
        parser.error("--precision compares against float32 ours; leave --ours-precision at float32.")

    keras.utils.set_random_seed(0)
    keras.utils.disable_interactive_logging()  # peers call model.predict: no progress bars
    if args.model == "resnet50":
        model = keras.applications.ResNet50(weights=None, input_shape=(args.size, args.size, 3), classes=2)
        title = f"ResNet50 (keras.applications, weights=None), {args.size}x{args.size}"
    else:
        model = xai.vgg16_gap((args.size, args.size, 3), width=args.width)
        title = f"VGG16-GAP width {args.width}, {args.size}x{args.size}"
    # The CAM family's default layer, which the layer floor and the peers use too.
    layer = xai.models.model_spec(xai.models.prepare_model(model)).last_conv_layer
    rng = np.random.default_rng(0)
    images = rng.random((args.images, args.size, args.size, 3), dtype=np.float32)
    targets = rng.integers(0, 2, args.images).astype(np.int32)
    settings = all_settings = method_settings(args)
    if args.only:
        wanted = {w.strip() for w in args.only.split(",")}
        settings = {k: v for k, v in settings.items() if k in wanted}
    machine = f"{cpu_name()}, {os.cpu_count()} cores, TF {tf.__version__}"
    print(f"{title}, {args.images} images; {machine}")

    ours_model = model if args.ours_precision == "float32" else with_precision(model, args.ours_precision)
    base, fns = measure(ours_model, images, targets, args, settings, jit=False, layer=layer)
    maps = xai.create_explainer("vanilla_gradient", model).explain(images, targets)
    rows = {name: {"seconds": s, "floor_seconds": f, "floor": text, "ratio_to_floor": ratio,
                   "images_per_second": args.images / s, "peers": {}}
            for name, (s, f, ratio, text) in base.items()}

    # Identical work should give identical numbers: check it while timing.
    if not args.no_peers:
        for ours, label, fn in peer_cases(model, images, targets, args, all_settings, layer):
            if ours not in rows:
                continue
            agreement = None
            if ours in ("deletion", "insertion", "mufidelity"):
                metric = fn()
                fn = lambda m=metric: m.evaluate(maps)  # noqa: E731
                mine = fns[ours][0]()
                # MuFidelity draws other random subsets: its difference is Monte Carlo error.
                agreement = abs(float(fn()) - float(np.mean(getattr(mine, "auc", mine))))
            elif ours in ("sparseness", "complexity"):
                metric = fn()
                fn = lambda m=metric: m.evaluate(maps)  # noqa: E731
                agreement = abs(float(np.mean(fn())) - float(np.mean(fns[ours][0]())))
            elif ours == "average_stability":
                metric, explainer = fn()
                fn = lambda m=metric, e=explainer: m.evaluate(e)  # noqa: E731
                agreement = abs(float(fn()) - float(np.mean(fns[ours][0]())))
            # Xplique's GradCAMPP departs from the paper (mean, not sum, of A): not compared.
            elif label in ("Xplique Saliency", "Xplique GradCAM", "Xplique FEM", "Xplique GradientInput",
                           "Xplique GuidedBackprop", "Xplique DeconvNet"):
                theirs = np.asarray(fn()).reshape(args.images, args.size, args.size)
                # Xplique upsamples bicubically; bilinear (our default) is what is timed.
                mine = xai.create_explainer(ours, ours_model, **{**settings[ours][0], "interpolation": "bicubic"}
                                            ).explain(images, targets) if label in (
                    "Xplique GradCAM", "Xplique FEM") else fns[ours][0]()
                if ours in SIGNED:
                    mine = mine / images.shape[-1]  # our signed sum, their channel mean
                agreement = float(np.abs(theirs - mine).max() / np.abs(mine).max())
            _, seconds, ratio = paired(fns[ours][0], fn, 1.0, args.repeats)
            rows[ours]["peers"][label] = {"seconds": seconds, "ours_over_peer": ratio,
                                          "max_difference": agreement}

    precision = {}
    if args.precision:
        reference = outputs(fns, images, targets)
        for label, candidate, jit in [("xla", model, True), ("bf16", with_precision(model), False),
                                      ("bf16+xla", with_precision(model), True)]:
            timed, other_fns = measure(candidate, images, targets, args, settings, jit=jit, layer=layer)
            changes = largest_change(reference, outputs(other_fns, images, targets))
            for name, (seconds, _, _, _) in timed.items():
                precision.setdefault(name, {})[label] = {
                    "speedup": rows[name]["seconds"] / seconds,
                    "ratio_to_float32_floor": seconds / rows[name]["floor_seconds"],
                    "largest_change": changes[name]}

    print(f"\n{'what':22s} {'ours/floor':>10s} {'img/s':>8s}  floor; ours/peer (max difference)")
    for name, r in rows.items():
        peers = "; ".join(f"{k} {v['ours_over_peer']:.2f}"
                          + (f" ({v['max_difference']:.1e})" if v["max_difference"] is not None else "")
                          for k, v in r["peers"].items())
        print(f"{name:22s} {r['ratio_to_floor']:10.3f} {r['images_per_second']:8.1f}  {r['floor']}; {peers}")
    if precision:
        print(f"\n{'what':22s} " + " ".join(f"{k + ' speed-up':>16s} {'change':>8s}" for k in precision["cam"]))
        for name, p in precision.items():
            print(f"{name:22s} " + " ".join(f"{v['speedup']:16.2f} {v['largest_change']:8.1e}" for v in p.values()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "model": title, "machine": machine, "date": time.strftime("%Y-%m-%d"),
                               "rows": rows, "precision": precision}, indent=1))
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
