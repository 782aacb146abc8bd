"""Train the writeup's LeNet on MNIST with one normalization layer at one batch size (owns ``conf/train``).

    python -m normexp.train norm=gn batch_size=4
    python -m normexp.train -m experiment=mcn_sweep

Every epoch: one pass over the training split in a seeded order, then validation on the whole test split in
eval mode. The run folder (from Hydra) receives metrics.csv, summary.json and checkpoint.pt, each written
atomically, so a killed run resumes where its last checkpoint left it.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from normexp import data, norm, optim, perf, runfiles
from normexp.model import LeNet

log = logging.getLogger("normexp")

DEVICES = ("auto", "cpu", "cuda")
SAMPLES_PER_SYNC = 4096  # fast path: look at the losses (one host sync) about this often


class StopSignal:
    """Turns SIGTERM (sent by SLURM before pre-emption) and SIGINT into a request to stop after this step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self)


class Diverged(Exception):
    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(f"training loss {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


def planned_epochs(cfg: DictConfig, batch_size: int) -> int:
    cap = cfg.max_epochs_by_batch_size.get(batch_size)
    return cfg.epochs if cap is None else min(cfg.epochs, cap)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split: data.Split,
    batch_size: int,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 error over the whole split, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.labels.device)
    wrong = torch.zeros((), dtype=torch.int64, device=split.labels.device)
    for x, y in split.in_order(batch_size, memory_format):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        wrong += (logits.argmax(1) != y).sum()
    return loss_sum.item() / len(split), wrong.item() / len(split)


class EpochLog:
    """Per-step training losses and the error count of the epoch so far, kept on the device between syncs."""

    def __init__(self, losses: torch.Tensor | None = None, wrong: int = 0) -> None:
        self.losses = [] if losses is None else [losses]
        self.wrong = wrong
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def record(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.pending.append((loss.detach(), logits.detach(), labels))

    def flush(self, max_loss: float, first_step: int, epoch: int) -> float:
        """Moves pending steps into the log (one host sync); returns their mean loss; raises Diverged."""
        losses = torch.stack([p[0] for p in self.pending])
        wrong = torch.cat([p[1] for p in self.pending]).argmax(1) != torch.cat([p[2] for p in self.pending])
        bad = (~torch.isfinite(losses)) | (losses > max_loss)
        self.pending.clear()
        if bad.any():
            i = int(bad.nonzero()[0])
            raise Diverged(epoch, first_step + i, losses[i].item())
        self.losses.append(losses)
        self.wrong += int(wrong.sum())
        return losses.mean().item()

    def all_losses(self) -> torch.Tensor:
        return torch.cat(self.losses) if self.losses else torch.zeros(0)

    def means(self, batch_sizes: torch.Tensor, num_examples: int) -> tuple[float, float]:
        """Epoch mean loss (each step weighted by its batch size, summed in one fixed order) and error."""
        weighted = self.all_losses().double().cpu() * batch_sizes.double()
        return weighted.sum().item() / num_examples, self.wrong / num_examples


@dataclass
class Setup:
    """What a run trains with."""

    device: torch.device
    cpu: perf.CpuSettings  # for the training steps
    eval_cpu: perf.CpuSettings  # for validation, which runs in batches of train.eval_batch_size
    train_set: data.Split
    test_set: data.Split
    model: LeNet
    optimizer: torch.optim.SGD
    lr: float

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        """``evaluate`` on the test split under the validation settings, then back to the training ones."""
        perf.apply(self.eval_cpu)
        try:
            return evaluate(self.model, self.test_set, batch_size, self.eval_cpu.memory_format)
        finally:
            perf.apply(self.cpu)


def set_up(cfg: DictConfig, jobs: int) -> Setup:
    """CPU settings (for ``jobs`` jobs sharing the box), data, the LeNet in the training layout (its initial
    weights drawn after seeding torch's RNG with train.seed) and its SGD (fused on the fast path)."""
    tc = cfg.train
    device = resolve_device(tc.device)
    cpu = perf.choose(cfg.batch_size, device, tc.threads, tc.mkldnn, jobs, fast=tc.fast)
    eval_cpu = perf.choose(tc.eval_batch_size, device, tc.threads, tc.mkldnn, jobs, fast=tc.fast)
    perf.apply(cpu)
    torch.manual_seed(tc.seed)
    train_set, test_set = data.load(cfg.data, device)
    model = LeNet(partial(norm.create_norm_layer, cfg.norm)).to(device, memory_format=cpu.memory_format)
    lr = optim.learning_rate(cfg.optim, cfg.batch_size, norm.is_normalized(cfg.norm))
    optimizer = optim.build(model, cfg.optim, lr, norm.norm_parameters(model), fused=tc.fast)
    return Setup(device, cpu, eval_cpu, train_set, test_set, model, optimizer, lr)


def train_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_set: data.Split,
    batches: list[torch.Tensor],
    epoch_log: EpochLog,
    memory_format: torch.memory_format = torch.contiguous_format,
    first_step: int = 0,
    before_step: Callable[[int], None] | None = None,
    stop: StopSignal | None = None,
) -> int:
    """One SGD step on each index batch in turn, recording loss and logits in ``epoch_log`` without a host
    sync. ``before_step(s)`` runs before the step that follows global step ``s``; a signal caught by ``stop``
    ends the loop after the current step. Returns the number of steps taken."""
    taken = 0
    for idx in batches:
        if before_step is not None:
            before_step(first_step + taken)
        x, y = train_set.batch(idx, memory_format)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        epoch_log.record(loss, logits, y)
        taken += 1
        if stop is not None and stop.signum is not None:
            break
    return taken


def steps_per_sync(batch_size: int, fast: bool) -> int:
    """Steps between two looks at the losses: about SAMPLES_PER_SYNC samples on the fast path, else 1."""
    return max(1, SAMPLES_PER_SYNC // batch_size) if fast else 1


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; returns its summary."""
    bs, tc = cfg.batch_size, cfg.train
    epochs = planned_epochs(tc, bs)
    if tc.resume and runfiles.is_finished(run_dir, epochs):
        previous = runfiles.read_summary(run_dir)
        log.info(
            "%s: already %s after %d epochs, nothing to do",
            run_dir,
            previous["status"],
            previous["epochs_run"],
        )
        return previous

    setup = set_up(cfg, perf.parallel_jobs())
    device, cpu, train_set, model, optimizer, lr = (
        setup.device, setup.cpu, setup.train_set, setup.model, setup.optimizer, setup.lr
    )
    renorm = cfg.norm.name == "brn"
    renorm_per_step = renorm and cfg.norm.schedule.unit == "step"

    start_epoch, start_batch, step, rows, wall, epoch_log, epoch_seconds = 0, 0, 0, [], 0.0, EpochLog(), 0.0
    checkpoint = runfiles.load_checkpoint(run_dir) if tc.resume else None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        perf.match_state_layout(optimizer)  # the checkpoint may come from a run with another memory layout
        torch.set_rng_state(checkpoint["rng"]["torch"])
        start_epoch, start_batch, step = checkpoint["epoch"], checkpoint["batch"], checkpoint["step"]
        rows, wall, epoch_seconds = (
            checkpoint["rows"],
            checkpoint["wall_seconds"],
            checkpoint["epoch_seconds"],
        )
        epoch_log = EpochLog(checkpoint["epoch_losses"].to(device), checkpoint["epoch_wrong"])
        log.info("resuming %s at epoch %d, batch %d", run_dir, start_epoch + 1, start_batch)

    def save(epoch: int, batch: int, seconds: float) -> None:
        runfiles.save_checkpoint(run_dir, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state()}, "epoch": epoch, "batch": batch, "step": step,
            "rows": rows, "wall_seconds": wall, "epoch_seconds": seconds,
            "epoch_losses": epoch_log.all_losses().cpu(), "epoch_wrong": epoch_log.wrong,
        })  # fmt: skip
        runfiles.write_metrics(run_dir, rows)

    def summary(status: str, **extra: Any) -> dict[str, Any]:
        val_errors = [r["val_error"] for r in rows]
        best = min(range(len(rows)), key=val_errors.__getitem__) if rows else None
        result = {
            "status": status, "epochs_run": len(rows), "epochs": epochs,
            "final_val_error": rows[-1]["val_error"] if rows else None,
            "best_val_error": val_errors[best] if rows else None,
            "best_epoch": best + 1 if rows else None,
            "final_val_loss": rows[-1]["val_loss"] if rows else None,
            "wall_seconds": round(wall, 3), "steps": step,
            "norm": cfg.norm.name, "batch_size": bs, "seed": tc.seed, "lr": lr, "data": cfg.data.name,
            "device": str(device), "threads": cpu.threads, "mkldnn": cpu.mkldnn, "fast": tc.fast,
            "channels_last": cpu.channels_last, "peak_rss_mb": round(perf.peak_rss_mb(), 1),
            "config": OmegaConf.to_container(cfg, resolve=True), **extra,
        }  # fmt: skip
        runfiles.write_summary(run_dir, result)
        return result

    stop = StopSignal()
    stop.install()
    sync_every = steps_per_sync(bs, tc.fast)
    show_bar = sys.stderr.isatty() if tc.progress == "auto" else bool(tc.progress)
    session_start = time.perf_counter()
    limits = (None, None)

    def update_renorm_limits(epoch: int, step: int) -> None:
        """Batch renorm's (r_max, d_max) for the step after ``step`` steps, during 0-based ``epoch``."""
        nonlocal limits
        now = norm.renorm_limits(cfg.norm, epoch + 1, step + 1)
        if now != limits:
            limits = now
            norm.set_renorm_limits(model, *limits)

    log.info(
        "%s, batch size %d, lr %.3g, %d epochs on %s (%d threads, oneDNN %s) -> %s",
        cfg.norm.name,
        bs,
        lr,
        epochs,
        device,
        cpu.threads,
        "on" if cpu.mkldnn else "off",
        run_dir,
    )

    for epoch in range(start_epoch, epochs):
        batches = data.epoch_order(len(train_set), bs, tc.seed, epoch, device)
        first_batch = start_batch if epoch == start_epoch else 0
        if epoch > start_epoch:
            epoch_log, epoch_seconds = EpochLog(), 0.0
        model.train()
        bar = tqdm(
            total=len(batches),
            initial=first_batch,
            desc=f"epoch {epoch + 1}/{epochs}",
            leave=False,
            disable=not show_bar,
            dynamic_ncols=True,
        )
        t0, last_log = time.perf_counter(), time.perf_counter()
        i = first_batch
        if renorm:
            update_renorm_limits(epoch, step)
        # with a per-step schedule, the limits follow the global step inside the step loop too
        before_step = partial(update_renorm_limits, epoch) if renorm_per_step else None
        try:
            while i < len(batches) and stop.signum is None:
                chunk_start = step
                taken = train_steps(
                    model,
                    optimizer,
                    train_set,
                    batches[i : i + sync_every],
                    epoch_log,
                    cpu.memory_format,
                    first_step=step,
                    before_step=before_step,
                    stop=stop,
                )
                step, i = step + taken, i + taken
                running_loss = epoch_log.flush(tc.max_loss, chunk_start + 1, epoch + 1)
                bar.update(taken)
                bar.set_postfix(loss=f"{running_loss:.4f}", refresh=False)
                if not show_bar and time.perf_counter() - last_log > 30:
                    log.info(
                        "epoch %d/%d batch %d/%d loss %.4f", epoch + 1, epochs, i, len(batches), running_loss
                    )
                    last_log = time.perf_counter()
        except Diverged as div:
            step = div.step  # steps later in the same chunk ran on an already blown-up model
            wall += time.perf_counter() - session_start
            log.warning("diverged: %s", div)
            runfiles.write_metrics(run_dir, rows)
            return summary("diverged", diverged_at={"epoch": div.epoch, "step": div.step, "loss": div.loss})
        finally:
            bar.close()
        train_seconds = epoch_seconds + time.perf_counter() - t0
        if stop.signum is not None:
            wall += time.perf_counter() - session_start
            save(epoch, i, train_seconds)
            summary("interrupted", interrupted_at={"epoch": epoch + 1, "batch": i})
            log.warning(
                "stopped by signal %d at epoch %d, batch %d: checkpoint saved; run the same command "
                "again to resume",
                stop.signum,
                epoch + 1,
                i,
            )
            sys.exit(128 + stop.signum)

        sizes = torch.tensor([len(b) for b in batches])
        train_loss, train_error = epoch_log.means(sizes, len(train_set))
        val_loss, val_error = setup.evaluate(tc.eval_batch_size)
        seconds = epoch_seconds + time.perf_counter() - t0
        rows.append({
            "epoch": epoch + 1, "step": step, "lr": lr, "r_max": limits[0], "d_max": limits[1],
            "train_loss": train_loss, "train_error": train_error,
            "val_loss": val_loss, "val_error": val_error,
            "seconds": round(seconds, 3), "samples_per_s": round(len(train_set) / train_seconds, 1),
        })  # fmt: skip
        log.info(
            "epoch %d/%d train loss %.4f error %.4f | val loss %.4f error %.4f | %.1fs",
            epoch + 1,
            epochs,
            train_loss,
            train_error,
            val_loss,
            val_error,
            seconds,
        )
        wall += time.perf_counter() - session_start
        session_start = time.perf_counter()
        epoch_log = EpochLog()
        save(epoch + 1, 0, 0.0)
    wall += time.perf_counter() - session_start
    runfiles.write_metrics(run_dir, rows)  # again: a run killed between its last checkpoint and metrics
    return summary("completed")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate(cfg: DictConfig) -> list[str]:
    """Problems with ``conf/train`` values, one line each."""
    problems = []
    if not _positive_int(cfg.epochs):
        problems.append(f"train.epochs={cfg.epochs!r}: must be an integer >= 1")
    caps = cfg.max_epochs_by_batch_size
    if not (OmegaConf.is_dict(caps) and all(_positive_int(k) and _positive_int(v) for k, v in caps.items())):
        problems.append(f"train.max_epochs_by_batch_size={caps!r}: must map batch sizes to integers >= 1")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        problems.append(f"train.seed={cfg.seed!r}: must be an integer >= 0")
    if cfg.device not in DEVICES:
        problems.append(f"train.device={cfg.device!r}: allowed: {', '.join(DEVICES)}")
    elif cfg.device == "cuda" and not torch.cuda.is_available():
        problems.append("train.device='cuda': no CUDA device is available here; allowed: auto, cpu")
    for key in ("resume", "fast"):
        if not isinstance(cfg[key], bool):
            problems.append(f"train.{key}={cfg[key]!r}: must be true or false")
    if not (_number(cfg.max_loss) and cfg.max_loss > 0):
        problems.append(f"train.max_loss={cfg.max_loss!r}: must be a number > 0")
    if not _positive_int(cfg.eval_batch_size):
        problems.append(f"train.eval_batch_size={cfg.eval_batch_size!r}: must be an integer >= 1")
    if cfg.threads != "auto" and not _positive_int(cfg.threads):
        problems.append(f"train.threads={cfg.threads!r}: must be 'auto' or an integer >= 1")
    for key in ("mkldnn", "progress"):
        if cfg[key] != "auto" and not isinstance(cfg[key], bool):
            problems.append(f"train.{key}={cfg[key]!r}: must be auto, true or false")
    return problems


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = run(cfg, run_dir)
    except data.DataError as err:
        print(f"normexp: error: {err}", file=sys.stderr)
        sys.exit(1)
    if result["status"] == "completed" and result["final_val_error"] is not None:
        log.info(
            "completed: final val error %.4f (best %.4f at epoch %d)",
            result["final_val_error"],
            result["best_val_error"],
            result["best_epoch"],
        )


if __name__ == "__main__":
    from normexp.config import exit_if_unknown_choice  # here, not at the top: config imports this module

    exit_if_unknown_choice(sys.argv[1:])  # one line for norm=foo, before Hydra's many-line message
    main()
