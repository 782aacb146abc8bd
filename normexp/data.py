"""MNIST-style data held in memory, drawn in seeded per-epoch orders (owns ``conf/data``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torchvision import datasets

DATASETS: dict[str, type[datasets.MNIST]] = {
    "mnist": datasets.MNIST,
    "fashion_mnist": datasets.FashionMNIST,
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


class DataError(RuntimeError):
    """The data files are missing, unreadable or not in the IDX format."""


@dataclass
class Split:
    images: torch.Tensor  # (N, 1, 28, 28) float32: raw 0-255 pixels minus the training mean image
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return self.labels.shape[0]


def raw_folder(cfg: DictConfig) -> Path:
    return Path(cfg.root) / DATASETS[cfg.name].__name__ / "raw"


def _raw_files(cfg: DictConfig, train: bool) -> tuple[Path, Path]:
    prefix = "train" if train else "t10k"
    folder = raw_folder(cfg)
    return folder / f"{prefix}-images-idx3-ubyte", folder / f"{prefix}-labels-idx1-ubyte"


def _expected_files() -> str:
    return ", ".join(p for t in ("train", "t10k") for p in (f"{t}-images-idx3-ubyte", f"{t}-labels-idx1-ubyte"))


def _idx_count(path: Path, magic: int, item_bytes: int, header_bytes: int) -> int:
    """Number of items in an IDX file, after checking its magic number and its size against its header."""
    try:
        with open(path, "rb") as f:
            header = f.read(header_bytes)
        size = path.stat().st_size
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from err
    if len(header) < header_bytes:
        raise DataError(f"{path}: truncated: {size} bytes, shorter than the IDX header ({header_bytes} bytes)")
    found = int.from_bytes(header[:4], "big")
    if found != magic:
        raise DataError(f"{path}: wrong magic number {found}, expected {magic}: not an IDX file of this kind")
    count = int.from_bytes(header[4:8], "big")
    expected = header_bytes + count * item_bytes
    if size != expected:
        raise DataError(f"{path}: {size} bytes, but its header promises {count} items ({expected} bytes): "
                        "truncated or corrupt")
    return count


def _check_split(cfg: DictConfig, train: bool) -> int:
    images, labels = _raw_files(cfg, train)
    n_images = _idx_count(images, IMAGE_MAGIC, 28 * 28, 16)
    n_labels = _idx_count(labels, LABEL_MAGIC, 1, 8)
    if n_images != n_labels:
        raise DataError(f"{images}: {n_images} images but {labels.name} has {n_labels} labels")
    return n_images


def files_present(cfg: DictConfig) -> bool:
    return all(p.exists() for train in (True, False) for p in _raw_files(cfg, train))


def validate(cfg: DictConfig) -> list[str]:
    """Problems with ``conf/data`` values and files, one line each, without loading any data."""
    if cfg.name not in DATASETS:
        return [f"data.name={cfg.name!r}: unknown; allowed: {', '.join(DATASETS)}"]
    if not isinstance(cfg.download, bool):
        return [f"data.download={cfg.download!r}: must be true or false"]
    if not files_present(cfg):
        if cfg.download:
            return []  # fetched on load
        return [f"data.root={cfg.root!r}: no {cfg.name} data in {raw_folder(cfg)} and data.download=false; "
                f"expected the files {_expected_files()}"]
    try:
        _check_split(cfg, train=True)
        _check_split(cfg, train=False)
    except DataError as err:
        return [str(err)]
    return []


def train_size(cfg: DictConfig) -> int | None:
    """Number of training examples, read from the file header; None when the files are not there yet."""
    return _check_split(cfg, train=True) if files_present(cfg) else None


def _read(cfg: DictConfig, train: bool) -> datasets.MNIST:
    try:
        return DATASETS[cfg.name](root=cfg.root, train=train, download=cfg.download)
    except (RuntimeError, OSError) as err:
        raise DataError(f"{cfg.name} data could not be read or downloaded into {raw_folder(cfg)} "
                        f"({err}); expected the files {_expected_files()}") from err


def load(cfg: DictConfig, device: torch.device) -> tuple[Split, Split]:
    """Train and test splits as device tensors, centred by the training split's per-pixel mean image."""
    train, test = _read(cfg, train=True), _read(cfg, train=False)
    if files_present(cfg):  # check what a download fetched as strictly as what was already there
        _check_split(cfg, train=True), _check_split(cfg, train=False)
    train_images = train.data.to(device=device, dtype=torch.float32).unsqueeze(1)
    mean_image = train_images.mean(dim=0, keepdim=True)
    test_images = test.data.to(device=device, dtype=torch.float32).unsqueeze(1)
    return (
        Split(train_images - mean_image, train.targets.to(device)),
        Split(test_images - mean_image, test.targets.to(device)),
    )


def epoch_order(
    num_examples: int, batch_size: int, seed: int, epoch: int, device: torch.device
) -> list[torch.Tensor]:
    """Index batches of one epoch: a permutation that depends only on (seed, epoch), so a resumed run
    sees the same order; the last batch may be smaller."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return list(torch.randperm(num_examples, generator=generator).to(device).split(batch_size))


def num_batches(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)

