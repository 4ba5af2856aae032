"""nnlab.data: Batches, the loaders on files written here, and the preprocessing helpers."""

import gzip
import os
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nnlab.data import (
    Batches,
    DataError,
    DataNotFoundError,
    load_cifar10,
    load_diabetes,
    load_digits,
    load_mnist,
    load_split,
    load_moons,
    multi_digit,
    one_hot,
    permute_pixels,
    rotated_moons,
    split,
    standardize,
)

# Writers: the file formats built by hand with struct, independently of the loaders ----


def write_idx_images(path, images, gz=False, magic=0x00000803):
    """IDX3: '>I' magic, '>I' count, rows, cols, then uint8 pixels."""
    n, rows, cols = images.shape
    data = struct.pack(">IIII", magic, n, rows, cols) + images.astype(np.uint8).tobytes()
    _write(path, data, gz)


def write_idx_labels(path, labels, gz=False, magic=0x00000801):
    data = struct.pack(">II", magic, len(labels)) + bytes(int(v) for v in labels)
    _write(path, data, gz)


def _write(path, data, gz):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def random_mnist(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0] = 0
    images[0, 0, 1] = 255
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def write_mnist(folder, images, labels, prefix="train", gz=False):
    suffix = ".gz" if gz else ""
    write_idx_images(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), images, gz)
    write_idx_labels(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, gz)


def check_mnist(loaded, images, labels):
    x, y = loaded
    assert x.dtype == torch.float32 and x.shape == (len(labels), 1, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (len(labels),)
    for i in range(len(labels)):
        for r, c in [(0, 0), (0, 1), (13, 7), (27, 27)]:
            assert x[i, 0, r, c].item() == pytest.approx(images[i, r, c] / 255.0, abs=1e-7)
        assert y[i].item() == labels[i]
    assert x.min() >= 0 and x.max() <= 1
    np.testing.assert_allclose(x[:, 0].numpy(), images / 255.0, rtol=0, atol=1e-7)


# MNIST -------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("layout", ["root", "root/raw", "torchvision"])
def test_load_mnist_layouts(tmp_path, gz, layout):
    images, labels = random_mnist(5, seed=0)
    folder = {"root": tmp_path, "root/raw": tmp_path / "raw", "torchvision": tmp_path / "MNIST" / "raw"}[layout]
    write_mnist(str(folder), images, labels, gz=gz)
    check_mnist(load_mnist(tmp_path), images, labels)


def test_load_mnist_test_split_and_fashion(tmp_path):
    train_images, train_labels = random_mnist(4, seed=1)
    test_images, test_labels = random_mnist(3, seed=2)
    folder = str(tmp_path / "FashionMNIST" / "raw")
    write_mnist(folder, train_images, train_labels, "train", gz=True)
    write_mnist(folder, test_images, test_labels, "t10k", gz=True)
    check_mnist(load_mnist(tmp_path, fashion=True, train=True), train_images, train_labels)
    check_mnist(load_mnist(tmp_path, fashion=True, train=False), test_images, test_labels)
    with pytest.raises(DataNotFoundError):
        load_mnist(tmp_path, fashion=False)  # MNIST/raw does not exist


def test_load_mnist_prefers_uncompressed(tmp_path):
    images, labels = random_mnist(2, seed=3)
    write_mnist(str(tmp_path), images, labels, gz=False)
    with open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"not gzip")
    with open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"not gzip")
    check_mnist(load_mnist(tmp_path), images, labels)


def test_load_mnist_missing_file_lists_paths(tmp_path):
    images, labels = random_mnist(2, seed=4)
    write_idx_images(str(tmp_path / "train-images-idx3-ubyte"), images)
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path)
    assert isinstance(info.value, DataError)
    message = str(info.value)
    assert "labels" in message
    assert str(tmp_path / "train-labels-idx1-ubyte") in message
    assert str(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz") in message


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_load_mnist_truncated(tmp_path, gz):
    images, labels = random_mnist(3, seed=5)
    write_mnist(str(tmp_path), images, labels, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    whole = struct.pack(">IIII", 0x803, 3, 28, 28) + images.tobytes()
    _write(str(path), whole[:-10], gz)
    with pytest.raises(DataError, match="truncated") as info:
        load_mnist(tmp_path)
    assert str(path) in str(info.value)


def test_load_mnist_truncated_header(tmp_path):
    images, labels = random_mnist(2, seed=6)
    write_mnist(str(tmp_path), images, labels)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="truncated") as info:
        load_mnist(tmp_path)
    assert str(path) in str(info.value)


def test_load_mnist_cut_gzip_stream(tmp_path):
    images, labels = random_mnist(3, seed=7)
    write_mnist(str(tmp_path), images, labels, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path)
    assert str(path) in str(info.value)


def test_load_mnist_not_gzip(tmp_path):
    images, labels = random_mnist(3, seed=8)
    write_mnist(str(tmp_path), images, labels, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(b"this is not a gzip file at all")
    with pytest.raises(DataError, match="gzip") as info:
        load_mnist(tmp_path)
    assert str(path) in str(info.value)


def test_load_mnist_wrong_magic(tmp_path):
    images, labels = random_mnist(3, seed=9)
    write_mnist(str(tmp_path), images, labels)
    # labels where images belong: a labels magic number in the images file
    write_idx_images(str(tmp_path / "train-images-idx3-ubyte"), images, magic=0x00000801)
    with pytest.raises(DataError, match="magic") as info:
        load_mnist(tmp_path)
    assert str(tmp_path / "train-images-idx3-ubyte") in str(info.value)
    assert "0x00000803" in str(info.value)


def test_load_mnist_count_mismatch(tmp_path):
    images, labels = random_mnist(4, seed=10)
    write_mnist(str(tmp_path), images, labels[:3])
    with pytest.raises(DataError, match="4 images.*3 labels"):
        load_mnist(tmp_path)


def test_load_mnist_too_long(tmp_path):
    images, labels = random_mnist(2, seed=11)
    write_mnist(str(tmp_path), images, labels)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x01")
    with pytest.raises(DataError, match="too long"):
        load_mnist(tmp_path)



def test_load_mnist_rejects_labels_outside_0_to_9(tmp_path):
    images, labels = random_mnist(3, seed=12)
    labels[1] = 10
    write_mnist(str(tmp_path), images, labels)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*0 to 9.*10"):
        load_mnist(tmp_path)


def test_load_mnist_rejects_a_file_without_images(tmp_path):
    images, labels = random_mnist(1, seed=13)
    write_mnist(str(tmp_path), images[:0], labels[:0])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*no images"):
        load_mnist(tmp_path)

# CIFAR-10 ----------------------------------------------------------------------------


def random_cifar(n, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    return data, labels


def write_cifar_batch(path, data, labels, protocol=2):
    batch = {b"batch_label": b"test", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * len(labels)}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def write_cifar(folder, n_per_batch=2, seed=0):
    os.makedirs(folder, exist_ok=True)
    written = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data, labels = random_cifar(n_per_batch, seed + k)
        write_cifar_batch(os.path.join(folder, name), data, labels, protocol=2 if k % 2 else 5)
        written[name] = (data, labels)
    return written


def check_cifar(loaded, data, labels):
    x, y = loaded
    n = len(labels)
    assert x.dtype == torch.float32 and x.shape == (n, 3, 32, 32)
    assert y.dtype == torch.int64 and y.tolist() == labels
    for i in range(n):
        # data row: 1024 red, 1024 green, 1024 blue, each row-major 32 x 32
        for channel, r, c in [(0, 0, 0), (1, 5, 31), (2, 31, 0), (2, 31, 31)]:
            expected = data[i, channel * 1024 + r * 32 + c] / 255.0
            assert x[i, channel, r, c].item() == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("give_parent", [True, False], ids=["parent", "folder"])
def test_load_cifar10(tmp_path, give_parent):
    folder = tmp_path / "cifar-10-batches-py"
    written = write_cifar(str(folder))
    root = tmp_path if give_parent else folder
    train_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    check_cifar(load_cifar10(root, train=True), train_data, train_labels)
    check_cifar(load_cifar10(root, train=False), *written["test_batch"])


def test_load_cifar10_numpy1_pickle(tmp_path):
    """The real files name numpy.core.multiarray (numpy 1); they load without warnings."""
    write_cifar(str(tmp_path))
    data, labels = random_cifar(3, seed=20)
    raw = pickle.dumps({b"data": data, b"labels": labels}, protocol=2)
    raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in raw
    (tmp_path / "test_batch").write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_cifar(load_cifar10(tmp_path, train=False), data, labels)


def test_load_cifar10_missing_batch(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(str(folder))
    os.remove(folder / "data_batch_3")
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10(tmp_path)
    assert str(folder / "data_batch_3") in str(info.value)
    load_cifar10(tmp_path, train=False)  # the test batch is still there


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage that is not a pickle", None],
    ids=["empty", "garbage", "cut"],
)
def test_load_cifar10_corrupt_pickle(tmp_path, content):
    write_cifar(str(tmp_path))
    path = tmp_path / "test_batch"
    if content is None:
        content = path.read_bytes()[:100]
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path, train=False)
    assert str(path) in str(info.value)


def test_load_cifar10_missing_key(tmp_path):
    write_cifar(str(tmp_path))
    path = tmp_path / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, f)
    with pytest.raises(DataError, match="labels") as info:
        load_cifar10(tmp_path, train=False)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "batch",
    [
        [1, 2, 3],
        {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]},
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]},
        {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
    ],
    ids=["not-dict", "wrong-width", "label-count", "wrong-dtype"],
)
def test_load_cifar10_wrong_contents(tmp_path, batch):
    write_cifar(str(tmp_path))
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(tmp_path, train=False)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_load_cifar10_refuses_code_in_pickle(tmp_path):
    write_cifar(str(tmp_path))
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f)
    with pytest.raises(DataError, match="refusing"):
        load_cifar10(tmp_path, train=False)


# Bundled data ------------------------------------------------------------------------


def test_load_digits():
    import sklearn.datasets

    x, y = load_digits()
    reference = sklearn.datasets.load_digits()
    assert x.dtype == torch.float32 and x.shape == (1797, 1, 8, 8)
    assert y.dtype == torch.int64 and y.shape == (1797,)
    assert x.min() == 0 and x.max() == 1
    np.testing.assert_allclose(x[:, 0].numpy(), reference.images / 16.0, rtol=0, atol=1e-7)
    assert y.tolist() == reference.target.tolist()


def test_load_digits_through_sklearn_when_its_file_is_elsewhere(monkeypatch):
    import importlib.util

    direct = load_digits()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    through_sklearn = load_digits()
    assert torch.equal(direct[0], through_sklearn[0]) and torch.equal(direct[1], through_sklearn[1])


def test_load_moons():
    x, y = load_moons(50, noise=0.1, seed=3)
    assert x.dtype == torch.float32 and x.shape == (50, 2)
    assert y.dtype == torch.int64 and sorted(set(y.tolist())) == [0, 1]
    assert torch.equal(x, load_moons(50, noise=0.1, seed=3)[0])
    assert not torch.equal(x, load_moons(50, noise=0.1, seed=4)[0])
    clean, labels = load_moons(40, noise=0.0)
    # without noise the upper moon is the unit half circle around the origin
    upper = clean[labels == 0].double()
    np.testing.assert_allclose(upper.norm(dim=1).numpy(), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="n must be"):
        load_moons(0, noise=0.1)
    with pytest.raises(ValueError, match="noise"):
        load_moons(10, noise=-1.0)


def test_load_diabetes():
    import sklearn.datasets

    x, y = load_diabetes()
    reference = sklearn.datasets.load_diabetes(scaled=False)
    assert x.dtype == torch.float32 and x.shape == (442, 10)
    assert y.dtype == torch.float32 and y.shape == (442, 1)  # as a one-output model's predictions
    np.testing.assert_allclose(x.numpy(), reference.data, rtol=1e-6)
    assert y[:, 0].tolist() == reference.target.tolist()
    assert (y.min().item(), y.max().item()) == (25.0, 346.0)


# Datasets made from others ----------------------------------------------------------


def test_permute_pixels_applies_one_permutation_to_every_image_and_channel():
    images = torch.rand(5, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    rng_before = torch.get_rng_state()
    permuted = permute_pixels(images, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is untouched
    assert permuted.shape == images.shape and permuted.dtype == images.dtype
    # The permutation, read off an image whose pixels are their own positions.
    positions = torch.arange(24.0).reshape(1, 1, 4, 6)
    order = permute_pixels(positions, seed=7).flatten().long()
    assert sorted(order.tolist()) == list(range(24)) and order.tolist() != list(range(24))
    for n in range(5):
        for c in range(3):
            assert torch.equal(permuted[n, c].flatten(), images[n, c].flatten()[order])
    assert torch.equal(permute_pixels(images[2:3], seed=7), permuted[2:3])  # the same for any N
    assert not torch.equal(permute_pixels(images, seed=8), permuted)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(24)
    assert torch.equal(permuted.flatten(2)[..., inverse].reshape(images.shape), images)


def test_permute_pixels_other_shapes_and_errors():
    rows = torch.arange(12.0).reshape(2, 6)
    permuted = permute_pixels(rows, seed=1)
    assert torch.equal(permuted[1] - permuted[0], torch.full((6,), 6.0))  # one order for both rows
    assert permute_pixels(torch.zeros(3, 5, 5), seed=1).shape == (3, 5, 5)
    with pytest.raises(ValueError, match="permute_pixels"):
        permute_pixels(torch.zeros(5), seed=1)
    with pytest.raises(ValueError, match="seed"):
        permute_pixels(rows, seed=1.5)


def test_multi_digit_places_two_images_and_labels_both():
    # Image k is constant (k + 1) / 10 with label k: every canvas pixel says which image it came from.
    images = (torch.arange(1.0, 6.0) / 10).reshape(5, 1, 1, 1).expand(5, 1, 2, 2).contiguous()
    labels = torch.arange(5)
    composites, pairs = multi_digit(images, labels, num_samples=40, shift=1, seed=3)
    assert composites.shape == (40, 1, 3, 3) and pairs.shape == (40, 2) and pairs.dtype == torch.int64
    assert len(set(map(tuple, pairs.tolist()))) > 10
    for image, (first, second) in zip(composites[:, 0], pairs.tolist()):
        a, b = (first + 1) / 10, (second + 1) / 10
        expected = torch.tensor([[a, a, 0.0], [a, max(a, b), b], [0.0, b, b]])
        assert torch.equal(image, expected)
    again, again_pairs = multi_digit(images, labels, num_samples=40, shift=1, seed=3)
    assert torch.equal(again, composites) and torch.equal(again_pairs, pairs)


def test_multi_digit_defaults_on_the_digits_and_errors():
    images, labels = load_digits()
    composites, pairs = multi_digit(images[:100], labels[:100])
    assert composites.shape == (100, 1, 12, 12)  # shifted by half the height
    assert composites.min() >= 0 and composites.max() <= 1
    assert set(pairs.flatten().tolist()) <= set(labels[:100].tolist())
    with pytest.raises(ValueError, match="multi_digit"):
        multi_digit(images[:, 0], labels)
    with pytest.raises(ValueError, match="multi_digit"):
        multi_digit(images, labels[:10])
    with pytest.raises(ValueError, match="num_samples"):
        multi_digit(images, labels, num_samples=0)
    with pytest.raises(ValueError, match="shift"):
        multi_digit(images, labels, shift=-1)


def rotate_by_complex_product(points, degrees):
    """Counter-clockwise rotation as (x + iy) * e^(i angle): an independent formula."""
    z = (points[:, 0] + 1j * points[:, 1]) * np.exp(1j * np.deg2rad(degrees))
    return np.stack([z.real, z.imag], axis=1)


def test_rotated_moons_are_the_assignments_points():
    """The notebook: np.random.seed(42), three make_moons calls on the global RNG, the
    first 80% split by train_test_split(test_size=1/3, shuffle=False)."""
    import sklearn.datasets
    import sklearn.model_selection

    saved = np.random.get_state()
    try:
        np.random.seed(42)
        x1, y1 = sklearn.datasets.make_moons(n_samples=4000, noise=0.2)
        x2, y2 = sklearn.datasets.make_moons(n_samples=4000, noise=0.25)
        x3, y3 = sklearn.datasets.make_moons(n_samples=2000, noise=0.3)
    finally:
        np.random.set_state(saved)
    x = np.concatenate([rotate_by_complex_product(x1, 10), rotate_by_complex_product(x2, 50)])
    y = np.concatenate([y1, y2])
    x_train, x_valid, y_train, y_valid = sklearn.model_selection.train_test_split(x, y, test_size=1 / 3, shuffle=False)
    expected = [x_train, y_train, x_valid, y_valid, rotate_by_complex_product(x3, 40), y3]

    actual = rotated_moons()

    assert [tuple(t.shape) for t in actual] == [(5333, 2), (5333,), (2667, 2), (2667,), (2000, 2), (2000,)]
    assert [t.dtype for t in actual] == [torch.float32, torch.int64] * 3
    for name, got, want in zip(["x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test"], actual, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6, err_msg=name)


def test_rotated_moons_is_deterministic_for_a_seed_and_scales_with_n():
    first = rotated_moons(n=500, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, rotated_moons(n=500, seed=3)))
    assert not torch.equal(first[0], rotated_moons(n=500, seed=4)[0])
    # n_fit = 400: 200 + 200 mixed, validation ceil(400 / 3) = 134; test 100.
    assert [len(t) for t in first] == [266, 266, 134, 134, 100, 100]
    with pytest.raises(ValueError, match="rotated_moons: n must be an int >= 10, got 5"):
        rotated_moons(n=5)


def moon_facts(points, labels, degrees):
    """Rotated back by ``degrees``: (radial noise around the moons' unit circles, centred
    at (0, 0) for the upper moon and (1, 1/2) for the lower, and direction in degrees
    from the upper moon's mean to the lower moon's)."""
    unrotated = rotate_by_complex_product(points.double().numpy(), -degrees)
    labels = labels.numpy()
    upper = unrotated[labels == 0]
    lower = unrotated[labels == 1]
    radii = np.concatenate([np.linalg.norm(upper, axis=1), np.linalg.norm(lower - [1.0, 0.5], axis=1)])
    radial_noise = radii.std()
    between = lower.mean(axis=0) - upper.mean(axis=0)
    return radial_noise, np.degrees(np.arctan2(between[1], between[0]))


def moons_radial_noise(noise):
    """moon_facts' radial noise of many unrotated moons with this noise (below ``noise``:
    the spread of a distance is not quite that of the points)."""
    import sklearn.datasets

    points, labels = sklearn.datasets.make_moons(n_samples=20_000, noise=noise, random_state=0)
    return moon_facts(torch.from_numpy(points), torch.from_numpy(labels), 0)[0]


# Noise-free moons: the upper moon's mean is (0, 2/pi), the lower's (1, 1/2 - 2/pi).
MOONS_DIRECTION = np.degrees(np.arctan2(0.5 - 4 / np.pi, 1.0))


@pytest.mark.parametrize(
    "part, rows, noise, degrees",
    [
        ("train", slice(0, 4000), 0.2, 10),  # every 10-degree point comes first
        ("train", slice(4000, None), 0.25, 50),  # then the first 50-degree ones
        ("valid", slice(None), 0.25, 50),  # the mixture's last third: only 50 degrees
        ("test", slice(None), 0.3, 40),
    ],
)
def test_rotated_moons_parts_have_their_noise_and_rotation(part, rows, noise, degrees):
    x_train, y_train, x_valid, y_valid, x_test, y_test = rotated_moons()
    points, labels = {"train": (x_train, y_train), "valid": (x_valid, y_valid), "test": (x_test, y_test)}[part]
    points, labels = points[rows], labels[rows]
    radial_noise, direction = moon_facts(points, labels, degrees)
    assert abs(radial_noise - moons_radial_noise(noise)) < 0.02  # the noise levels are 0.05 apart
    assert abs(direction - MOONS_DIRECTION) < 2.0
    _, direction_if_unrotated = moon_facts(points, labels, 0)
    assert abs(direction_if_unrotated - MOONS_DIRECTION - degrees) < 2.0
    assert abs(labels.double().mean().item() - 0.5) < 0.02


# Batches -----------------------------------------------------------------------------


def make_data(n, features=3):
    x = torch.arange(n * features, dtype=torch.float32).reshape(n, features)
    y = torch.arange(n)
    return x, y


def test_batches_len_and_indexing():
    x, y = make_data(10)
    batches = Batches(x, y, batch_size=4)
    assert len(batches) == 3
    assert batches.batch_size == 4 and batches.num_samples == 10
    assert batches.samples is x and batches.labels is y
    bx, by = batches[0]
    assert torch.equal(bx, x[0:4]) and torch.equal(by, y[0:4])
    bx, by = batches[2]
    assert bx.shape == (2, 3) and torch.equal(by, torch.tensor([8, 9]))
    assert torch.equal(batches[-1][1], batches[2][1])
    assert torch.equal(batches[-3][1], batches[0][1])
    assert torch.equal(batches[np.int64(1)][1], torch.tensor([4, 5, 6, 7]))
    with pytest.raises(IndexError):
        batches[3]
    with pytest.raises(IndexError):
        batches[-4]
    with pytest.raises(TypeError):
        batches[0.5]
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert "batch_size=4" in repr(batches)


def test_batches_exact_multiple_and_oversized_batch():
    x, y = make_data(8)
    assert len(Batches(x, y, 4)) == 2
    big = Batches(x, y, 100)
    assert len(big) == 1 and torch.equal(big[0][1], y)


def test_batches_validation():
    x, y = make_data(5)
    with pytest.raises(ValueError, match="5 samples and 4 labels"):
        Batches(x, y[:4], 2)
    for bad in [0, -1, 2.5, True]:
        with pytest.raises(ValueError, match="batch_size") as info:
            Batches(x, y, bad)
        assert repr(bad) in str(info.value)


def test_batches_shuffle_reproducible_and_deterministic_index():
    x, y = make_data(20)
    a = Batches(x, y, 6)
    b = Batches(x, y, 6)
    torch.manual_seed(0)
    a.shuffle()
    torch.manual_seed(0)
    b.shuffle()
    order_a = torch.cat([a[i][1] for i in range(len(a))])
    order_b = torch.cat([b[i][1] for i in range(len(b))])
    assert torch.equal(order_a, order_b)
    assert not torch.equal(order_a, y)  # 20! orders: the identity is no real risk
    assert torch.equal(a[1][1], a[1][1])  # indexing does not reshuffle
    # samples stay paired with their labels
    for bx, by in a:
        assert torch.equal(bx, x[by])
    torch.manual_seed(0)
    assert torch.equal(torch.randperm(20), order_a)  # drawn from the global RNG


def test_batches_shuffle_true_reshuffles_each_epoch():
    x, y = make_data(30)
    batches = Batches(x, y, 7, shuffle=True)
    torch.manual_seed(1)
    epoch1 = torch.cat([by for _, by in batches])
    epoch2 = torch.cat([by for _, by in batches])
    assert sorted(epoch1.tolist()) == list(range(30))
    assert sorted(epoch2.tolist()) == list(range(30))
    assert not torch.equal(epoch1, epoch2)
    torch.manual_seed(1)
    assert torch.equal(torch.cat([by for _, by in batches]), epoch1)
    not_shuffled = Batches(x, y, 7)
    assert torch.equal(torch.cat([by for _, by in not_shuffled]), y)


@given(
    n=st.integers(min_value=0, max_value=60),
    batch_size=st.integers(min_value=1, max_value=70),
    shuffle=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_batches_every_sample_once(n, batch_size, shuffle, seed):
    torch.manual_seed(seed)
    x, y = make_data(n, features=2)
    batches = Batches(x, y, batch_size, shuffle=shuffle)
    expected_len = -(-n // batch_size)
    assert len(batches) == expected_len
    seen = []
    sizes = []
    for bx, by in batches:
        assert torch.equal(bx, x[by])
        seen.extend(by.tolist())
        sizes.append(len(by))
    assert sorted(seen) == list(range(n))
    assert len(sizes) == expected_len
    assert all(size == batch_size for size in sizes[:-1])
    if sizes:
        assert sizes[-1] == n - batch_size * (expected_len - 1)


# one_hot, standardize, split ---------------------------------------------------------


def test_one_hot():
    out = one_hot(torch.tensor([2, 0, 1, 2]), 3)
    expected = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)
    assert one_hot(torch.tensor([], dtype=torch.int64), 4).shape == (0, 4)
    with pytest.raises(ValueError, match=r"\[0, 3\).*3"):
        one_hot(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="-1"):
        one_hot(torch.tensor([-1, 0]), 3)
    with pytest.raises(ValueError, match="integer"):
        one_hot(torch.tensor([0.0, 1.0]), 3)
    with pytest.raises(ValueError, match="num_classes"):
        one_hot(torch.tensor([0]), 0)


def test_standardize_uses_train_statistics_only():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(50, 4, generator=gen, dtype=torch.float64) * 3 + 2
    train[:, 3] = 7.0  # constant feature: std 0
    val = torch.randn(10, 4, generator=gen, dtype=torch.float64) * 10 - 5
    test = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    result = standardize(train, val, test)
    assert isinstance(result, tuple) and len(result) == 3
    # independent expectation: numpy statistics of train (population std)
    mean = train.numpy().mean(axis=0)
    std = train.numpy().std(axis=0)
    std[3] = 1.0
    for got, original in zip(result, [train, val, test]):
        np.testing.assert_allclose(got.numpy(), (original.numpy() - mean) / std, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result[0].mean(0).numpy(), 0, atol=1e-12)
    np.testing.assert_allclose(result[0][:, :3].std(0, unbiased=False).numpy(), 1, atol=1e-12)
    assert torch.all(result[0][:, 3] == 0)
    # the others do not influence the statistics
    assert torch.equal(standardize(train, val * 100)[0], result[0])
    alone = standardize(train)
    assert isinstance(alone, tuple) and len(alone) == 1 and torch.equal(alone[0], result[0])


def test_standardize_images_per_pixel_and_validation():
    gen = torch.Generator().manual_seed(1)
    train = torch.rand(8, 1, 3, 3, generator=gen)
    (out,) = standardize(train)
    assert out.shape == train.shape
    np.testing.assert_allclose(out.mean(0).numpy(), 0, atol=1e-6)
    with pytest.raises(ValueError, match="others\\[0\\]"):
        standardize(train, torch.rand(2, 1, 3, 4))
    (ints,) = standardize(torch.tensor([[0], [2]]))
    assert ints.dtype == torch.float32 and ints.flatten().tolist() == [-1.0, 1.0]


def test_split():
    x, y = make_data(10)
    x_a, y_a, x_b, y_b = split(x, y, 0.7, seed=0)
    assert len(y_a) == 7 and len(y_b) == 3
    assert set(y_a.tolist()).isdisjoint(y_b.tolist())
    assert sorted(y_a.tolist() + y_b.tolist()) == list(range(10))
    assert torch.equal(x_a, x[y_a]) and torch.equal(x_b, x[y_b])
    again = split(x, y, 0.7, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(again, (x_a, y_a, x_b, y_b)))
    other = split(x, y, 0.7, seed=1)
    assert not torch.equal(other[1], y_a)
    # the global RNG is not touched
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    split(x, y, 0.5, seed=2)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5])
def test_split_rejects_fraction(fraction):
    x, y = make_data(10)
    with pytest.raises(ValueError, match="fraction"):
        split(x, y, fraction, seed=0)


def test_split_rejects_empty_part_and_mismatch():
    x, y = make_data(10)
    with pytest.raises(ValueError, match="empty"):
        split(x, y, 0.01, seed=0)
    with pytest.raises(ValueError, match="first dimension"):
        split(x, y[:9], 0.5, seed=0)


def test_the_largest_seed_builds_the_two_digit_images():
    """The test images are paired with the next seed, modulo 2**64 (torch's seed range)."""
    largest = load_split("multi-digits", None, 2**64 - 1)
    smallest = load_split("multi-digits", None, 0)
    assert [tuple(t.shape) for t in largest] == [tuple(t.shape) for t in smallest]
    test_pairs = multi_digit(*split(*load_digits(), 0.8, 2**64 - 1)[2:], 1000, seed=0)
    assert torch.equal(largest[2], test_pairs[0]) and torch.equal(largest[3], test_pairs[1])
