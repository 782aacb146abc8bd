"""MNIST-style data held in memory, drawn in seeded per-epoch orders (owns ``conf/data``)."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from normexp.analysis import runfiles

# data.name -> torchvision dataset class. torchvision is imported only to download: a run reads the IDX files
# itself, because importing torchvision costs about a second and 0.17 GB of resident memory per run
DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049

# an epoch's data order is seeded with seed * ORDER_STRIDE + epoch (epoch < the stride), which torch's
# generator takes up to 2**64 - 1: SEED_MAX is the largest train.seed all of whose orders it can take
ORDER_STRIDE = 1_000_003
SEED_MAX = 2**64 // ORDER_STRIDE - 1


class DataError(RuntimeError):
    """The data files are missing, unreadable or not in the IDX format."""


@dataclass
class Split:
    """One split held as the files store it (a quarter of the memory of float32 images); batches come out
    as float32 raw 0-255 pixels minus the training split's per-pixel mean image."""

    pixels: torch.Tensor  # (N, 1, 28, 28) uint8
    labels: torch.Tensor  # (N,) int64
    mean_image: torch.Tensor  # (1, 1, 28, 28) float32, of the training split

    def __len__(self) -> int:
        return self.labels.shape[0]

    def _centred(self, pixels: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        # one kernel (uint8 - float32 promotes to float32) writing into the wanted layout. With one channel,
        # .contiguous(memory_format=channels_last) would keep NCHW strides, which oneDNN then reads as NCHW
        out = torch.empty(pixels.shape, device=pixels.device, memory_format=memory_format)
        return torch.sub(pixels, self.mean_image, out=out)

    def batch(
        self, idx: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (centred) and labels of the examples ``idx``."""
        pixels, labels = self.pixels.index_select(0, idx), self.labels.index_select(0, idx)
        return self._centred(pixels, memory_format), labels

    def in_order(
        self, batch_size: int, memory_format: torch.memory_format = torch.contiguous_format
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole split in file order, in batches of ``batch_size`` (for evaluation)."""
        for pixels, labels in zip(self.pixels.split(batch_size), self.labels.split(batch_size), strict=True):
            yield self._centred(pixels, memory_format), labels


def raw_folder(cfg: DictConfig) -> Path:
    return Path(cfg.root) / DATASETS[cfg.name] / "raw"


def _raw_files(cfg: DictConfig, train: bool) -> tuple[Path, Path]:
    prefix = "train" if train else "t10k"
    folder = raw_folder(cfg)
    return folder / f"{prefix}-images-idx3-ubyte", folder / f"{prefix}-labels-idx1-ubyte"


def _expected_files() -> str:
    kinds = ("images-idx3-ubyte", "labels-idx1-ubyte")
    return ", ".join(f"{split}-{kind}" for split in ("train", "t10k") for kind in kinds)


def _open_regular(path: Path):
    """``path`` opened for reading in binary, and its size; anything but a regular file (a FIFO, a folder, a
    device) is refused without waiting: opened without blocking, then looked at."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from err
    mode, size = os.fstat(fd).st_mode, os.fstat(fd).st_size
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "a special file"
        raise DataError(f"{path}: {kind}, not a regular file; expected an IDX file")
    return os.fdopen(fd, "rb"), size


def _idx_count(path: Path, magic: int, item_bytes: int, header_bytes: int) -> int:
    """Number of items in an IDX file, after checking its magic number, its image size (28x28) and its size
    against its header; a file of no items is refused (each split needs at least one example)."""
    f, size = _open_regular(path)
    try:
        with f:
            header = f.read(header_bytes)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from err
    if len(header) < header_bytes:
        raise DataError(f"{path}: truncated: {size} bytes, less than its {header_bytes}-byte IDX header")
    found = int.from_bytes(header[:4], "big")
    if found != magic:
        raise DataError(f"{path}: wrong magic number {found}, expected {magic}: not an IDX file of this kind")
    count = int.from_bytes(header[4:8], "big")
    if magic == IMAGE_MAGIC:
        rows, cols = int.from_bytes(header[8:12], "big"), int.from_bytes(header[12:16], "big")
        if (rows, cols) != (28, 28):
            raise DataError(f"{path}: images of {rows}x{cols} pixels; expected 28x28")
    expected = header_bytes + count * item_bytes
    if size != expected:
        raise DataError(f"{path}: {size} bytes, but its header promises {count} items ({expected} bytes): "
                        "truncated or corrupt")
    if count == 0:
        raise DataError(f"{path}: no items; each split needs at least one example")
    return count


def _check_labels(path: Path) -> None:
    """Labels must name one of the ten classes, 0-9."""
    f, _ = _open_regular(path)
    with f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    bad = np.flatnonzero(labels > 9)
    if len(bad):
        raise DataError(f"{path}: label {labels[bad[0]]} at item {bad[0]} ({len(bad)} such); labels must be "
                        "0-9, the ten classes")


def _check_split(cfg: DictConfig, train: bool) -> int:
    images, labels = _raw_files(cfg, train)
    n_images = _idx_count(images, IMAGE_MAGIC, 28 * 28, 16)
    n_labels = _idx_count(labels, LABEL_MAGIC, 1, 8)
    if n_images != n_labels:
        raise DataError(f"{images}: {n_images} images but {labels.name} has {n_labels} labels")
    _check_labels(labels)
    return n_images


def files_present(cfg: DictConfig) -> bool:
    return all(p.exists() for train in (True, False) for p in _raw_files(cfg, train))


def extract_local(cfg: DictConfig) -> None:
    """MNIST as it is distributed: a missing file whose ``.gz`` lies beside it is extracted from that (no
    download, whatever ``data.download`` says); one that cannot be is a DataError naming it."""
    for train in (True, False):
        for path in _raw_files(cfg, train):
            packed = path.with_name(path.name + ".gz")
            if path.exists() or not packed.is_file():
                continue
            try:
                with gzip.open(packed, "rb") as f:
                    runfiles.write_atomic(path, f.read())
            except (OSError, EOFError, zlib.error) as err:
                raise DataError(f"data.root={cfg.root!r}: {packed.name} in {raw_folder(cfg)} cannot be "
                                f"extracted ({_last_line(err)}); extract it there, or remove it") from err


def check(cfg: DictConfig) -> None:
    """Raises DataError for a wrong ``conf/data`` value, missing files that may not be downloaded, or a file
    that is not a whole IDX file of its kind (a regular file, 28x28 images, at least one example, labels
    0-9); reads the headers and the labels. Files still to be downloaded pass."""
    if cfg.name not in DATASETS:
        raise DataError(f"data.name={cfg.name!r}: unknown; allowed: {', '.join(DATASETS)}")
    if not isinstance(cfg.download, bool):
        raise DataError(f"data.download={cfg.download!r}: must be true or false")
    extract_local(cfg)
    if not files_present(cfg):
        if cfg.download:
            return
        raise DataError(f"data.root={cfg.root!r}: no {cfg.name} data in {raw_folder(cfg)} and "
                        f"data.download=false; expected the files {_expected_files()}")
    _check_split(cfg, train=True)
    _check_split(cfg, train=False)


def validate(cfg: DictConfig) -> list[str]:
    """Problems with ``conf/data`` values and files, one line each, without loading any data."""
    try:
        check(cfg)
    except DataError as err:
        return [str(err)]
    return []


def train_size(cfg: DictConfig) -> int | None:
    """Number of training examples, read from the file header; None when the files are not there yet."""
    return _check_split(cfg, train=True) if files_present(cfg) else None


def split_sizes(cfg: DictConfig) -> tuple[int, int] | None:
    """Numbers of training and test examples, from the file headers; None when the files are not there."""
    return (_check_split(cfg, train=True), _check_split(cfg, train=False)) if files_present(cfg) else None


_HASHES: dict[tuple[str, int, int], str] = {}  # (file, size, mtime) -> sha256: each file hashed once


def fingerprint(cfg: DictConfig) -> dict[str, dict[str, object]]:
    """Size and sha256 of each data file, by file name (checked files: see ``check``)."""
    found = {}
    for train in (True, False):
        for path in _raw_files(cfg, train):
            f, size = _open_regular(path)
            with f:
                key = (str(path.resolve()), size, os.fstat(f.fileno()).st_mtime_ns)
                if key not in _HASHES:
                    digest = hashlib.sha256()
                    while block := f.read(1 << 20):
                        digest.update(block)
                    _HASHES[key] = digest.hexdigest()
            found[path.name] = {"bytes": size, "sha256": _HASHES[key]}
    return found


def _last_line(err: BaseException) -> str:
    """The last line of a possibly multi-line error (torchvision's download error ends with the cause)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _download(cfg: DictConfig, train: bool) -> None:
    from torchvision import datasets

    try:
        getattr(datasets, DATASETS[cfg.name])(root=cfg.root, train=train, download=True)
    except (RuntimeError, OSError) as err:
        what = "the download failed" if not files_present(cfg) else "they could not be read"
        raise DataError(f"data.root={cfg.root!r}: no usable {cfg.name} data in {raw_folder(cfg)}: {what} "
                        f"({_last_line(err)}); expected the files {_expected_files()}") from err


def fetch(cfg: DictConfig) -> None:
    """Downloads the files if they are missing and ``cfg.download`` allows it (once, before any run starts,
    so that the jobs of a sweep do not race to download into one folder); raises DataError."""
    if cfg.download and not files_present(cfg):
        _download(cfg, train=True), _download(cfg, train=False)


def _read_idx(path: Path, header_bytes: int) -> torch.Tensor:
    """The items of an IDX file (checked by ``check``) as a flat uint8 tensor."""
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8, offset=header_bytes))


def load(cfg: DictConfig, device: torch.device) -> tuple[Split, Split]:
    """Train and test splits on ``device``, both centred by the training split's per-pixel mean image."""
    fetch(cfg)
    check(cfg)  # a clear error naming the file for a truncated or foreign file, before reading it
    splits = []
    for train in (True, False):
        images, labels = _raw_files(cfg, train)
        pixels = _read_idx(images, 16).view(-1, 1, 28, 28).to(device)
        splits.append((pixels, _read_idx(labels, 8).to(device=device, dtype=torch.int64)))
    (train_pixels, train_labels), (test_pixels, test_labels) = splits
    # summed in float64 in blocks: a float copy of the whole split would add 0.19 GB to a run's peak memory
    pixel_sum = sum(block.sum(dim=0, dtype=torch.float64) for block in train_pixels.split(4096))
    mean_image = (pixel_sum / len(train_pixels)).to(torch.float32).unsqueeze(0)
    return Split(train_pixels, train_labels, mean_image), Split(test_pixels, test_labels, mean_image)


def epoch_order(
    num_examples: int, batch_size: int, seed: int, epoch: int, device: torch.device
) -> list[torch.Tensor]:
    """Index batches of one epoch: a permutation that depends only on (seed, epoch), so a resumed run
    sees the same order; the last batch may be smaller."""
    generator = torch.Generator().manual_seed(seed * ORDER_STRIDE + epoch)
    return list(torch.randperm(num_examples, generator=generator).to(device).split(batch_size))


def write_synthetic_mnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """MNIST's files (torchvision's layout under ``root``) holding random 28x28 uint8 digits and labels: what
    the benchmark and the tuner measure on."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        header = b"".join(v.to_bytes(4, "big") for v in (IMAGE_MAGIC, n, 28, 28))
        images = rng.integers(0, 256, n * 784, np.uint8).tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images)
        header = LABEL_MAGIC.to_bytes(4, "big") + n.to_bytes(4, "big")
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(header + rng.integers(0, 10, n, np.uint8).tobytes())
    return root
