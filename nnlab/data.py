"""Datasets and batches for nnlab: in-memory ``Batches``, offline loaders, the small
preprocessing helpers ``one_hot``, ``standardize`` and ``split``, datasets made from
others: ``permute_pixels`` (Permuted-MNIST) and ``multi_digit`` (MultiMNIST), and
``DATASETS``, the named train/test splits that the command line, the experiments and the
benchmarks load with ``load_split``.

Every image loader returns ``(images, labels)``: ``images`` float32 (N, C, H, W) with
values in [0, 1] and ``labels`` int64 (N,). Nothing here downloads anything: MNIST,
Fashion-MNIST and CIFAR-10 are read from files you already have.

A file that is missing raises ``DataNotFoundError`` (both a ``DataError`` and a
``FileNotFoundError``) listing every path searched; a file that is there but truncated,
corrupt or of the wrong kind raises ``DataError`` (a ``ValueError``) naming the file and
what was expected.
"""

import gzip
import importlib.util
import math
import operator
import os
import pickle
import zlib
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "Batches",
    "DataError",
    "DataNotFoundError",
    "Dataset",
    "load_cifar10",
    "load_diabetes",
    "load_digits",
    "load_mnist",
    "load_moons",
    "load_split",
    "multi_digit",
    "one_hot",
    "permute_pixels",
    "rotated_moons",
    "split",
    "standardize",
]


class DataError(ValueError):
    """A dataset file is corrupt, truncated, or not the file that was expected."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset file is missing; the message lists every path that was searched."""


# Batches ----------------------------------------------------------------------------


class Batches:
    """In-memory mini-batches of ``(samples, labels)``, usable wherever a DataLoader is.

    ``len(batches)`` is the number of batches, ``ceil(num_samples / batch_size)``; the
    last batch holds the remainder and may be smaller. ``batches[i]`` is the i-th batch
    of the current order (negative indices count from the end, past the end raises
    ``IndexError``); the order starts as 0, 1, ..., N - 1 and changes only when
    ``shuffle()`` is called. ``shuffle()`` draws a new order from torch's global RNG,
    so ``torch.manual_seed`` reproduces it. Iterating yields every batch once; with
    ``shuffle=True`` each iteration (epoch) reshuffles first.

    A batch is gathered with one index tensor: ``(samples[idx], labels[idx])``, new
    tensors on the samples' and labels' devices.

    Args:
        samples: tensor (N, ...).
        labels: tensor (N, ...), typically int64 class indices (N,).
        batch_size: int >= 1.
        shuffle: reshuffle at the start of every iteration.

    Attributes:
        samples, labels, batch_size, num_samples; ``reshuffle`` is the ``shuffle`` flag
        (the name ``shuffle`` is the method).
    """

    def __init__(self, samples, labels, batch_size, shuffle=False):
        samples = torch.as_tensor(samples)
        labels = torch.as_tensor(labels)
        if samples.dim() == 0 or labels.dim() == 0:
            raise ValueError(
                f"Batches: samples and labels need a first (sample) dimension, "
                f"got shapes {tuple(samples.shape)} and {tuple(labels.shape)}"
            )
        if samples.shape[0] != labels.shape[0]:
            raise ValueError(
                f"Batches: samples and labels must have the same first dimension, "
                f"got {samples.shape[0]} samples and {labels.shape[0]} labels"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Batches: batch_size must be an int >= 1, got {batch_size!r}")
        self.samples = samples
        self.labels = labels
        self.batch_size = batch_size
        self.num_samples = samples.shape[0]
        self.reshuffle = bool(shuffle)
        self._order = torch.arange(self.num_samples)

    def __len__(self):
        return (self.num_samples + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i):
        num_batches = len(self)
        if isinstance(i, bool):
            raise TypeError("Batches indices must be integers, got bool")
        i = operator.index(i)
        if i < 0:
            i = i + num_batches
        if i < 0 or i >= num_batches:
            raise IndexError(f"batch index out of range: {num_batches} batches")
        start = i * self.batch_size
        stop = min(start + self.batch_size, self.num_samples)
        idx = self._order[start:stop]
        x = self.samples[idx.to(self.samples.device)]
        y = self.labels[idx.to(self.labels.device)]
        return x, y

    def __iter__(self):
        if self.reshuffle:
            self.shuffle()
        for i in range(len(self)):
            yield self[i]

    def shuffle(self):
        """Draws a new sample order from torch's global RNG (``torch.randperm``)."""
        self._order = torch.randperm(self.num_samples)

    def __repr__(self):
        return (
            f"Batches(num_samples={self.num_samples}, batch_size={self.batch_size}, "
            f"shuffle={self.reshuffle})"
        )


# Bundled data (scikit-learn, offline) ---------------------------------------------


def load_digits():
    """scikit-learn's bundled 8x8 handwritten digits (1797 samples, 10 classes, offline).

    Returns:
        images: float32 (1797, 1, 8, 8), pixel values 0..16 divided by 16, so in [0, 1].
        labels: int64 (1797,), digits 0..9.
    """
    table = _bundled_digits_table()
    images = torch.from_numpy(table[:, :-1].reshape(-1, 8, 8) / 16.0).to(torch.float32).unsqueeze(1)
    labels = torch.from_numpy(table[:, -1]).to(torch.int64)
    return images, labels


def _bundled_digits_table():
    """scikit-learn's digits.csv.gz (64 pixels, then the label, per row), read directly:
    importing sklearn.datasets costs a second or more of every short command's start.
    Through sklearn.datasets when the file is not where this scikit-learn keeps it."""
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin is not None:
        path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
        if os.path.exists(path):
            return np.loadtxt(path, delimiter=",")
    import sklearn.datasets

    digits = sklearn.datasets.load_digits()
    return np.column_stack([digits.data, digits.target])


def load_moons(n, noise, seed=0):
    """Two interleaving half circles, from ``sklearn.datasets.make_moons``.

    Unlike the image loaders the features are points, not images.

    Args:
        n: number of samples (>= 1), split evenly between the two classes.
        noise: standard deviation of the Gaussian noise added to the points (>= 0).
        seed: ``random_state`` for make_moons; the same seed gives the same points.

    Returns:
        points: float32 (n, 2).
        labels: int64 (n,), 0 or 1.
    """
    import sklearn.datasets

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"load_moons: n must be an int >= 1, got {n!r}")
    if noise < 0:
        raise ValueError(f"load_moons: noise must be >= 0, got {noise!r}")
    points, labels = sklearn.datasets.make_moons(n_samples=n, noise=noise, random_state=seed)
    return torch.from_numpy(points).to(torch.float32), torch.from_numpy(labels).to(torch.int64)


def load_diabetes():
    """scikit-learn's bundled diabetes regression set (442 patients, offline): ten
    baseline measurements (age, sex, body-mass index, blood pressure, six blood serum
    values) and a quantitative measure of disease progression one year later.

    The features are as measured (``scaled=False``): standardize them with the training
    statistics (``standardize``) before training.

    Returns:
        features: float32 (442, 10).
        targets: float32 (442, 1), from 25 to 346: shaped as the output of a model with
            one output unit, as ``MSELoss`` and ``L1Loss`` expect.
    """
    import sklearn.datasets

    diabetes = sklearn.datasets.load_diabetes(scaled=False)
    features = torch.from_numpy(diabetes.data).to(torch.float32)
    targets = torch.from_numpy(diabetes.target).to(torch.float32).unsqueeze(1)
    return features, targets


def rotated_moons(n=10_000, seed=42):
    """Two-moons data whose training, validation and test points come from differently
    rotated distributions: the data of the binary-classification study (CS236781 hw2),
    where a threshold chosen on validation data must carry over to shifted test data.

    * ``n_fit = int(0.8 * n)`` points (8000 of 10 000) are a 50/50 mixture:
      ``n_fit // 2`` moons with noise 0.2 rotated by 10 degrees, followed by
      ``n_fit // 2`` moons with noise 0.25 rotated by 50 degrees. The mixture is not
      shuffled: validation is its last third (``ceil(n_fit / 3)`` points, 2667), so it
      holds only 50-degree points; training is the rest (5333: every 10-degree point
      and the first 50-degree ones).
    * ``n - n_fit`` test points (20%, 2000) are moons with noise 0.3 rotated by 40 degrees.

    A rotation by d degrees is counter-clockwise: ``p @ [[cos d, -sin d], [sin d, cos d]].T``.
    The three ``sklearn.datasets.make_moons`` calls draw, in that order, from one
    ``numpy.random.RandomState(seed)``: the same points as the assignment's notebook
    (``np.random.seed(42)`` followed by the same three calls). Offline; the same seed
    gives the same tensors.

    Returns:
        ``(x_train, y_train, x_valid, y_valid, x_test, y_test)``: points float32
        (N, 2), labels int64 (N,), 0 or 1.
    """
    import sklearn.datasets

    if isinstance(n, bool) or not isinstance(n, int) or n < 10:
        raise ValueError(f"rotated_moons: n must be an int >= 10, got {n!r}")
    random_state = np.random.RandomState(seed)
    n_fit = int(0.8 * n)
    parts = []
    for num_points, noise, degrees in [(n_fit // 2, 0.2, 10), (n_fit // 2, 0.25, 50), (n - n_fit, 0.3, 40)]:
        points, labels = sklearn.datasets.make_moons(n_samples=num_points, noise=noise, random_state=random_state)
        parts.append((_rotate_2d(points, degrees), labels))
    fit_points = np.concatenate([parts[0][0], parts[1][0]])
    fit_labels = np.concatenate([parts[0][1], parts[1][1]])
    n_valid = math.ceil(len(fit_points) / 3)
    n_train = len(fit_points) - n_valid
    splits = [
        (fit_points[:n_train], fit_labels[:n_train]),
        (fit_points[n_train:], fit_labels[n_train:]),
        parts[2],
    ]
    tensors = []
    for points, labels in splits:
        tensors.append(torch.from_numpy(points).to(torch.float32))
        tensors.append(torch.from_numpy(labels).to(torch.int64))
    return tuple(tensors)


def _rotate_2d(points, degrees):
    """(N, 2) points rotated counter-clockwise by ``degrees`` about the origin."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return points @ rotation.T


# MNIST and Fashion-MNIST (IDX files) ------------------------------------------------

_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions


def _idx_names(kind, train):
    """The file names MNIST-style IDX files go by, uncompressed first."""
    prefix = "train" if train else "t10k"
    ndim = 3 if kind == "images" else 1
    stems = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    return stems + [stem + ".gz" for stem in stems]


def _find_file(dirs, names, what):
    """The first existing ``dir/name``; else DataNotFoundError listing what was searched."""
    searched = []
    for directory in dirs:
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
            searched.append(path)
    listing = "\n  ".join(searched)
    raise DataNotFoundError(f"{what} not found; searched:\n  {listing}")


def _read_bytes(path):
    """The file's contents, un-gzipped when the name ends in .gz."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a complete gzip file ({e})") from e


def _read_idx(path, magic, what):
    """Parses an IDX file of unsigned bytes into a numpy array, checking its header.

    IDX: a big-endian uint32 magic number (0x00000800 + number of dimensions for
    unsigned bytes), one big-endian uint32 per dimension, then the values.
    """
    data = _read_bytes(path)
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(
            f"{path}: truncated: expected an IDX {what} header of {header_size} bytes, "
            f"file has {len(data)} bytes"
        )
    found_magic = int.from_bytes(data[0:4], "big")
    if found_magic != magic:
        raise DataError(
            f"{path}: wrong magic number 0x{found_magic:08x}, expected 0x{magic:08x} "
            f"(IDX {what}: unsigned bytes, {ndim} dimension(s))"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected_size = header_size + int(np.prod(dims))
    if len(data) != expected_size:
        raise DataError(
            f"{path}: {'truncated' if len(data) < expected_size else 'too long'}: "
            f"dimensions {dims} need {expected_size} bytes, file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims)


def load_mnist(root, fashion=False, train=True):
    """MNIST or Fashion-MNIST from local IDX files, gzipped or not.

    Looks in ``root``, ``root/raw`` and ``root/MNIST/raw`` (``root/FashionMNIST/raw``
    when ``fashion``), i.e. the files straight from the dataset's page or torchvision's
    layout. File names: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``
    (``t10k-...`` for the test set), each optionally with ``.gz``; an uncompressed file
    is preferred when both exist. MNIST and Fashion-MNIST use the same names, so
    ``fashion`` only changes the torchvision sub-folder searched.

    Returns:
        images: float32 (N, 1, 28, 28) (rows x cols as in the file), bytes / 255, in [0, 1].
        labels: int64 (N,).

    Raises:
        DataNotFoundError: a file is missing (the message lists the paths searched).
        DataError: wrong magic number, truncated file, image and label counts differ,
            no images, or a label outside 0-9.
    """
    root = os.fspath(root)
    sub = "FashionMNIST" if fashion else "MNIST"
    dirs = [root, os.path.join(root, "raw"), os.path.join(root, sub, "raw")]
    name = "Fashion-MNIST" if fashion else "MNIST"
    split_name = "train" if train else "test"
    images_path = _find_file(dirs, _idx_names("images", train), f"{name} {split_name} images")
    labels_path = _find_file(dirs, _idx_names("labels", train), f"{name} {split_name} labels")
    images = _read_idx(images_path, _IDX_IMAGES_MAGIC, "images")
    labels = _read_idx(labels_path, _IDX_LABELS_MAGIC, "labels")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; expected the same count"
        )
    if images.shape[0] == 0:
        raise DataError(f"{images_path}: holds no images; expected at least one")
    if labels.max() > 9:
        raise DataError(f"{labels_path}: labels must be digits 0 to 9, found {int(labels.max())}")
    images = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    labels = torch.from_numpy(labels.astype(np.int64))
    return images, labels


# CIFAR-10 (python pickle batches) ---------------------------------------------------

# Everything a CIFAR-10 batch pickle (a dict of bytes, lists and one numpy array) needs.
_PICKLE_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and builtins: a data file cannot run code."""

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _dict_get(d, key):
    """``d[b'key']`` or ``d['key']``; None when neither is there."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _read_cifar_batch(path):
    """One CIFAR-10 pickle batch as (uint8 (N, 3, 32, 32), int64 (N,)) numpy arrays."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except OSError:
        raise  # cannot read the file at all: the OS error already names the path
    except Exception as e:  # pickle raises many types on corrupt input
        raise DataError(f"{path}: not a readable CIFAR-10 pickle batch ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict with b'data' and b'labels', got {type(batch).__name__}")
    data = _dict_get(batch, "data")
    labels = _dict_get(batch, "labels")
    if data is None or labels is None:
        raise DataError(f"{path}: expected a dict with b'data' and b'labels', found keys {sorted(batch, key=repr)}")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected b'data' uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: expected {data.shape[0]} integer labels for {data.shape[0]} images, "
            f"got {labels.dtype} {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(root, train=True):
    """CIFAR-10 from the python pickle batches (``cifar-10-batches-py``).

    ``root`` is the ``cifar-10-batches-py`` folder or its parent. The training set is
    ``data_batch_1`` .. ``data_batch_5`` in order, the test set ``test_batch``. Each is a
    pickled dict with ``b'data'`` uint8 (N, 3072) (1024 red, 1024 green, 1024 blue
    values, each row-major 32 x 32) and ``b'labels'`` (N ints).

    Only numpy arrays and builtins are unpickled (a restricted ``pickle.Unpickler`` with
    ``encoding='bytes'``), so a tampered file cannot run code.

    Returns:
        images: float32 (N, 3, 32, 32), bytes / 255, in [0, 1].
        labels: int64 (N,).

    Raises:
        DataNotFoundError: a batch file is missing (the message names it).
        DataError: a batch is not a readable pickle, lacks b'data' or b'labels', or has
            the wrong shapes.
    """
    root = os.fspath(root)
    folder = os.path.join(root, "cifar-10-batches-py")
    if not os.path.isdir(folder):
        folder = root
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    all_images = []
    all_labels = []
    for name in names:
        path = _find_file([folder], [name], f"CIFAR-10 batch {name}")
        images, labels = _read_cifar_batch(path)
        all_images.append(images)
        all_labels.append(labels)
    images = np.concatenate(all_images).astype(np.float32) / 255.0
    labels = np.concatenate(all_labels)
    return torch.from_numpy(images), torch.from_numpy(labels)


# Preprocessing ----------------------------------------------------------------------


def one_hot(y, num_classes):
    """Class indices (N,) -> float32 one-hot rows (N, num_classes).

    ``out[i, y[i]] = 1``, every other entry 0. Labels outside [0, num_classes) raise
    ``ValueError``. Same values as ``torch.nn.functional.one_hot(y, num_classes).float()``.
    """
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"one_hot: expected integer class indices (N,), got {y.dtype} {tuple(y.shape)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"one_hot: num_classes must be an int >= 1, got {num_classes!r}")
    if y.numel() > 0:
        low = int(y.min())
        high = int(y.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"one_hot: labels must be in [0, {num_classes}), got values from {low} to {high}"
            )
    out = torch.zeros(y.shape[0], num_classes, dtype=torch.float32, device=y.device)
    out[torch.arange(y.shape[0], device=y.device), y] = 1.0
    return out


def standardize(train, *others):
    """Standardizes ``train`` and every tensor in ``others`` with the statistics of ``train``.

    Per feature (every position after dim 0, e.g. per pixel for images):
    ``mean = train.mean(0)``, ``std = train.std(0, unbiased=False)`` (population std, as
    scikit-learn's StandardScaler), and a feature whose std is 0 keeps std = 1 (it is
    only centred). Each tensor ``t`` becomes ``(t - mean) / std``; ``others`` (validation,
    test) never influence the statistics. Integer inputs are converted to float32.

    Returns:
        a tuple ``(train_standardized, *others_standardized)``, always a tuple, even with
        no ``others``.
    """
    train = _as_float(train, "train")
    if train.dim() == 0 or train.shape[0] == 0:
        raise ValueError(f"standardize: train needs at least one sample, got shape {tuple(train.shape)}")
    mean = train.mean(dim=0)
    std = train.std(dim=0, unbiased=False)
    std = torch.where(std == 0, torch.ones_like(std), std)
    results = [(train - mean) / std]
    for k, other in enumerate(others):
        other = _as_float(other, f"others[{k}]")
        if other.shape[1:] != train.shape[1:]:
            raise ValueError(
                f"standardize: others[{k}] has feature shape {tuple(other.shape[1:])}, "
                f"train has {tuple(train.shape[1:])}"
            )
        results.append((other - mean) / std)
    return tuple(results)


def _as_float(t, name):
    t = torch.as_tensor(t)
    if not t.dtype.is_floating_point:
        t = t.to(torch.float32)
    return t


def split(x, y, fraction, seed):
    """Splits ``(x, y)`` at random into two disjoint parts, reproducibly.

    A permutation drawn from a private ``torch.Generator`` seeded with ``seed`` (the
    global RNG is untouched) orders the samples; the first
    ``n_a = round(fraction * N)`` go to part a, the rest to part b.

    Args:
        x, y: tensors with the same first dimension N.
        fraction: share of the samples in the first part, strictly between 0 and 1.
        seed: int; the same seed gives the same split.

    Returns:
        ``(x_a, y_a, x_b, y_b)``.

    Raises:
        ValueError: fraction not in (0, 1), mismatched N, or a part that would be empty.
    """
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if not 0 < fraction < 1:
        raise ValueError(f"split: fraction must be in (0, 1), got {fraction!r}")
    if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"split: x and y must have the same first dimension, got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    n = x.shape[0]
    n_a = int(round(fraction * n))
    if n_a == 0 or n_a == n:
        raise ValueError(
            f"split: fraction {fraction} of {n} samples leaves a part empty ({n_a} and {n - n_a})"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    idx_a = order[:n_a]
    idx_b = order[n_a:]
    return x[idx_a.to(x.device)], y[idx_a.to(y.device)], x[idx_b.to(x.device)], y[idx_b.to(y.device)]


# Datasets made from others ------------------------------------------------------------


def permute_pixels(images, seed):
    """Permuted-MNIST: every image's pixels reordered by one fixed permutation.

    The permutation of the H*W pixel positions is drawn from a private generator
    seeded with ``seed`` (the global RNG is untouched), so the same seed gives the same
    permutation for any number of images (the training and test sets alike); every
    channel of every image is permuted the same way. ``(N, D)`` feature rows have their
    D features permuted.

    Args:
        images: (N, C, H, W), (N, H, W) or (N, D).
        seed: int.

    Returns:
        a new tensor of the same shape and dtype.
    """
    images = torch.as_tensor(images)
    if images.dim() not in (2, 3, 4):
        raise ValueError(f"permute_pixels: expected images (N, C, H, W), (N, H, W) or (N, D), got {tuple(images.shape)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"permute_pixels: seed must be an int, got {seed!r}")
    start = 1 if images.dim() == 2 else images.dim() - 2
    pixels = images.flatten(start_dim=start)
    order = torch.randperm(pixels.shape[-1], generator=torch.Generator().manual_seed(seed))
    return pixels[..., order.to(images.device)].reshape(images.shape)


def multi_digit(images, labels, num_samples=None, shift=None, seed=0):
    """MultiMNIST-style two-digit images (Sener and Koltun's layout): two images drawn at
    random, one placed at the top-left and one at the bottom-right of a canvas
    ``shift`` pixels larger in each direction, overlapping in the middle (the brighter
    pixel wins), labelled with both classes.

    Build the training and test composites from the training and test images
    separately, so that no digit image appears on both sides.

    Args:
        images: (N, C, H, W) in [0, 1], e.g. ``load_digits()``'s.
        labels: int64 (N,).
        num_samples: composites to make (default N).
        shift: how far the second image is moved right and down (default H // 2, so
            the two overlap on a quarter of each).
        seed: the pairs are drawn from a private generator seeded with it.

    Returns:
        images: (num_samples, C, H + shift, W + shift).
        labels: int64 (num_samples, 2): column 0 the top-left image's class, column 1
            the bottom-right one's (the (N, T) targets ``MultiTaskLoss`` takes).
    """
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels)
    if images.dim() != 4 or labels.shape != (images.shape[0],) or images.shape[0] == 0:
        raise ValueError(
            f"multi_digit: expected images (N, C, H, W) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    count, channels, height, width = images.shape
    num_samples = count if num_samples is None else num_samples
    shift = height // 2 if shift is None else shift
    for name, value, low in (("num_samples", num_samples, 1), ("shift", shift, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"multi_digit: {name} must be an int >= {low}, got {value!r}")
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(0, count, (num_samples,), generator=generator)
    second = torch.randint(0, count, (num_samples,), generator=generator)
    canvas = (num_samples, channels, height + shift, width + shift)
    top_left = images.new_zeros(canvas)
    top_left[:, :, :height, :width] = images[first.to(images.device)]
    bottom_right = images.new_zeros(canvas)
    bottom_right[:, :, shift:, shift:] = images[second.to(images.device)]
    pairs = torch.stack([labels[first.to(labels.device)], labels[second.to(labels.device)]], dim=1)
    return torch.maximum(top_left, bottom_right), pairs.to(torch.int64)


# Named train/test splits -------------------------------------------------------------


class Dataset(NamedTuple):
    """A named train/test split: ``load(root, seed)`` returns ``(x_train, y_train, x_test,
    y_test)``; ``sample_shape`` is one sample's shape ((C, H, W) for images);
    ``needs_root``: its files are the user's, read from the folder ``root``."""

    load: Callable
    sample_shape: tuple
    needs_root: bool


def _digits_split(root, seed):
    images, labels = load_digits()
    return split(images, labels, 0.8, seed)


def _diabetes_split(root, seed):
    features, targets = load_diabetes()
    return split(features, targets, 0.8, seed)


MULTI_DIGIT_SAMPLES = {"train": 5000, "test": 1000}


def _multi_digit_split(root, seed):
    """The bundled digits split 80/20 with ``seed`` first, so that no digit image is on
    both sides, then each side paired by ``multi_digit``."""
    images, labels = load_digits()
    train_images, train_labels, test_images, test_labels = split(images, labels, 0.8, seed)
    x_train, y_train = multi_digit(train_images, train_labels, MULTI_DIGIT_SAMPLES["train"], seed=seed)
    x_test, y_test = multi_digit(test_images, test_labels, MULTI_DIGIT_SAMPLES["test"], seed=(seed + 1) % 2**64)
    return x_train, y_train, x_test, y_test


def _mnist_split(fashion):
    def load(root, seed):
        return (*load_mnist(root, fashion=fashion, train=True), *load_mnist(root, fashion=fashion, train=False))

    return load


def _cifar10_split(root, seed):
    return (*load_cifar10(root, train=True), *load_cifar10(root, train=False))


DATASETS = {
    "digits": Dataset(_digits_split, (1, 8, 8), needs_root=False),
    "diabetes": Dataset(_diabetes_split, (10,), needs_root=False),
    "multi-digits": Dataset(_multi_digit_split, (1, 12, 12), needs_root=False),
    "mnist": Dataset(_mnist_split(fashion=False), (1, 28, 28), needs_root=True),
    "fashion-mnist": Dataset(_mnist_split(fashion=True), (1, 28, 28), needs_root=True),
    "cifar10": Dataset(_cifar10_split, (3, 32, 32), needs_root=True),
}


def load_split(name, root=None, seed=0):
    """``(x_train, y_train, x_test, y_test)`` of the data set ``name`` (a key of
    ``DATASETS``) as its files hold it (images in [0, 1]). The bundled sets are split
    80/20 with ``seed`` (the split of the digits also decides which digits the two-digit
    images are made of); the others come with their own split, read from ``root``."""
    if name not in DATASETS:
        raise ValueError(f"load_split: unknown data set {name!r}; expected one of {list(DATASETS)}")
    dataset = DATASETS[name]
    if dataset.needs_root and root is None:
        raise DataError(f"load_split: {name} needs root, the folder that holds its files")
    return dataset.load(root, seed)


# The user's own data -----------------------------------------------------------------

DATA_FILE_EXTENSIONS = (".npz", ".csv")
MAX_CLASSES = 100


class OwnData(NamedTuple):
    """A data file split 80/20 for training: ``y`` holds class indices (int64 (N,), the
    ``classes`` in sorted order) for a classification, targets (float32 (N, 1)) for a
    regression (``classes`` None)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: str
    classes: Optional[list]


def is_data_file(name):
    """Whether ``name`` is meant as a data file (ends in .npz or .csv), not a data set's name."""
    return os.path.splitext(str(name))[1].lower() in DATA_FILE_EXTENSIONS


def read_data_file(path):
    """``(x, labels)`` of a data file: ``x`` float32 (N, ...), ``labels`` a 1-d numpy array
    (numbers, or strings for a CSV label column that is not all numbers).

    ``.npz``: the arrays ``x`` (N, ...) and ``y`` (N,) or (N, 1). ``.csv``: one sample a
    row, the features, then the label in the last column; a first row whose features are
    not all numbers is a header. Raises ``DataError`` naming the file and the problem:
    another extension, an unreadable or empty file, a missing array, ragged rows, a
    feature that is not a finite number, a label that is NaN or infinite."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in DATA_FILE_EXTENSIONS:
        raise DataError(f"{path}: expected a .npz file (arrays x and y) or a .csv file (features, then the label)")
    if not os.path.isfile(path):
        raise DataNotFoundError(f"{path}: no such file")
    x, labels = _read_npz(path) if extension == ".npz" else _read_csv(path)
    if len(x) == 0:
        raise DataError(f"{path}: holds no samples")
    if not torch.isfinite(x).all():
        row = int((~torch.isfinite(x)).flatten(1).any(1).nonzero()[0])
        raise DataError(f"{path}: sample {row} has a feature that is NaN or infinite")
    if labels.dtype.kind in "fc" and not np.isfinite(labels).all():
        row = int(np.flatnonzero(~np.isfinite(labels))[0])
        raise DataError(f"{path}: the label of sample {row} is {labels[row]}, not a finite number")
    return x, labels


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [name for name in ("x", "y") if name not in arrays.files]
            if missing:
                raise DataError(f"{path}: has no array {' or '.join(missing)} (it holds {arrays.files}); expected x (N, ...) and y (N,)")
            x, y = arrays["x"], arrays["y"]
    except (OSError, ValueError, zlib.error, EOFError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz archive of plain arrays ({error})") from None
    if x.dtype.kind not in "biuf" or x.ndim < 2:
        raise DataError(f"{path}: x must be numbers of shape (N, features...), got {x.dtype} of shape {x.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "biufU":
        raise DataError(f"{path}: y must be {x.shape[0]} numbers or strings, one per sample of x (N,), got {y.dtype} of shape {y.shape}")
    return torch.from_numpy(x.astype(np.float32)), y


def _read_csv(path):
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = [(number, row) for number, row in enumerate(csv.reader(file), 1) if any(field.strip() for field in row)]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a CSV text file ({error})") from None
    if not rows:
        raise DataError(f"{path}: is empty; expected one sample a row: features, then the label")
    width = len(rows[0][1])
    if width < 2:
        raise DataError(f"{path}: line {rows[0][0]} has {width} column; expected features, then the label (2 columns or more)")
    if not any(_is_number(field) for field in rows[0][1][:-1]):
        rows = rows[1:]  # a header: names, not numbers
    features = []
    for number, row in rows:
        if len(row) != width:
            raise DataError(f"{path}: line {number} has {len(row)} columns, the first line {width}")
        for column, field in enumerate(row[:-1], 1):
            if not (_is_number(field) and math.isfinite(float(field))):
                raise DataError(f"{path}: line {number}, column {column}: {field.strip()!r} is not a finite number")
        features.append([float(field) for field in row[:-1]])
    labels = [row[-1].strip() for _, row in rows]
    numeric = all(_is_number(label) for label in labels)
    labels = np.array([float(label) for label in labels] if numeric else labels)
    return torch.tensor(features, dtype=torch.float32).reshape(len(rows), width - 1), labels


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def infer_task(labels):
    """'classification' for strings, booleans or integers (whole numbers) with at most
    ``MAX_CLASSES`` distinct values, else 'regression'."""
    if labels.dtype.kind in "bU":
        return "classification"
    whole = labels.dtype.kind in "iu" or bool(np.all(labels == np.round(labels)))
    return "classification" if whole and len(np.unique(labels)) <= MAX_CLASSES else "regression"


def encode_labels(labels, task, source):
    """``(y, classes)`` for ``task``: class indices into the sorted distinct labels, or
    float32 targets (N, 1) for a regression; ``DataError`` naming ``source`` when the
    labels cannot be the task's (strings as targets, fractions as classes)."""
    if task == "regression":
        if labels.dtype.kind == "U":
            raise DataError(f"{source}: the labels are strings ({labels[0].item()!r}, ...); a regression needs numbers")
        return torch.from_numpy(labels.astype(np.float32)).unsqueeze(1), None
    if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        raise DataError(f"{source}: the labels are fractions ({labels[labels != np.round(labels)][0].item()}, ...); classes must be whole numbers or strings")
    classes, indices = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{source}: every label is {labels[0].item()!r}; a classification needs 2 classes or more")
    classes = [label.item() if labels.dtype.kind == "U" else _whole(label) for label in classes]
    return torch.from_numpy(indices.reshape(-1).astype(np.int64)), classes


def _whole(number):
    return bool(number) if isinstance(number, np.bool_) else int(number)


def load_data_file(path, seed=0, task=None):
    """The data file ``path`` (``read_data_file``) as an ``OwnData``: its task (``task``,
    'classification' or 'regression', else ``infer_task``'s) and an 80/20 split drawn with
    ``seed`` (``split``)."""
    if task not in (None, "classification", "regression"):
        raise ValueError(f"load_data_file: task must be 'classification', 'regression' or None, got {task!r}")
    x, labels = read_data_file(path)
    task = infer_task(labels) if task is None else task
    y, classes = encode_labels(labels, task, path)
    if len(x) < 3:
        raise DataError(f"{path}: holds {len(x)} samples; an 80/20 training/test split needs 3 or more")
    return OwnData(*split(x, y, 0.8, seed), task, classes)
