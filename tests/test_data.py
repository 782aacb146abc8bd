"""Loading tiny MNIST-format data, the seeded batch order, and clear errors for corrupt files."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_digits, run_cli_many, write_idx_images, write_idx_labels, write_mnist
from omegaconf import OmegaConf

from normexp import data

CPU = torch.device("cpu")


def data_cfg(root: Path, **extra):
    return OmegaConf.create({"name": "mnist", "root": str(root), "download": False, **extra})


def test_load_keeps_pixels_and_gives_batches_centred_by_the_training_mean(tmp_path):
    root = write_mnist(tmp_path / "data", n_train=200, n_test=100)
    train, test = data.load(data_cfg(root), CPU)
    assert train.pixels.shape == (200, 1, 28, 28) and test.pixels.shape == (100, 1, 28, 28)
    assert train.pixels.dtype == test.pixels.dtype == torch.uint8
    assert train.labels.dtype == test.labels.dtype == torch.int64
    assert len(train) == 200 and len(test) == 100

    (train_pixels, train_labels), (test_pixels, test_labels) = make_digits(200, 0), make_digits(100, 1)
    mean_image = train_pixels.astype(np.float64).mean(axis=0)
    assert torch.equal(train.labels, torch.from_numpy(train_labels).long())
    assert torch.equal(test.labels, torch.from_numpy(test_labels).long())
    train_images = torch.cat([x for x, _ in train.in_order(64)])
    test_images, labels = zip(*test.in_order(64), strict=True)
    assert [len(y) for y in labels] == [64, 36] and torch.equal(torch.cat(labels), test.labels)
    test_images = torch.cat(test_images)
    assert train_images.dtype == test_images.dtype == torch.float32
    # raw 0-255 pixels (no /255) minus the *training* mean image, for the test split too
    np.testing.assert_allclose(train_images[:, 0].numpy(), train_pixels - mean_image, atol=1e-3)
    np.testing.assert_allclose(test_images[:, 0].numpy(), test_pixels - mean_image, atol=1e-3)
    assert train_images.mean(dim=0).abs().max() < 1e-3
    assert test_images.mean(dim=0).abs().max() > 1.0  # the test split's own mean is not subtracted

    idx = torch.tensor([5, 0, 199])
    x, y = train.batch(idx)
    assert torch.equal(x, train_images[idx]) and torch.equal(y, train.labels[idx])


def test_synthetic_mnist_is_read_as_mnist_and_repeats_with_its_seed(tmp_path):
    roots = [data.write_synthetic_mnist(tmp_path / name, 30, 20, seed) for name, seed in
             (("a", 0), ("b", 0), ("c", 1))]
    (train, test), (again, _), (other, _) = (data.load(data_cfg(r), CPU) for r in roots)
    assert train.pixels.shape == (30, 1, 28, 28) and test.pixels.shape == (20, 1, 28, 28)
    assert set(train.labels.tolist()) <= set(range(10)) and train.pixels.dtype == torch.uint8
    assert torch.equal(train.pixels, again.pixels) and not torch.equal(train.pixels, other.pixels)


def test_batches_come_in_the_asked_layout_with_the_same_values(tmp_path):
    train, _ = data.load(data_cfg(write_mnist(tmp_path / "data", n_train=20, n_test=10)), CPU)
    idx = torch.arange(4)
    plain, _ = train.batch(idx)
    nhwc, _ = train.batch(idx, torch.channels_last)
    # with one channel, .contiguous(memory_format=channels_last) keeps NCHW strides: the trap avoided here
    assert plain.contiguous(memory_format=torch.channels_last).stride() == (784, 784, 28, 1)
    assert plain.stride() == (784, 784, 28, 1) and nhwc.stride() == (784, 1, 28, 1)
    assert torch.equal(nhwc, plain)
    (first, _), *_ = train.in_order(4, torch.channels_last)
    assert first.stride() == (784, 1, 28, 1) and torch.equal(first, plain)


def test_epoch_order_depends_only_on_seed_and_epoch_and_covers_every_example():
    batches = data.epoch_order(103, 10, seed=3, epoch=2, device=CPU)
    assert [len(b) for b in batches] == [10] * 10 + [3]
    order = torch.cat(batches)
    assert sorted(order.tolist()) == list(range(103))
    assert torch.equal(order, torch.cat(data.epoch_order(103, 10, seed=3, epoch=2, device=CPU)))
    assert not torch.equal(order, torch.cat(data.epoch_order(103, 10, seed=3, epoch=3, device=CPU)))
    assert not torch.equal(order, torch.cat(data.epoch_order(103, 10, seed=4, epoch=2, device=CPU)))
    # the global RNG plays no part: a resumed run draws the same order whatever the RNG did before
    torch.manual_seed(123)
    assert torch.equal(order, torch.cat(data.epoch_order(103, 10, seed=3, epoch=2, device=CPU)))


def truncate_images(raw: Path) -> Path:
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    return path


def wrong_magic(raw: Path) -> Path:
    path = raw / "t10k-labels-idx1-ubyte"
    path.write_bytes((1234).to_bytes(4, "big") + path.read_bytes()[4:])
    return path


def fewer_labels(raw: Path) -> Path:
    write_idx_labels(raw / "train-labels-idx1-ubyte", np.zeros(150, dtype=np.uint8))
    return raw / "train-images-idx3-ubyte"


def header_only_half(raw: Path) -> Path:
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:10])
    return path


CORRUPTIONS = {  # name: (damage, the message naming the damaged file)
    "truncated images": (
        truncate_images,
        "{path}: 156716 bytes, but its header promises 200 items (156816 bytes): truncated or corrupt",
    ),
    "wrong magic": (
        wrong_magic, "{path}: wrong magic number 1234, expected 2049: not an IDX file of this kind"
    ),
    "label count": (fewer_labels, "{path}: 200 images but train-labels-idx1-ubyte has 150 labels"),
    "cut inside the header": (
        header_only_half, "{path}: truncated: 10 bytes, less than its 16-byte IDX header"
    ),
}


@pytest.fixture
def corrupt(tmp_path, request):
    """A data root with one file damaged as the parameter says; (root, expected message)."""
    damage, message = CORRUPTIONS[request.param]
    root = write_mnist(tmp_path / "data")
    path = damage(root / "MNIST" / "raw")
    return root, message.format(path=path)


@pytest.mark.parametrize("corrupt", CORRUPTIONS, indirect=True)
def test_corrupt_file_is_named_by_validate_and_by_load(corrupt):
    root, message = corrupt
    for download in (False, True):  # files that are there are never downloaded again, only checked
        cfg = data_cfg(root, download=download)
        assert data.validate(cfg) == [message]
        with pytest.raises(data.DataError) as err:
            data.load(cfg, CPU)
        assert str(err.value) == message


def test_corrupt_files_are_named_by_the_cli(tmp_path):
    cases = []
    for name, (damage, message) in list(CORRUPTIONS.items())[:3]:  # the fourth is like the first
        root = write_mnist(tmp_path / name.replace(" ", "_"))
        path = damage(root / "MNIST" / "raw")
        out = tmp_path / f"{name.replace(' ', '_')}_run"
        args = [f"hydra.run.dir={out}", f"data.root={root}", "batch_size=4"]
        cases.append((args, message.format(path=path), out))
    results = run_cli_many([args for args, _, _ in cases])
    for (args, message, out), result in zip(cases, results, strict=True):
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip().splitlines() == [f"normexp: error: {message}"]
        assert not out.exists()


def test_data_validate_messages_for_bad_values(tmp_path):
    assert data.validate(data_cfg(tmp_path, name="cifar")) == [
        "data.name='cifar': unknown; allowed: mnist, fashion_mnist"
    ]
    assert data.validate(data_cfg(tmp_path, download="yes")) == ["data.download='yes': must be true or false"]
    assert data.validate(data_cfg(tmp_path, download=True)) == []  # to be downloaded before the run starts
    assert data.train_size(data_cfg(write_mnist(tmp_path / "d", n_train=37))) == 37


def label_10(raw: Path) -> Path:
    labels = np.arange(200) % 10
    labels[3] = 10
    write_idx_labels(raw / "train-labels-idx1-ubyte", labels)
    return raw / "train-labels-idx1-ubyte"


def label_255(raw: Path) -> Path:
    labels = np.arange(100) % 10
    labels[99] = 255
    write_idx_labels(raw / "t10k-labels-idx1-ubyte", labels)
    return raw / "t10k-labels-idx1-ubyte"


def no_test_items(raw: Path) -> Path:
    write_idx_images(raw / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28)))
    write_idx_labels(raw / "t10k-labels-idx1-ubyte", np.zeros(0))
    return raw / "t10k-images-idx3-ubyte"


def images_14x56(raw: Path) -> Path:
    images, _ = make_digits(200, 0)
    write_idx_images(raw / "train-images-idx3-ubyte", images.reshape(200, 14, 56))
    return raw / "train-images-idx3-ubyte"


def fifo(raw: Path) -> Path:
    path = raw / "t10k-labels-idx1-ubyte"
    path.unlink()
    os.mkfifo(path)  # opened for reading, it would wait for a writer for ever
    return path


BAD_CONTENT = {  # found at start-up, before any folder: name -> (damage, message)
    "a label 10": (label_10, "{path}: label 10 at item 3 (1 such); labels must be 0-9, the ten classes"),
    "a test label 255": (label_255,
                         "{path}: label 255 at item 99 (1 such); labels must be 0-9, the ten classes"),
    "no test items": (no_test_items, "{path}: no items; each split needs at least one example"),
    "14x56 images": (images_14x56, "{path}: images of 14x56 pixels; expected 28x28"),
    "a FIFO": (fifo, "{path}: a FIFO, not a regular file; expected an IDX file"),
}


def test_bad_data_contents_are_one_line_before_any_folder(tmp_path):
    cases = []
    for name, (damage, message) in BAD_CONTENT.items():
        root = write_mnist(tmp_path / name.replace(" ", "_"))
        path = damage(root / "MNIST" / "raw")
        out = tmp_path / f"{name.replace(' ', '_')}_run"
        command = [f"hydra.run.dir={out}", f"data.root={root}", "batch_size=4"]
        cases.append((command, message.format(path=path), out))
    results = run_cli_many([args for args, _, _ in cases])
    for (args, message, out), result in zip(cases, results, strict=True):
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip().splitlines() == [f"normexp: error: {message}"]
        assert not out.exists()


def test_mnist_as_distributed_gz_files_are_extracted_not_downloaded(tmp_path):
    root = write_mnist(tmp_path / "gz")
    raw = root / "MNIST" / "raw"
    originals = {p.name: p.read_bytes() for p in raw.iterdir()}
    for name, content in originals.items():
        (raw / f"{name}.gz").write_bytes(gzip.compress(content))
        (raw / name).unlink()
    data.check(data_cfg(root, download=False))
    assert {name: (raw / name).read_bytes() for name in originals} == originals
    torn = write_mnist(tmp_path / "torn") / "MNIST" / "raw"
    packed = gzip.compress((torn / "train-images-idx3-ubyte").read_bytes())
    (torn / "train-images-idx3-ubyte.gz").write_bytes(packed[: len(packed) // 2])
    (torn / "train-images-idx3-ubyte").unlink()
    with pytest.raises(data.DataError) as err:
        data.check(data_cfg(tmp_path / "torn", download=True))
    assert str(err.value) == (
        f"data.root='{tmp_path / 'torn'}': train-images-idx3-ubyte.gz in {torn} cannot be extracted "
        "(Compressed file ended before the end-of-stream marker was reached); extract it there, or remove it")
