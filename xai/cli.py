"""The ``xai`` command line: list, explain, compare, report, train.

A user's mistake (unknown method, missing file, incompatible model: an `XAIError`) ends
with a one-line ``Error: ...`` and exit code 1; a malformed option is click's usage error
(exit code 2). Any other exception is a bug and keeps its traceback. ``xai --debug ...``
shows the traceback of a user error too.

An environment failure (a full disk, a read-only or unreadable file) is one line too.
Warnings are shown as one ``Warning: ...`` line each. A comparison in which every batch of
every method failed exits with code 1 after writing its report.

This module imports nothing heavy: TensorFlow, Keras and matplotlib load inside the
commands that need them, so ``xai --help`` answers at once. They load through
`load_tensorflow`, which shows TensorFlow's start-up log once at most (not at all with
``--quiet``).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterable

import click

from xai.errors import StoreError, XAIError


class _UserErrors(click.Group):
    """Print an `XAIError` as one line (exit code 1), or with its traceback under --debug.

    Only `XAIError` is caught: any other exception is a bug and propagates with its traceback.
    """

    def invoke(self, ctx):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except XAIError as exc:
            if ctx.params.get("debug"):
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise click.ClickException(message) from None
        except OSError as exc:  # the environment refuses (full disk, permissions), not a bug
            from xai.store import ENVIRONMENT_ERRNOS, FULL_DISK_ERRNOS, full_disk_message

            if ctx.params.get("debug") or exc.errno not in ENVIRONMENT_ERRNOS:
                raise
            where = exc.filename or "a file"
            if exc.errno in FULL_DISK_ERRNOS:
                raise click.ClickException(full_disk_message(where, exc)) from None
            raise click.ClickException(f"cannot read or write {where}: {exc.strerror}.") from None


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """A warning as one line on stderr: what it says, not where in xai it was raised."""
    click.echo(f"Warning: {str(message).splitlines()[0] if str(message) else category.__name__}", err=True)


#: A line of TensorFlow's C++ (absl) log: severity, date, time, thread, file:line] message.
_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:. ]+\s+\d+ ([^\]]+)\] (.*)$")
#: CUDA probing on a machine without a GPU logs an error; it only says "no GPU": shown as info.
_NO_GPU = re.compile(r"failed call to cuInit|Could not find cuda drivers")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def load_tensorflow(quiet: bool = False) -> None:
    """Import TensorFlow with its start-up log captured, then show each message once at most.

    TensorFlow 2.21 ships two libraries, each with its own copy of absl logging, and both log
    before `TF_CPP_MIN_LOG_LEVEL` is read (absl's "before InitializeLog" messages ignore it):
    that is why every line printed twice. Here the process's stderr is captured while
    TensorFlow loads and probes its devices, and each message is shown once, only at a
    severity `TF_CPP_MIN_LOG_LEVEL` lets through (0 all, 1 warnings, 2 errors, 3 none), and
    not at all when `quiet`. If the import fails, everything captured is shown.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # device probing logs now, inside the capture
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    if quiet:
        return
    try:
        threshold = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        threshold = 0
    shown, seen, keep = [], set(), True
    for line in text.splitlines():
        if line.strip() == _ABSL_PREAMBLE:
            continue
        match = _LOG_LINE.match(line)
        if match:  # a new message; lines without a prefix continue the one before
            severity, source, message = match.groups()
            level = 0 if _NO_GPU.search(message) else "IWEF".index(severity)
            keep = level >= threshold and (source, message) not in seen
            seen.add((source, message))
        elif line in seen:
            continue
        else:
            seen.add(line)
        if keep:
            shown.append(line)
    if shown:
        click.echo("\n".join(shown), err=True)


def parse_params(values: Iterable[str]) -> dict[str, dict]:
    """Parse ``--param METHOD.PARAM=VALUE`` options into ``{method: {param: value}}``.

    VALUE is decoded as JSON where it parses (``10``, ``0.5``, ``true``, ``null``, ``[1, 2]``,
    ``"10"`` for the string) and kept as the raw string otherwise; it may itself contain
    ``=``. PARAM is the part after the last dot, so a plugin name may contain dots.

    Raises
    ------
    click.BadParameter
        An item without ``=`` or ``.``, with an empty METHOD or PARAM, a PARAM that is not
        a Python identifier, or a METHOD.PARAM given twice (click exits with code 2).

    Examples
    --------
    >>> parse_params(["smoothgrad.n_samples=10", "smoothgrad.noise_level=0.2", "rise.seed=3"])
    {'smoothgrad': {'n_samples': 10, 'noise_level': 0.2}, 'rise': {'seed': 3}}
    """
    out: dict[str, dict] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        method, dot, name = key.rpartition(".")
        method, name = method.strip(), name.strip()
        if not sep or not dot:
            problem = "no '='" if not sep else "no '.' between METHOD and PARAM"
            raise click.BadParameter(f"{item!r} has {problem}; expected METHOD.PARAM=VALUE, "
                                     "e.g. smoothgrad.n_samples=20.", param_hint="--param")
        if not method or not name:
            raise click.BadParameter(f"{item!r} has an empty {'METHOD' if not method else 'PARAM'} "
                                     "name; expected METHOD.PARAM=VALUE.", param_hint="--param")
        if not name.isidentifier():
            raise click.BadParameter(f"{item!r}: PARAM {name!r} is not a parameter name.",
                                     param_hint="--param")
        if name in out.get(method, {}):
            raise click.BadParameter(f"{method}.{name} is given twice.", param_hint="--param")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(method, {})[name] = value
    return out


_parse_params = parse_params  # the name before it was public


@click.group(cls=_UserErrors)
@click.option("--debug", is_flag=True,
              help="Show the traceback of user errors too (internal errors always show it).")
@click.version_option(package_name="xai-saliency-bench")
def main(debug):
    """xai: compare explanation methods for Keras image classifiers."""
    # TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) buries xai's output. It is
    # read when TensorFlow loads, which is inside a command, after this; the library never sets it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@main.command("list")
def list_cmd():
    """Registered explainers with their package, version and parameters."""
    import xai

    for name in xai.list_explainers():
        info = xai.plugin_info(name)
        params = ", ".join(f"{k}={p.default!r}" for k, p in info.cls.parameters.items())
        opt_in = "" if info.cls.in_default_comparison else "  (opt-in: not in the default comparison)"
        click.echo(f"{name:18s} {info.distribution or '(no package)'} {info.version or ''}  [{params}]{opt_in}")
    for name, error in xai.plugin_errors().items():
        click.echo(f"{name:18s} FAILED TO LOAD: {error}", err=True)


def _input_range(ctx, param, value):
    """--input-range LOW,HIGH -> (low, high) or None."""
    if value is None:
        return None
    from xai.baselines import check_range  # no TensorFlow: options fail before it loads
    from xai.errors import ParameterError

    try:
        return check_range(value.split(","))
    except ParameterError as exc:
        raise click.BadParameter(f"expected LOW,HIGH such as 0,255 ({exc})") from None


INPUT_RANGE = click.option(
    "--input-range", callback=_input_range, default=None, metavar="LOW,HIGH",
    help="Pixel range the model takes, e.g. 0,255 (default: read from its first layer; see docs/models.md).")


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--method", "methods", multiple=True, default=("vanilla_gradient",), show_default=True,
              help="Explainer name; repeat for several.")
@click.option("--model", type=click.Path(dir_okay=False), default=None,
              help="A .keras model (default: the offline default model).")
@click.option("--target", type=int, default=None, help="Class to explain (default: predicted).")
@click.option("--param", "params", multiple=True, help="METHOD.PARAM=VALUE, e.g. smoothgrad.n_samples=20.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="PNG file to write.")
@INPUT_RANGE
def explain(images, methods, model, target, params, out, input_range):
    """The seed's picture for each IMAGE: the image, the grey map and the overlay."""
    options = parse_params(params)  # a malformed --param fails before TensorFlow loads
    load_tensorflow()

    import numpy as np

    import xai
    from xai import data, display
    from xai.api import explain_batch
    from xai.runner import resolve_model

    known = xai.list_explainers()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise xai.PluginError(f"unknown method(s) {unknown}; registered: {', '.join(known)}.")
    net, _ = resolve_model(model, verbose=0)
    net = xai.models.prepare_model(net)
    if input_range is not None:
        import dataclasses

        xai.models.attach_spec(net, dataclasses.replace(xai.models.model_spec(net), input_range=input_range))
    spec = xai.models.model_spec(net)
    if target is not None and not 0 <= target < spec.num_classes:
        raise xai.ParameterError(f"--target must be a class index from 0 to {spec.num_classes - 1} "
                                 f"(the model has {spec.num_classes} outputs); got {target}.")
    from xai.runner import describe_input

    click.echo(describe_input(spec), err=True)
    low, high = spec.input_range
    batch = data.load_images(list(images), spec.input_shape[:2]) * np.float32(high - low) + np.float32(low)
    maps, predicted, _ = explain_batch(batch, methods, net, target=target, params=options)
    for line in saturation_notes(net, batch, predicted if target is None else np.full(len(batch), target),
                                 methods, options, [Path(i).name for i in images]):
        click.echo(line, err=True)
    names = spec.class_names or tuple(str(i) for i in range(spec.num_classes))
    figs = [display.explanation_figure(batch[i], {m: maps[m][i] for m in methods},
                                       title=f"{Path(images[i]).name}: {names[predicted[i]]}",
                                       input_range=spec.input_range)
            for i in range(len(batch))]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(figs) == 1:
        figs[0].savefig(out, dpi=120)
    else:
        for i, fig in enumerate(figs):
            fig.savefig(out.with_name(f"{out.stem}-{i}{out.suffix}"), dpi=120)
    click.echo(f"wrote {out if len(figs) == 1 else out.with_name(out.stem + '-*' + out.suffix)}")


def saturation_notes(model, batch, targets, methods, options, names) -> list:
    """A line per gradient method whose score (loss, probability) saturates on an image: its
    gradient there is the logit's scaled by about 1 - p, so say so and name the logit."""
    import numpy as np

    from xai.explainer import SATURATING_SCORES, SATURATION
    from xai.head import ModelHead
    from xai.registry import get_explainer

    probabilities = np.asarray(ModelHead(model)(batch)["probabilities"])[np.arange(len(batch)), targets]
    notes = []
    for method in methods:
        cls = get_explainer(method)
        score = cls.resolve_params(options.get(method, {})).get("score")
        if not cls.differentiates_score or score not in SATURATING_SCORES:
            continue
        where = [f"{n} (p = {p:.6f})" for n, p in zip(names, probabilities) if 1 - p < SATURATION]
        if where:
            notes.append(f"note: {method} differentiates score={score!r}, which saturates on {', '.join(where)}: "
                         "its gradient is the logit's scaled by about 1 - p (an average over noisy copies is "
                         f"dominated by the few where the model is less sure); --param {method}.score=logit "
                         "does not saturate.")
    return notes


def parse_tolerance(text):
    """--tolerance: ... (the default) when not given, None for 'none', else a positive number."""
    if text is None:
        return ...
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise click.BadParameter(f"expected a positive relative error such as 0.05, or 'none'; got {text!r}.",
                                 param_hint="--tolerance")
    return value


@main.command()
@click.option("--methods", default=None,
              help="Comma-separated explainers, or 'all' (default: the default comparison, `xai list`).")
@click.option("--dataset", default="offline", show_default=True,
              help="offline, cats_vs_dogs, or a folder with one sub-folder per class.")
@click.option("--model", type=click.Path(dir_okay=False), default=None,
              help="A .keras model (default: the offline default model, trained once and cached).")
@click.option("--n-images", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--metrics", default=None,
              help="Comma-separated metrics (default: the default set; `xai metrics` lists them all).")
@click.option("--protocol", type=click.Choice(["debiased", "rise", "xplique"]), default="debiased",
              show_default=True,
              help="Deletion/insertion preset: debiased (deletion inpaints deleted pixels), rise (the paper's: "
                   "deleted pixels go black), xplique (see docs/metrics.md).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tolerance", default=None, metavar="ERROR|none",
              help="Monte Carlo tolerance of stochastic maps: sampling stops per image once the map's relative "
                   "error is below it, never past the method's own sample count (default 0.05; 'none': fixed "
                   "counts, no error reported).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--n-examples", type=click.IntRange(min=0), default=4, show_default=True,
              help="Images shown in the report's gallery (12 per page; further pages beside the report).")
@click.option("--param", "params", multiple=True, help="METHOD.PARAM=VALUE, e.g. smoothgrad.n_samples=20.")
@click.option("--out", type=click.Path(file_okay=False), default="xai-runs", show_default=True)
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where the work runs: this process, or Ray workers (pip install 'xai-saliency-bench[ray]').")
@click.option("--address", default=None,
              help="Ray cluster to join: 'auto' or HOST:PORT (default: start a local one).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Ray workers (default: one per cluster node).")
@click.option("--image-source", type=click.Choice(["driver", "workers"]), default="driver", show_default=True,
              help="Ray: the driver reads the images and ships them in shards, or each worker reads its own "
                   "shards from --dataset (a name, or a path every node reaches; see docs/scaling.md).")
@INPUT_RANGE
@click.option("--quiet", is_flag=True, help="No progress bars.")
def compare(methods, dataset, model, n_images, metrics, protocol, seed, tolerance, batch_size, n_examples, params,
            out, backend, address, workers, image_source, input_range, quiet):
    """Run every method on every image, score it, store the results, write the report.

    Rerunning the same command resumes the run: finished work is not recomputed.
    """
    method_params = parse_params(params)  # before TensorFlow loads: a typo fails at once
    tolerance = parse_tolerance(tolerance)
    if backend == "local" and (address or workers or image_source != "driver"):
        raise click.UsageError("--address, --workers and --image-source apply to --backend ray only.")
    load_tensorflow(quiet)
    from xai.runner import CompareConfig
    from xai.runner import compare as run_compare

    def names(text):  # None: the default; "" is an empty list, which the runner refuses
        return None if text is None else [n.strip() for n in text.split(",") if n.strip()]

    config = CompareConfig(
        methods=names(methods), method_params=method_params, dataset=dataset, model=model,
        n_images=n_images, metrics=names(metrics), protocol=protocol, seed=seed, batch_size=batch_size,
        n_examples=n_examples, out=out, backend=backend, address=address, workers=workers,
        image_source=image_source, input_range=input_range,
        **({} if tolerance is ... else {"tolerance": tolerance}))
    run_dir = run_compare(config, quiet=quiet)
    _summarise_run(run_dir)
    from xai.store import ResultsStore

    store = ResultsStore(run_dir)
    counts = store.batch_counts()
    store.close()
    if counts["done"] == 0 and counts["failed"]:
        raise click.ClickException(f"every batch of every method failed ({counts['failed']}); the errors and "
                                   f"their tracebacks are in {run_dir / 'report.html'}.")


def _summarise_run(run_dir: Path):
    from xai.evaluation import registry as metric_registry

    data = json.loads((run_dir / "results.json").read_text())
    click.echo(f"run directory: {run_dir}")
    per_batch = {m.name for m in metric_registry.metrics() if m.per_batch is not None}
    shown = [row for row in data["summary"] if row["metric"] in per_batch]
    width = max((len(row["method"]) for row in shown), default=0)
    meta = data.get("meta_evaluation", {})
    metric_width = max((len(row["metric"]) for row in shown), default=0)
    for metric in dict.fromkeys(row["metric"] for row in shown):
        if metric in meta and not meta[metric]["trusted"]:
            # The reading replaces the ranking: a number that cannot rank must not look like one.
            click.echo(f"  {metric}: {meta[metric]['sentence']}")
        for row in (r for r in shown if r["metric"] == metric):
            mean = "nan" if row["mean"] is None else f"{row['mean']:.3f}"
            rank = "  -" if row["rank"] is None else f"#{row['rank']}"
            click.echo(f"  {metric:{metric_width}s} {rank:>3s} {row['method']:{width}s} {mean}")
    for f in data["failures"]:
        click.echo(f"  FAILED {f['method']} batch {f['batch']}: {f['error']}", err=True)
    click.echo(f"report: {run_dir / 'report.html'}")


@main.command()
def metrics():
    """Registered metrics: direction, what they need, whether they are in the default set."""
    from xai.evaluation import registry as metric_registry

    width = max(len(m.name) for m in metric_registry.metrics())
    for m in metric_registry.metrics():
        direction = "higher is better" if m.higher_is_better else "lower is better"
        needs = ", ".join(n for n, flag in (("masks", m.needs_masks), ("the explainer", m.needs_explainer),
                                            ("a layer graph", m.needs_layer_graph),
                                            ("--protocol", m.uses_protocol)) if flag)
        kind = "cost, always measured" if m.is_cost else ("default" if m.default else "opt-in")
        kind += "; stochastic: also run under seed + 1" if m.stochastic else ""
        click.echo(f"{m.name:{width}s} {direction:17s} [{kind}{'; needs ' + needs if needs else ''}]  {m.description}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
def report(run_dir):
    """Render the report of RUN_DIR again from its stored results (no recomputation)."""
    if not (Path(run_dir) / "results.sqlite").is_file():
        raise StoreError(f"{run_dir} holds no results.sqlite; is it a directory made by xai compare?")
    load_tensorflow()
    from xai.report import write_report

    click.echo(f"wrote {write_report(run_dir)}")


@main.command()
@click.option("--dataset", type=click.Choice(["offline", "cats_vs_dogs"]), default="offline", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Train exactly this many epochs. Default: the recipe's (offline: until 97% validation "
                   "accuracy, at most 9).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where to save (.keras). Default for offline: the model cache.")
@click.option("--retrain", is_flag=True, help="Train even if the cached model exists.")
def train(dataset, epochs, out, retrain):
    """Train the shared VGG16-GAP: the offline default from scratch, or cats_vs_dogs
    from ImageNet weights (the seed's recipe; needs the downloads once)."""
    import dataclasses

    load_tensorflow()
    from xai import train as tr
    from xai.models import save_model

    if dataset == "offline":
        config = tr.DefaultModelConfig()
        if epochs:
            config = dataclasses.replace(config, epochs=epochs, target_accuracy=None)
        if out is None:
            model = tr.default_model(config, retrain=retrain)
            path = tr.default_model_path(config)
        else:
            model, _ = tr.train_default_model(config)
            path = save_model(model, out)
        test = tr.evaluate_accuracy(model, __import__("xai.data", fromlist=["offline"]).offline(
            1000, config.image_size, num_classes=config.num_classes, seed=config.seed, split="test"))
        click.echo(f"saved {path}; held-out accuracy {test:.3f}")
        return
    model, accuracy = tr.train_cats_vs_dogs(epochs=epochs or 3)
    path = save_model(model, out or "vgg16_gap_cats_vs_dogs.keras")
    click.echo(f"saved {path}; held-out accuracy {accuracy:.3f}")


if __name__ == "__main__":
    sys.exit(main())
