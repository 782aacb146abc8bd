"""MNIST-style data held in memory, drawn in seeded per-epoch orders (owns ``conf/data``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

# data.name -> torchvision dataset class; torchvision is imported only to read or download (it takes about a
# second to import, which every start-up check and every rejected command line would otherwise pay)
DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
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
    return Path(cfg.root) / DATASETS[cfg.name] / "raw"


def _raw_files(cfg: DictConfig, train: bool) -> tuple[Path, Path]:
    prefix = "train" if train else "t10k"
    folder = raw_folder(cfg)
    return folder / f"{prefix}-images-idx3-ubyte", folder / f"{prefix}-labels-idx1-ubyte"


def _expected_files() -> str:
    kinds = ("images-idx3-ubyte", "labels-idx1-ubyte")
    return ", ".join(f"{split}-{kind}" for split in ("train", "t10k") for kind in kinds)


def _idx_count(path: Path, magic: int, item_bytes: int, header_bytes: int) -> int:
    """Number of items in an IDX file, after checking its magic number and its size against its header."""
    try:
        with open(path, "rb") as f:
            header = f.read(header_bytes)
        size = path.stat().st_size
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from err
    if len(header) < header_bytes:
        raise DataError(f"{path}: truncated: {size} bytes, less than its {header_bytes}-byte IDX header")
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


def check(cfg: DictConfig) -> None:
    """Raises DataError for a wrong ``conf/data`` value, missing files that may not be downloaded, or a file
    that is not a whole IDX file of its kind; reads only the headers. Files still to be downloaded pass."""
    if cfg.name not in DATASETS:
        raise DataError(f"data.name={cfg.name!r}: unknown; allowed: {', '.join(DATASETS)}")
    if not isinstance(cfg.download, bool):
        raise DataError(f"data.download={cfg.download!r}: must be true or false")
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


def _last_line(err: BaseException) -> str:
    """The last line of a possibly multi-line error (torchvision's download error ends with the cause)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _read(cfg: DictConfig, train: bool):
    from torchvision import datasets

    try:
        return getattr(datasets, DATASETS[cfg.name])(root=cfg.root, train=train, download=cfg.download)
    except (RuntimeError, OSError) as err:
        what = "the download failed" if cfg.download and not files_present(cfg) else "they could not be read"
        raise DataError(f"data.root={cfg.root!r}: no usable {cfg.name} data in {raw_folder(cfg)}: {what} "
                        f"({_last_line(err)}); expected the files {_expected_files()}") from err


def fetch(cfg: DictConfig) -> None:
    """Downloads the files if they are missing and ``cfg.download`` allows it (once, before any run starts,
    so that the jobs of a sweep do not race to download into one folder); raises DataError."""
    if cfg.download and not files_present(cfg):
        _read(cfg, train=True), _read(cfg, train=False)


def load(cfg: DictConfig, device: torch.device) -> tuple[Split, Split]:
    """Train and test splits as device tensors, centred by the training split's per-pixel mean image."""
    fetch(cfg)
    check(cfg)  # a clear error naming the file, not torchvision's reshape error, for a truncated file
    train, test = _read(cfg, train=True), _read(cfg, train=False)
    train_images = train.data.to(device=device, dtype=torch.float32).unsqueeze(1)
    mean_image = train_images.mean(dim=0, keepdim=True)
    test_images = test.data.to(device=device, dtype=torch.float32).unsqueeze(1)
    # in place: a second float copy of the training split would add 190 MB to a run's peak memory
    return (
        Split(train_images.sub_(mean_image), train.targets.to(device)),
        Split(test_images.sub_(mean_image), test.targets.to(device)),
    )


def epoch_order(
    num_examples: int, batch_size: int, seed: int, epoch: int, device: torch.device
) -> list[torch.Tensor]:
    """Index batches of one epoch: a permutation that depends only on (seed, epoch), so a resumed run
    sees the same order; the last batch may be smaller."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return list(torch.randperm(num_examples, generator=generator).to(device).split(batch_size))
