"""Datasets: tfds cats_vs_dogs, folders of images, single files, and the offline default.

Every dataset is a `tf.data.Dataset` of dicts ``{"id", "image", "label"[, "mask"]}``:
``image`` float32 (H, W, 3) in [0, 1], ``label`` int32, ``mask`` float32 (H, W) ground
truth where known, ``id`` a string that names the image across runs (results are keyed
on it). Class names travel as ``dataset.class_names``.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from xai.errors import DataError, ParameterError

#: Shapes that decide the class of the offline dataset, in class order.
OFFLINE_SHAPES = ("disc", "square", "triangle", "cross", "star")
#: Natural-texture photographs shipped inside scikit-image (no download).
OFFLINE_TEXTURES = ("brick", "grass", "gravel", "moon", "camera", "coins", "clock")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM")
_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}
_EXIF_ORIENTATION = 0x0112


def _with_class_names(ds: tf.data.Dataset, class_names: Sequence[str]) -> tf.data.Dataset:
    ds.class_names = tuple(class_names)
    return ds


def _as_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        image_size = (image_size, image_size)
    try:
        size = tuple(int(s) for s in image_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ParameterError(f"image_size must be an int or (height, width); got {image_size!r}.")
    return size


# --------------------------------------------------------------------------------------
# The offline default
# --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, ...]:
    import skimage.data

    out = []
    for name in OFFLINE_TEXTURES:
        img = getattr(skimage.data, name)().astype(np.float32) / 255.0
        out.append(img if img.ndim == 2 else img.mean(axis=-1))
    return tuple(out)


def _shape_mask(shape: str, size: int, cy: float, cx: float, radius: float, angle: float) -> np.ndarray:
    import skimage.draw

    def polygon(points):
        pts = np.asarray(points, dtype=np.float64)
        c, s = np.cos(angle), np.sin(angle)
        rot = pts @ np.array([[c, -s], [s, c]])
        rr, cc = skimage.draw.polygon(cy + rot[:, 0] * radius, cx + rot[:, 1] * radius, (size, size))
        m = np.zeros((size, size), bool)
        m[rr, cc] = True
        return m

    if shape == "disc":
        rr, cc = skimage.draw.disk((cy, cx), radius, shape=(size, size))
        m = np.zeros((size, size), bool)
        m[rr, cc] = True
        return m
    if shape == "square":
        h = 0.8
        return polygon([(-h, -h), (-h, h), (h, h), (h, -h)])
    if shape == "triangle":
        return polygon([(-1.0, 0.0), (0.6, -0.95), (0.6, 0.95)])
    if shape == "cross":
        a, b = 1.0, 0.33
        return polygon([(-a, -b), (-a, b), (-b, b), (-b, a), (b, a), (b, b), (a, b), (a, -b),
                        (b, -b), (b, -a), (-b, -a), (-b, -b)])
    if shape == "star":
        t = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return polygon(np.stack([-r * np.cos(t), r * np.sin(t)], axis=1))
    raise ValueError(shape)


def _check_offline(num_classes, split) -> None:
    if not 2 <= int(num_classes) <= len(OFFLINE_SHAPES):
        raise ParameterError(f"num_classes must be between 2 and {len(OFFLINE_SHAPES)}; got {num_classes!r}.")
    if split not in _SPLIT_STREAM:
        raise ParameterError(f"split must be one of {sorted(_SPLIT_STREAM)}; got {split!r}.")


def render_offline_image(index: int, *, size: int = 64, num_classes: int = 2, seed: int = 0,
                         split: str = "train", with_object: bool = True) -> tuple[np.ndarray, int, np.ndarray]:
    """Render image `index` of the offline dataset: (image (H, W, 3), label, mask (H, W)).

    The class is the shape of one object (disc, square, …) at a random position, scale,
    rotation and colour. Everything else is drawn from the same distribution for every
    class: a natural-texture background (random photo, crop, zoom and tint) and 2–4
    distractors (thin strokes and small blobs in random colours), so a model can only
    succeed by finding the object's outline. Distractors are drawn first and the object
    over them, so the mask is exactly the object's pixels. ``with_object=False`` renders
    the same scene without its object (an empty mask): what the label cannot be read from.
    """
    _check_offline(num_classes, split)
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split], index])
    label = int(rng.integers(num_classes))
    textures = _textures()
    tex = textures[rng.integers(len(textures))]
    crop = int(rng.integers(size, min(tex.shape) + 1))
    y0 = int(rng.integers(tex.shape[0] - crop + 1))
    x0 = int(rng.integers(tex.shape[1] - crop + 1))
    patch = tex[y0:y0 + crop, x0:x0 + crop]
    idx = (np.arange(size) * crop // size)
    grey = patch[np.ix_(idx, idx)]
    grey = (grey - grey.mean()) * rng.uniform(0.4, 0.8) + rng.uniform(0.35, 0.65)
    tint = rng.uniform(0.6, 1.0, size=3)
    image = np.clip(grey[..., None] * tint, 0.0, 1.0).astype(np.float32)

    import skimage.draw

    for _ in range(int(rng.integers(2, 5))):  # distractors, class-independent
        colour = rng.uniform(0, 1, size=3)
        if rng.random() < 0.5:
            r0, c0, r1, c1 = rng.integers(0, size, size=4)
            rr, cc, val = skimage.draw.line_aa(r0, c0, r1, c1)
            keep = (rr < size) & (cc < size)
            rr, cc, val = rr[keep], cc[keep], val[keep, None]
            image[rr, cc] = image[rr, cc] * (1 - val) + colour * val
        else:
            rr, cc = skimage.draw.disk(tuple(rng.uniform(0, size, 2)), rng.uniform(1.0, 0.05 * size),
                                       shape=(size, size))
            image[rr, cc] = colour

    radius = rng.uniform(0.16, 0.28) * size
    cy, cx = rng.uniform(radius, size - radius, size=2)
    mask = _shape_mask(OFFLINE_SHAPES[label], size, cy, cx, radius, rng.uniform(0, 2 * np.pi))
    colour = rng.uniform(0, 1, size=3)
    colour[rng.integers(3)] = rng.choice([0.05, 0.95])  # saturated, so it stands out
    if not with_object:
        mask[:] = False
    image[mask] = colour
    return image, label, mask.astype(np.float32)


def offline(n_images: int = 1000, image_size: int = 64, num_classes: int = 2, seed: int = 0,
            split: str = "train", start: int = 0) -> tf.data.Dataset:
    """The offline default dataset, generated deterministically from `seed` (no download).

    Parameters
    ----------
    n_images : int, default 1000
    image_size : int, default 64
        Square images of this side.
    num_classes : int, 2 to 5, default 2
        Class k is the shape ``OFFLINE_SHAPES[k]``.
    seed : int, default 0
    split : "train", "validation" or "test"
        Independent streams of images for the same seed.
    start : int, default 0
        Index of the first image: ``offline(n, start=s)`` is images s to s + n - 1 of the
        stream, the same as those of ``offline(s + n)``, without rendering the others.

    Examples
    --------
    >>> ds = offline(n_images=4, image_size=32)
    >>> ds.class_names
    ('disc', 'square')
    >>> sorted(next(iter(ds)).keys())
    ['id', 'image', 'label', 'mask']
    """
    _check_offline(num_classes, split)
    if int(n_images) < 1:
        raise ParameterError(f"n_images must be >= 1; got {n_images!r}.")
    size = int(image_size)
    if size < 16:
        raise ParameterError(f"image_size must be >= 16; got {image_size!r}.")

    def render(i):
        image, label, mask = render_offline_image(int(i), size=size, num_classes=int(num_classes),
                                                  seed=int(seed), split=split)
        return image, np.int32(label), mask

    def to_element(i):
        image, label, mask = tf.numpy_function(render, [i], (tf.float32, tf.int32, tf.float32))
        image.set_shape((size, size, 3))
        label.set_shape(())
        mask.set_shape((size, size))
        name = tf.strings.join([f"offline-{split}-s{seed}-", tf.strings.as_string(i)])
        return {"id": name, "image": image, "label": label, "mask": mask}

    if int(start) < 0:
        raise ParameterError(f"start must be >= 0; got {start!r}.")
    ds = tf.data.Dataset.range(int(start), int(start) + int(n_images)).map(
        to_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _with_class_names(ds, OFFLINE_SHAPES[: int(num_classes)])


#: What `offline_uninformative` cycles through: images from which no class can be read.
UNINFORMATIVE_KINDS = ("empty_scene", "black", "blurred_scene", "blurred_empty_scene")


def offline_uninformative(n_images: int = 1000, image_size: int = 64, seed: int = 0,
                          split: str = "train") -> tf.data.Dataset:
    """Images of the offline world that show no class: ``{"id", "image", "kind"}``.

    They cycle through `UNINFORMATIVE_KINDS`: an offline scene without its object (the
    same backgrounds and distractors, drawn from a stream of its own), a black image, and
    a scene with and without its object blurred by RISE's Gaussian (kernel 11, sigma 5).
    Black and blurred images are where the deletion and insertion curves of the RISE
    protocol end and start, so a model trained to answer them with the uniform
    distribution (`xai.train.train(..., uninformative=...)`) makes those curves measure the
    evidence a map points at rather than what the model guesses for an empty picture
    (docs/data.md).

    >>> kinds = [e["kind"].numpy().decode() for e in offline_uninformative(4, image_size=32)]
    >>> kinds == list(UNINFORMATIVE_KINDS)
    True
    """
    from xai.baselines import blur

    _check_offline(2, split)
    size = int(image_size)
    # Far above any index a labelled split uses, so no scene repeats a labelled one.
    first = 1 << 30

    def render(i):
        kind = int(i) % len(UNINFORMATIVE_KINDS)
        with_object = UNINFORMATIVE_KINDS[kind] == "blurred_scene"
        image, _, _ = render_offline_image(first + int(i), size=size, seed=int(seed), split=split,
                                           with_object=with_object)
        return image if kind != 1 else np.zeros_like(image)

    def to_element(i):
        image = tf.numpy_function(render, [i], tf.float32)
        image.set_shape((size, size, 3))
        kind = tf.gather(tf.constant(UNINFORMATIVE_KINDS), i % len(UNINFORMATIVE_KINDS))
        image = tf.cond(tf.strings.regex_full_match(kind, "blurred.*"),
                        lambda: blur(image[None])[0], lambda: image)
        name = tf.strings.join([f"offline-{split}-s{seed}-uninformative-", tf.strings.as_string(i)])
        return {"id": name, "image": image, "kind": kind}

    if int(n_images) < 1:
        raise ParameterError(f"n_images must be >= 1; got {n_images!r}.")
    return tf.data.Dataset.range(int(n_images)).map(
        to_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# --------------------------------------------------------------------------------------
# tfds cats_vs_dogs (the seed's data)
# --------------------------------------------------------------------------------------

def cats_vs_dogs(split: str = "train[80%:]", image_size=224, data_dir: Optional[str] = None,
                 download: bool = True, start: int = 0, count: Optional[int] = None) -> tf.data.Dataset:
    """tfds ``cats_vs_dogs`` as the seed's CAM post loads it: [0, 1] floats resized.

    The seed trains on ``train[:80%]`` and tests on the rest; the default here is the
    held-out part, which is what explanations are evaluated on. `start` and `count` read
    only images ``start`` to ``start + count - 1`` of `split` (a shard, for a Ray worker):
    tfds slices its files, so the images before them are not read; ids stay those of
    `split`.

    Raises
    ------
    DataError
        When the data is not in `data_dir` and cannot be downloaded.
    """
    import tensorflow_datasets as tfds

    size = _as_size(image_size)
    try:
        read = split if (start, count) == (0, None) else _tfds_slice("cats_vs_dogs", split, start, count,
                                                                      data_dir)
        ds, info = tfds.load("cats_vs_dogs", split=read, as_supervised=True, with_info=True,
                             data_dir=data_dir, download=download)
    except Exception as exc:
        raise DataError(
            "tfds 'cats_vs_dogs' is not available here and could not be downloaded "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Run "
            "`python -c \"import tensorflow_datasets as tfds; tfds.load('cats_vs_dogs')\"` once "
            "on a machine with internet access (copy ~/tensorflow_datasets here), pass "
            "data_dir=, or use the offline default dataset."
        ) from exc

    def to_element(index, pair):
        image, label = pair
        image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, size)
        return {"id": tf.strings.join(["cats_vs_dogs-", split, "-", tf.strings.as_string(index)]),
                "image": image, "label": tf.cast(label, tf.int32)}

    ds = ds.enumerate(start=int(start)).map(to_element, num_parallel_calls=tf.data.AUTOTUNE,
                                            deterministic=True)
    return _with_class_names(ds, info.features["label"].names)


def _tfds_split_bounds(name: str, split: str, data_dir: Optional[str] = None) -> tuple[str, int, int]:
    """(split name, first index, end index) of a tfds split spec such as ``train[80%:]``, read
    from the prepared dataset's metadata; tfds's own rounding of percentages."""
    import tensorflow_datasets as tfds

    splits = tfds.builder(name, data_dir=data_dir).info.splits
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(splits)
    if len(instructions) != 1:
        raise DataError(f"split {split!r} joins several slices; a sharded run needs one slice "
                        "(such as 'train[80%:]').")
    only = instructions[0]
    total = splits[only.splitname].num_examples
    return only.splitname, only.from_ or 0, total if only.to is None else only.to


def _tfds_slice(name: str, split: str, start: int, count: Optional[int], data_dir=None) -> str:
    """The absolute tfds split of images `start` to `start + count - 1` of `split`."""
    base, first, end = _tfds_split_bounds(name, split, data_dir)
    begin = min(first + int(start), end)
    stop = end if count is None else min(end, begin + int(count))
    return f"{base}[{begin}:{stop}]"


# --------------------------------------------------------------------------------------
# Image files and folders
# --------------------------------------------------------------------------------------

def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of encoded image bytes; 1 (as stored) when there is none.

    Reads the header only (JPEG APP1, PNG eXIf), never the pixels. Phone cameras store the
    sensor's pixels and this tag; a viewer turns the picture upright, and so does xai.
    """
    if not (data.startswith(b"\xff\xd8\xff") or (data.startswith(b"\x89PNG") and b"eXIf" in data)):
        return 1  # GIF and BMP have no EXIF
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a damaged header: the decoder will say so
        return 1
    return int(value) if isinstance(value, (int, np.integer)) and 1 <= value <= 8 else 1


def _orient(image: tf.Tensor, orientation) -> tf.Tensor:
    """Turn a decoded (H, W, C) image upright for its EXIF `orientation` (what Pillow's
    ``ImageOps.exif_transpose`` does), in TensorFlow ops."""
    transpose = lambda: tf.transpose(image, [1, 0, 2])  # noqa: E731
    branches = [
        lambda: image,                                    # 1: upright
        lambda: image[:, ::-1],                           # 2: mirrored
        lambda: image[::-1, ::-1],                        # 3: rotated 180
        lambda: image[::-1],                              # 4: mirrored vertically
        transpose,                                        # 5: mirrored, rotated 90 ccw
        lambda: tf.image.rot90(image, 3),                 # 6: rotated 90 cw
        lambda: tf.transpose(image, [1, 0, 2])[::-1, ::-1],  # 7: mirrored, rotated 90 cw
        lambda: tf.image.rot90(image, 1),                 # 8: rotated 90 ccw
    ]
    index = tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7)
    return tf.switch_case(index, branches)


def load_image(path, image_size=None) -> np.ndarray:
    """Read one PNG/JPEG/BMP/GIF as float32 RGB in [0, 1], upright, optionally resized.

    The EXIF orientation is applied (a phone photo is seen as its viewer shows it);
    grey-scale is repeated to three channels; an alpha channel is dropped after
    compositing on white (what a viewer shows).

    Raises
    ------
    DataError
        The file is missing or not a readable image (truncated, damaged); the message
        names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {str(path)!r} does not exist.")
    data = path.read_bytes()
    if not data.startswith(_MAGIC):
        raise DataError(f"{str(path)!r} is not a PNG, JPEG, GIF or BMP image.")
    size = None if image_size is None else _as_size(image_size)
    try:
        image = decode_rgb(tf.constant(data), size, orientation=exif_orientation(data))
    except Exception as exc:
        raise DataError(f"{str(path)!r} could not be decoded as an image; it is truncated or damaged "
                        f"({exc.__class__.__name__}).") from exc
    return image.numpy()


def decode_rgb(data: tf.Tensor, size=None, orientation=1) -> tf.Tensor:
    """Encoded PNG/JPEG/BMP/GIF bytes -> float32 RGB in [0, 1] (H, W, 3), in TensorFlow ops.

    `orientation` is the EXIF orientation (`exif_orientation`, 1 = as stored), applied
    before resizing. Grey-scale is repeated to three channels; an alpha channel is dropped
    after compositing on white (what a viewer shows). Runs inside `tf.data` pipelines.
    """
    image = tf.io.decode_image(data, expand_animations=False)
    image = _orient(image, orientation)
    image = tf.image.convert_image_dtype(image, tf.float32)
    has_alpha = tf.equal(tf.shape(image)[-1] % 2, 0)  # grey+alpha or RGBA
    image = tf.cond(has_alpha, lambda: image[..., :-1] * image[..., -1:] + (1.0 - image[..., -1:]),
                    lambda: image)
    image = tf.cond(tf.equal(tf.shape(image)[-1], 1), lambda: tf.tile(image, [1, 1, 3]), lambda: image)
    image = tf.ensure_shape(image, (None, None, 3))
    if size is not None:
        image = tf.image.resize(image, size, antialias=True)
    return tf.clip_by_value(image, 0.0, 1.0)


def load_images(paths: Sequence, image_size) -> np.ndarray:
    """Read several image files into one (N, H, W, 3) batch at `image_size` (see `load_image`)."""
    if not paths:
        raise DataError("no image files given.")
    return np.stack([load_image(p, image_size) for p in paths])


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _list_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and (file, label) pairs of ROOT/CLASS/FILE; a file anywhere else (in ROOT
    itself, or below a class folder) is named in a warning and not used."""
    if not root.is_dir():
        raise DataError(f"dataset folder {str(root)!r} does not exist.")
    entries = sorted(p for p in root.iterdir() if _visible(p))
    class_dirs = [p for p in entries if p.is_dir()]
    misplaced = [p for p in entries if p.is_file()]
    items = []
    for label, d in enumerate(class_dirs):
        for f in sorted(p for p in d.iterdir() if _visible(p)):
            if f.is_file():
                items.append((f, label))
            elif f.is_dir():
                misplaced += sorted(p for p in f.rglob("*") if p.is_file() and _visible(p)
                                    and not any(part.startswith(".") for part in p.relative_to(f).parts))
    if misplaced:
        names = ", ".join(p.relative_to(root).as_posix() for p in misplaced[:5])
        more = f" and {len(misplaced) - 5} more" if len(misplaced) > 5 else ""
        warnings.warn(f"{len(misplaced)} file(s) in {str(root)!r} are not at ROOT/CLASS/FILE and are not used: "
                      f"{names}{more}. Each class is one folder directly under ROOT, its images directly "
                      "inside it (see docs/data.md).", UserWarning, stacklevel=3)
    if not class_dirs:
        raise DataError(f"{str(root)!r} has no class sub-folders (expected ROOT/CLASS/IMAGE files).")
    if not items:
        raise DataError(f"{str(root)!r} has class folders but no files in them (expected ROOT/CLASS/IMAGE "
                        "files).")
    return [d.name for d in class_dirs], items


def _undecodable(paths: Sequence[str]) -> list[int]:
    """Indices of the files that the pipeline's own decoder cannot decode, found by decoding
    each file once, in parallel, with the same TensorFlow ops as the dataset."""
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), list(paths)))
    ds = ds.map(lambda i, p: (i, tf.shape(decode_rgb(tf.io.read_file(p)))),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    decoded = set()
    for indices, _ in ds.ignore_errors().batch(256).as_numpy_iterator():
        decoded.update(int(i) for i in indices)
    return [i for i in range(len(paths)) if i not in decoded]


def image_folder(root, image_size=224, n_images: Optional[int] = None, start: int = 0) -> tf.data.Dataset:
    """A folder with one sub-folder per class (``ROOT/CLASS/*.png|jpg``), sorted by name.

    Every file used (the first `n_images` in that order, or all) is read and decoded once
    before the dataset is returned, so a foreign, truncated or damaged file is reported by
    name up front instead of failing deep inside a later run. Each image is turned upright
    by its EXIF orientation. Files that are not at ROOT/CLASS/FILE are named in a warning.
    `start` skips the first files of that order (a shard: only its own files are read).

    Raises
    ------
    DataError
        The folder does not exist, has no class folders or images, or holds files that
        cannot be decoded (named, up to five).
    """
    root = Path(root)
    size = _as_size(image_size)
    class_names, items = _list_folder(root)
    items = items[int(start):]
    if n_images is not None:
        items = items[: int(n_images)]
    bad, orientations = [], []
    for f, _ in items:
        orientations.append(1)
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            bad.append(f"{f} (not an image file type: {', '.join(IMAGE_SUFFIXES)})")
            continue
        data = f.read_bytes()
        if not data.startswith(_MAGIC):
            bad.append(f"{f} (not a PNG, JPEG, GIF or BMP image)")
            continue
        orientations[-1] = exif_orientation(data)
    if not bad:
        bad = [f"{items[i][0]} (truncated or damaged: it cannot be decoded)"
               for i in _undecodable([str(f) for f, _ in items])]
    if bad:
        raise DataError(f"{len(bad)} unreadable file(s) in {str(root)!r}: " + "; ".join(bad[:5])
                        + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
                        + ". Remove or replace them.")

    # Decoding and resizing run in parallel inside tf.data, overlapping the model's work.
    ds = tf.data.Dataset.from_tensor_slices({
        "id": [f.relative_to(root).as_posix() for f, _ in items],
        "path": [str(f) for f, _ in items],
        "orientation": np.asarray(orientations, np.int32),
        "label": np.asarray([label for _, label in items], np.int32)})
    ds = ds.map(lambda e: {"id": e["id"],
                           "image": decode_rgb(tf.io.read_file(e["path"]), size, e["orientation"]),
                           "label": e["label"]},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _with_class_names(ds, class_names)


def load_dataset(name_or_path: str, *, n_images: int, image_size: int, seed: int = 0,
                 num_classes: int = 2, split: Optional[str] = None, start: int = 0) -> tf.data.Dataset:
    """Resolve the CLI's ``--dataset`` value: "offline", "cats_vs_dogs" or a folder path.

    `start`: the dataset from its image `start` on (a shard of a run, read where it runs);
    the images before it are not read.
    """
    if name_or_path == "offline":
        ds = offline(n_images=n_images, image_size=image_size, num_classes=num_classes,
                     seed=seed, split=split or "test", start=start)
    elif name_or_path == "cats_vs_dogs":
        ds = cats_vs_dogs(split=split or "train[80%:]", image_size=image_size, start=start, count=n_images)
    else:
        ds = image_folder(name_or_path, image_size=image_size, n_images=n_images, start=start)
    names = ds.class_names
    return _with_class_names(ds.take(n_images), names)


@dataclasses.dataclass(frozen=True)
class DatasetFacts:
    """What a run plans with, read without decoding a single image."""

    class_names: tuple
    n_images: int  # the images the run will use: at most its n_images
    has_masks: bool


def dataset_facts(name_or_path: str, *, n_images: int, num_classes: int = 2,
                  split: Optional[str] = None) -> DatasetFacts:
    """The facts of `load_dataset`'s dataset (same arguments), from its names, tfds metadata
    or a folder listing: a driver plans a run whose images only its workers read.

    Raises
    ------
    DataError
        As `load_dataset`, for what can be known without decoding (a missing folder).
    """
    if name_or_path == "offline":
        _check_offline(num_classes, split or "test")
        return DatasetFacts(tuple(OFFLINE_SHAPES[: int(num_classes)]), int(n_images), True)
    if name_or_path == "cats_vs_dogs":
        import tensorflow_datasets as tfds

        try:
            _, first, end = _tfds_split_bounds("cats_vs_dogs", split or "train[80%:]")
            names = tfds.builder("cats_vs_dogs").info.features["label"].names
        except Exception as exc:
            raise DataError(f"tfds 'cats_vs_dogs' is not prepared here ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); see cats_vs_dogs().") from exc
        return DatasetFacts(tuple(names), min(int(n_images), end - first), False)
    class_names, items = _list_folder(Path(name_or_path))
    return DatasetFacts(tuple(class_names), min(int(n_images), len(items)), False)


def dataset_identity(name_or_path: str) -> tuple[object, Optional[str]]:
    """(identity, path or None): a named dataset is its name; a folder is the digest of its
    files' relative paths and sizes, so the same images under another path are the same run."""
    import hashlib

    if name_or_path in ("offline", "cats_vs_dogs"):
        return name_or_path, None
    root = Path(name_or_path)
    if not root.is_dir():
        return name_or_path, None  # load_dataset says what is wrong with it
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\n".encode())
    return {"folder_digest": h.hexdigest()[:16]}, str(root.resolve())
