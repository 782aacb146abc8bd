"""Training speed of normexp against the loop a researcher would write, measured interleaved in one run.

    python scripts/bench.py                       # norms none,bn,brn,gn at all 8 batch sizes (~8 minutes)
    python scripts/bench.py --norms gn --batch-sizes 1,256 --seconds 2 --json gn.json
    python scripts/bench.py --device cuda

(a) normexp: the trainer's own set-up (Trainer.build) and its chunk step (Group.train_chunk: SGD steps,
    then one look at the losses every train.steps_per_sync steps) on the training split in memory.
(b) reference: the loop of pytorch/examples' mnist/main.py: torchvision's MNIST with ToTensor and Normalize, a
    DataLoader(shuffle=True), the same LeNet, torch.optim.SGD with momentum and weight decay, default torch
    settings, loss.item() every step.
Each repetition times a block of one, then of the other (the order alternates); the table shows medians.
The epoch columns add each loop's own evaluation of the test split (normexp's at train.eval_batch_size, the
reference's test() at 1000 a batch; 3 alternating passes, the median) to the training split's steps at the
median step time: an epoch of a run, start-up aside.
Without --data-root both read the same synthetic MNIST-format files of 60,000 + 10,000 random digits.

With --packed, instead: three seeds of one configuration (train.seeds) packed in one network (normexp's own
loop on a group of them: trainer.Group and its chunk step), against the same three seeds one after another,
against one seed alone (normexp's own fast path, the price of one), interleaved; and the 3-seed mcn_sweep on
complete MNIST estimated from those step times against three times its one-seed sweep.

    python scripts/bench.py --packed              # gn,bn at batch sizes 1,2,4,16,256 (~5 minutes)

Then one probe process per (norm, batch size) sets up a real run (the whole training split) and measures its
step rate, one evaluation of the test split, one checkpoint write and its peak RSS; --jobs probes run side by
side, in the sweep's order, as the joblib launcher runs jobs. The mcn_sweep estimate comes from these rates.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before the heavy imports: a probe's start-up counts them, as a run's does

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import asdict  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from normexp import config, data, norm, optim, perf, trainer, validation  # noqa: E402
from normexp.analysis import runfiles, sweeps  # noqa: E402
from normexp.model import LeNet  # noqa: E402
from normexp.trainer import RunState, Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NORMS = "none,bn,brn,gn"
BATCH_SIZES = "1,2,4,16,32,64,128,256"
DEFAULT_JSON = ROOT / "outputs" / "bench" / "bench.json"
FULL_TRAIN, FULL_TEST = 60_000, 10_000  # MNIST: what the sweep estimate is for
WARMUP_STEPS = 5
EVAL_REPEATS = 3  # timed evaluations of the test split per loop and row (a whole pass each)
REFERENCE_TEST_BATCH = 1000  # pytorch/examples' --test-batch-size
# torch's own settings in this process, before anything here changes them: the reference runs under these
TORCH_DEFAULTS = perf.CpuSettings(threads=torch.get_num_threads(), mkldnn=torch.backends.mkldnn.enabled)
# PyTorch's own GPU numerics, which the reference keeps and normexp's set-up changes (trainer.exact_float32)
CUDA_DEFAULTS = {key: getattr(torch.backends.cudnn, key)
                 for key in ("allow_tf32", "deterministic", "benchmark")}


# ---------------------------------------------------------------- data and configuration


def run_config(norm_name: str, batch_size: int, data_root: Path, device: str, *extra: str) -> DictConfig:
    """The configuration ``python -m normexp.train`` would run with these overrides."""
    overrides = [f"norm={norm_name}", f"batch_size={batch_size}", f"data.root={data_root}",
                 "data.download=false", f"train.device={device}", *extra]  # fmt: skip
    return config.compose_config(overrides, hydra=True)


def sweep_runs(data_root: Path, device: str) -> list[tuple[str, int, int]]:
    """(norm, batch size, epochs) of each run of ``experiment=mcn_sweep``, in the sweeper's order."""
    cfg = run_config("gn", 256, data_root, device, "experiment=mcn_sweep")
    params = cfg.hydra.sweeper.params
    norms, sizes = str(params["norm"]).split(","), [int(b) for b in str(params["batch_size"]).split(",")]
    tc = cfg.train
    return [(n, b, sweeps.planned_epochs(tc.epochs, tc.max_epochs_by_batch_size, b))
            for n in norms for b in sizes]


# ---------------------------------------------------------------- the two training loops


class NormexpLoop:
    """normexp's training path: the runs' own set-ups and the one epoch loop's chunk step
    (``trainer.Group.train_chunk``), epoch after epoch in the runs' orders; one run, or seeds packed in one
    network as a job of train.seeds trains them (the data loaded once)."""

    def __init__(self, cfg: DictConfig, jobs: int, chosen: list[int] | None = None) -> None:
        folder = Path(tempfile.gettempdir())  # never written here
        configs = [cfg] if chosen is None else [trainer.seed_config(cfg, s) for s in chosen]
        self.runs = [Trainer(c, folder, jobs) for c in configs]
        self.setup, self.cfg = self.runs[0].build(), cfg
        for run in self.runs[1:]:
            run.build(splits=(self.setup.train_set, self.setup.test_set))
        self.device, self.states = self.setup.device, [RunState() for _ in self.runs]
        self.group = trainer.Group(list(self.runs), self.states, packed=len(self.runs) > 1, timing=True)
        self.group.build_net()

    def run(self, steps: int) -> int:
        """Trains ``steps`` steps (of every seed); returns the number of samples (of all seeds)."""
        perf.apply(self.setup.cpu)
        trainer.exact_float32(self.device)
        return self.group.run_steps(steps)

    def evaluate(self) -> None:
        self.setup.evaluate(self.cfg.train.eval_batch_size)


class SequentialLoop:
    """The same seeds one after another in one process: each seed's own normexp loop in turn."""

    def __init__(self, cfg: DictConfig, chosen: list[int], jobs: int) -> None:
        self.loops = [NormexpLoop(trainer.seed_config(cfg, s), jobs) for s in chosen]
        self.device = self.loops[0].device

    def run(self, steps: int) -> int:
        return sum(loop.run(steps) for loop in self.loops)


class ReferenceLoop:
    """The loop of pytorch/examples' mnist/main.py, with this project's LeNet and SGD settings."""

    def __init__(self, cfg: DictConfig, data_root: Path) -> None:
        from torchvision import datasets, transforms

        self.device = trainer.resolve_device(cfg.train.device)
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        dataset = datasets.MNIST(str(data_root), train=True, download=False, transform=transform)
        loader_kwargs = {"batch_size": cfg.batch_size, "shuffle": True}
        if self.device.type == "cuda":
            loader_kwargs.update(num_workers=1, pin_memory=True)
        self.loader = torch.utils.data.DataLoader(dataset, **loader_kwargs)
        test_set = datasets.MNIST(str(data_root), train=False, download=False, transform=transform)
        self.test_loader = torch.utils.data.DataLoader(
            test_set, **loader_kwargs | {"batch_size": REFERENCE_TEST_BATCH, "shuffle": False})
        self.batches = iter(self.loader)
        self.model = LeNet(partial(norm.create_norm_layer, cfg.norm), conv_weight=norm.conv_weight(cfg.norm),
                           activation=norm.activation(cfg.norm)).to(self.device)
        lr = optim.learning_rate(cfg.optim, cfg.batch_size, norm.is_normalized(cfg.norm))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=cfg.optim.momentum,
                                         weight_decay=cfg.optim.weight_decay)
        self.running_loss = 0.0

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self.batches)
        except StopIteration:  # end of an epoch: a new shuffled pass, as `for epoch in ...` would start
            self.batches = iter(self.loader)
            return next(self.batches)

    def run(self, steps: int) -> int:
        perf.apply(TORCH_DEFAULTS)
        if self.device.type == "cuda":
            for key, value in CUDA_DEFAULTS.items():
                setattr(torch.backends.cudnn, key, value)
        self.model.train()
        samples = 0
        for _ in range(steps):
            images, target = self._next_batch()
            images, target = images.to(self.device), target.to(self.device)
            self.optimizer.zero_grad()
            output = self.model(images)
            loss = F.cross_entropy(output, target)
            loss.backward()
            self.optimizer.step()
            self.running_loss += loss.item()
            samples += len(target)
        return samples

    def evaluate(self) -> None:
        """pytorch/examples' test(): the test split in eval mode, summed loss and correct count."""
        perf.apply(TORCH_DEFAULTS)
        self.model.eval()
        test_loss, correct = 0.0, 0
        with torch.no_grad():
            for images, target in self.test_loader:
                images, target = images.to(self.device), target.to(self.device)
                output = self.model(images)
                test_loss += F.cross_entropy(output, target, reduction="sum").item()
                correct += output.argmax(1).eq(target).sum().item()


def timed(loop, steps: int) -> tuple[float, int]:
    """(seconds, samples) of ``steps`` steps of ``loop``."""
    start = time.perf_counter()
    samples = loop.run(steps)
    if loop.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, samples


# ---------------------------------------------------------------- the interleaved comparison


def compare(norm_name: str, batch_size: int, args: argparse.Namespace, data_root: Path) -> dict:
    """One row of the table: blocks of the same number of steps of each loop, alternating which goes first."""
    cfg = run_config(norm_name, batch_size, data_root, args.device)
    ours, ref = NormexpLoop(cfg, jobs=1), ReferenceLoop(cfg, data_root)
    timed(ours, WARMUP_STEPS)
    timed(ref, WARMUP_STEPS)
    if args.steps:
        steps = args.steps
    else:  # as many steps as the reference makes in --seconds
        seconds, _ = timed(ref, WARMUP_STEPS)
        steps = max(WARMUP_STEPS, math.ceil(args.seconds * WARMUP_STEPS / seconds))
    rates = {"normexp": [], "reference": []}
    step_ms = {"normexp": [], "reference": []}
    for repeat in range(args.repeats):
        order = [("normexp", ours), ("reference", ref)]
        for name, loop in order if repeat % 2 == 0 else order[::-1]:
            seconds, samples = timed(loop, steps)
            rates[name].append(samples / seconds)
            step_ms[name].append(seconds / steps * 1e3)
    ours_rate, ref_rate = statistics.median(rates["normexp"]), statistics.median(rates["reference"])
    eval_s = {"normexp": [], "reference": []}
    for repeat in range(EVAL_REPEATS):
        order = [("normexp", ours), ("reference", ref)]
        for name, loop in order if repeat % 2 == 0 else order[::-1]:
            eval_s[name].append(_eval_seconds(loop))
    # an epoch: the training split's steps at the median step time, then one evaluation of the test split
    n_train = len(ref.loader.dataset)
    epoch_s = {name: math.ceil(n_train / batch_size) * statistics.median(step_ms[name]) / 1e3
               + statistics.median(eval_s[name]) for name in eval_s}
    return {
        "norm": norm_name, "batch_size": batch_size, "steps_per_block": steps,
        "normexp_samples_per_s": ours_rate, "reference_samples_per_s": ref_rate,
        "ratio": ours_rate / ref_rate,
        "normexp_ms_per_step": statistics.median(step_ms["normexp"]),
        "reference_ms_per_step": statistics.median(step_ms["reference"]),
        "normexp_settings": asdict(ours.setup.cpu) | {"fused_sgd": cfg.train.fast},
        "reference_settings": asdict(TORCH_DEFAULTS), "samples_per_s": rates,
        "eval_seconds": eval_s, "training_digits": n_train, "normexp_epoch_s": epoch_s["normexp"],
        "reference_epoch_s": epoch_s["reference"], "epoch_ratio": epoch_s["reference"] / epoch_s["normexp"],
    }  # fmt: skip


def compare_packed(norm_name: str, batch_size: int, args: argparse.Namespace, data_root: Path) -> dict:
    """One row of the packed table: blocks of the same number of steps of one seed, of three one after
    another and of three packed, the order rotating; milliseconds per step of every seed in the block."""
    cfg = run_config(norm_name, batch_size, data_root, args.device)
    chosen = [0, 1, 2]
    loops = {"one": NormexpLoop(cfg, jobs=1), "sequential": SequentialLoop(cfg, chosen, jobs=1),
             "packed": NormexpLoop(cfg, 1, chosen)}
    for loop in loops.values():
        timed(loop, WARMUP_STEPS)
    steps = args.steps or max(WARMUP_STEPS, math.ceil(
        args.seconds * WARMUP_STEPS / timed(loops["one"], WARMUP_STEPS)[0]))
    ms = {name: [] for name in loops}
    names = list(loops)
    for repeat in range(args.repeats):
        for name in names[repeat % 3:] + names[:repeat % 3]:
            seconds, _ = timed(loops[name], steps)
            ms[name].append(seconds / steps * 1e3)
    one, seq, packed = (statistics.median(ms[n]) for n in names)
    return {
        "norm": norm_name, "batch_size": batch_size, "steps_per_block": steps, "seeds": len(chosen),
        "one_ms_per_step": one, "sequential_ms_per_step": seq, "packed_ms_per_step": packed,
        "packed_price": packed / one, "sequential_price": seq / one, "packed_vs_sequential": packed / seq,
        "rule_packs": perf.pack_size(cfg.train.pack_size, loops["one"].device, len(chosen)) > 1,
        "settings": asdict(loops["one"].setup.cpu), "ms_per_step": ms,
        "eval_seconds": _eval_seconds(loops["one"]),
    }  # fmt: skip


def _eval_seconds(loop: NormexpLoop | ReferenceLoop) -> float:
    start = time.perf_counter()
    loop.evaluate()
    return time.perf_counter() - start


def packed_table(rows: list[dict]) -> str:
    columns = ["norm", "batch size", "1 seed ms/step", "3 one after another", "3 packed",
               "packed: price of one", "one after another: price of one", "packed / one after another",
               "rule packs"]
    return markdown_table(columns, [
        [r["norm"], f"{r['batch_size']}", f"{r['one_ms_per_step']:.3f}", f"{r['sequential_ms_per_step']:.3f}",
         f"{r['packed_ms_per_step']:.3f}", f"{r['packed_price']:.2f}x", f"{r['sequential_price']:.2f}x",
         f"{r['packed_vs_sequential']:.2f}", "yes" if r["rule_packs"] else "no"] for r in rows],
        left=("norm", "rule packs"))


def packed_sweep_estimate(rows: list[dict], runs: list[tuple[str, int, int]]) -> dict:
    """mcn_sweep with train.seeds=[0,1,2] on complete MNIST against three times its one-seed sweep, job
    time from the measured step times: per epoch 60,000 / batch size steps plus one evaluation per seed.
    A norm not measured takes bn's rows (none and brn run batch norm's kernels or fewer); a batch size not
    measured takes the nearest measured one's time per sample, and the price of the rule (packed where it
    packs, else one after another)."""
    by = {(r["norm"], r["batch_size"]): r for r in rows}
    measured = {n for n, _ in by}
    one_s, three_s = 0.0, 0.0
    for name, bs, epochs in runs:
        name = name if name in measured else ("bn" if "bn" in measured else rows[0]["norm"])
        nearest = min((b for n, b in by if n == name), key=lambda b: (abs(math.log2(b) - math.log2(bs)), -b))
        r = by[(name, nearest)]
        train_s = FULL_TRAIN * r["one_ms_per_step"] / 1e3 / nearest  # an epoch of one seed
        price = r["packed_price"] if r["rule_packs"] else r["sequential_price"]
        one_s += epochs * (train_s + r["eval_seconds"])
        three_s += epochs * (train_s * price + 3 * r["eval_seconds"])
    return {"one_seed_job_hours": one_s / 3600, "three_seeds_job_hours": three_s / 3600,
            "three_one_seed_sweeps_job_hours": 3 * one_s / 3600, "price": three_s / one_s}


# ---------------------------------------------------------------- probes: one real run's set-up per process


def probe(norm_name: str, batch_size: int, args: argparse.Namespace, data_root: Path) -> dict:
    """Set-up of a real run and its per-epoch costs, in this (fresh) process: step rate, one evaluation of
    the test split, one checkpoint write, start-up time and peak RSS."""
    cfg = run_config(norm_name, batch_size, data_root, args.device)
    loop = NormexpLoop(cfg, jobs=args.jobs)
    startup = time.perf_counter() - T_START
    timed(loop, WARMUP_STEPS)
    if args.steps:
        seconds, samples = timed(loop, args.steps)
    else:  # blocks of doubling length until --seconds are used up
        seconds, samples, steps = 0.0, 0, WARMUP_STEPS
        while seconds < args.seconds:
            more_seconds, more_samples = timed(loop, steps)
            seconds, samples, steps = seconds + more_seconds, samples + more_samples, 2 * steps
    start = time.perf_counter()
    loop.evaluate()
    eval_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        runfiles.save_checkpoint(Path(run_dir), {"model": loop.setup.model.state_dict(),
                                                 "optimizer": loop.setup.optimizer.state_dict()})
        save_seconds = time.perf_counter() - start
    return {
        "norm": norm_name, "batch_size": batch_size, "jobs": args.jobs, "samples_per_s": samples / seconds,
        "eval_seconds": eval_seconds, "test_size": len(loop.setup.test_set),
        "train_size": len(loop.setup.train_set),
        "checkpoint_seconds": save_seconds, "startup_seconds": startup,
        "peak_rss_mb": perf.peak_rss_mb(),
        "settings": asdict(loop.setup.cpu),
    }  # fmt: skip


def run_probes(configs: list[tuple[str, int]], args: argparse.Namespace, data_root: Path) -> dict:
    """One probe process per config, ``args.jobs`` at a time, in the given order."""

    def one(config: tuple[str, int]) -> dict:
        command = [sys.executable, __file__, "--probe", f"{config[0]},{config[1]}",
                   "--data-root", str(data_root), "--device", args.device, "--jobs", str(args.jobs),
                   "--seconds", str(args.seconds)]  # fmt: skip
        if args.steps:
            command += ["--steps", str(args.steps)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"probe {config} failed:\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(args.jobs) as pool:
        return {(p["norm"], p["batch_size"]): p for p in pool.map(one, configs)}


# ---------------------------------------------------------------- the sweep estimate


def seconds_per_sample(probes: dict, norm_name: str, batch_size: int) -> float | None:
    """Measured, or interpolated over log(batch size) from this norm's measured batch sizes."""
    points = sorted((math.log(b), 1 / p["samples_per_s"]) for (n, b), p in probes.items() if n == norm_name)
    if not points:
        return None
    x = math.log(batch_size)
    xs, ys = [p[0] for p in points], [math.log(p[1]) for p in points]
    return math.exp(float(np.interp(x, xs, ys)))


def list_schedule(durations: list[float], workers: int) -> float:
    """Wall time when each job, in order, starts on the first free worker (as joblib hands them out)."""
    free_at = [0.0] * workers
    for d in durations:
        i = free_at.index(min(free_at))
        free_at[i] += d
    return max(free_at)


def sweep_estimate(probes: dict, runs: list[tuple[str, int, int]], jobs: int) -> dict:
    per_run, missing = [], sorted({n for n, _, _ in runs if seconds_per_sample(probes, n, 1) is None})
    if missing:
        return {"jobs": jobs, "missing_norms": missing}
    any_probe = next(iter(probes.values()))
    mean = statistics.mean
    eval_per_test_sample = mean(p["eval_seconds"] / p["test_size"] for p in probes.values())
    checkpoint, startup = mean(p["checkpoint_seconds"] for p in probes.values()), max(
        p["startup_seconds"] for p in probes.values())
    for norm_name, batch_size, epochs in runs:
        per_epoch = (FULL_TRAIN * seconds_per_sample(probes, norm_name, batch_size)
                     + FULL_TEST * eval_per_test_sample + checkpoint)  # fmt: skip
        per_run.append({"norm": norm_name, "batch_size": batch_size, "epochs": epochs,
                        "measured": (norm_name, batch_size) in probes,
                        "hours": (startup + epochs * per_epoch) / 3600})  # fmt: skip
    hours = [r["hours"] for r in per_run]
    return {
        "jobs": jobs, "runs": per_run, "job_hours": sum(hours), "wall_hours": list_schedule(hours, jobs),
        "eval_seconds_per_epoch": FULL_TEST * eval_per_test_sample, "checkpoint_seconds": checkpoint,
        "startup_seconds": startup, "probe_train_size": any_probe["train_size"],
    }  # fmt: skip


# ---------------------------------------------------------------- report


def markdown_table(columns: list[str], rows: list[list[str]], left: tuple[str, ...] = ("norm",)) -> str:
    """A markdown table of ready-made cells; the columns not in ``left`` (numbers) right-aligned."""
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if c in left else "---:" for c in columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def table(rows: list[dict], jobs: int) -> str:
    columns = ["norm", "batch size", "normexp samples/s", "reference samples/s", "ratio", "normexp ms/step",
               "reference ms/step", "normexp epoch s", "reference epoch s", "epoch ratio",
               f"box samples/s, {jobs} runs", "box ratio", "peak RSS MB"]
    return markdown_table(columns, [
        [r["norm"], f"{r['batch_size']}", f"{r['normexp_samples_per_s']:.0f}",
         f"{r['reference_samples_per_s']:.0f}", f"{r['ratio']:.2f}x", f"{r['normexp_ms_per_step']:.3f}",
         f"{r['reference_ms_per_step']:.3f}", f"{r['normexp_epoch_s']:.2f}", f"{r['reference_epoch_s']:.2f}",
         f"{r['epoch_ratio']:.2f}x", f"{r['box_samples_per_s']:.0f}", f"{r['box_ratio']:.2f}x",
         f"{r['peak_rss_mb']:.0f}"] for r in rows])


def sweep_lines(estimate: dict) -> list[str]:
    if "missing_norms" in estimate:
        missing = ", ".join(estimate["missing_norms"])
        return [f"mcn_sweep estimate: not made, no measurement of norm(s) {missing}"]
    measured = sum(r["measured"] for r in estimate["runs"])
    return [
        f"mcn_sweep estimate ({len(estimate['runs'])} runs, {estimate['jobs']} side by side, rates measured "
        f"with {estimate['jobs']} probe process(es) at once; {measured} of them measured"
        + (", the others interpolated" if measured < len(estimate["runs"]) else "") + "): "
        f"{estimate['wall_hours']:.2f} h wall, {estimate['job_hours']:.2f} h of job time",
        f"  per epoch: 60,000 training digits at the measured rate + evaluation of 10,000 test digits "
        f"({estimate['eval_seconds_per_epoch']:.2f} s) + checkpoint "
        f"({estimate['checkpoint_seconds']:.2f} s); "
        f"per run: start-up {estimate['startup_seconds']:.1f} s",
    ]


def machine() -> dict:
    """The CPU the numbers are from (``perf.cpu_fingerprint()``: model, kernel flags, cores, torch, oneDNN),
    the GPU where there is one, where normexp's CPU settings came from (this machine's measurement or the
    built-in fallback), the load."""
    cache = perf.cache_path()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {**perf.cpu_fingerprint(), "gpu": gpu, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_rule": cache.name if perf.load_cache(cache) is not None else "fallback",
            "cpu_rule_path": str(cache),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}  # fmt: skip


def machine_line(m: dict) -> str:
    load = ", ".join(f"{v:.2f}" for v in m["load_average"]) if m["load_average"] else "?"
    rule = ("built-in fallback rule" if m["cpu_rule"] == "fallback"
            else f"measured rule ({m['cpu_rule_path']})")  # fmt: skip
    gpu = f"GPU: {m['gpu']}; " if m.get("gpu") else ""
    return (f"{gpu}CPU: {m['model']}, {m['cores']} cores ({m['capability']}), torch {m['torch']}, oneDNN "
            f"{m['onednn']}; normexp's CPU settings: {rule}; load average {load} (1, 5, 15 min)")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str], list[int]]:
    """The options, checked (one line and exit code 2 for a bad one), and the norms and batch sizes."""
    parser = validation.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--norms", default=NORMS, help=f"comma-separated (default {NORMS})")
    parser.add_argument("--batch-sizes", default=BATCH_SIZES, help=f"comma-separated (default {BATCH_SIZES})")
    parser.add_argument("--steps", type=int, default=0, help="steps per timed block (default: --seconds)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="length of a timed block of the reference, and of a probe's timing (default 1)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed blocks of each loop per row (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--data-root", type=Path, help="MNIST in torchvision's layout (default: synthetic)")
    parser.add_argument("--jobs", type=int, default=perf.available_cores(),
                        help="runs side by side in the sweep estimate, as hydra/launcher=joblib's n_jobs "
                        "(default: the number of cores)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help="where to write the results (default outputs/bench/bench.json)")
    parser.add_argument("--synthetic-size", default=f"{FULL_TRAIN},{FULL_TEST}", help=argparse.SUPPRESS)
    parser.add_argument("--packed", action="store_true",
                        help="3 seeds packed vs one after another vs 1 seed (default --norms gn,bn "
                        "--batch-sizes 1,2,4,16,256)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # NORM,BATCH: this process is one probe
    args = parser.parse_args(argv)
    if args.packed:
        args.norms = "gn,bn" if args.norms == NORMS else args.norms
        args.batch_sizes = "1,2,4,16,256" if args.batch_sizes == BATCH_SIZES else args.batch_sizes
        if args.json == DEFAULT_JSON:
            args.json = DEFAULT_JSON.with_name("packed.json")
    try:
        norms, sizes = args.norms.split(","), validation.int_list(args.batch_sizes)
    except ValueError:
        parser.error(f"--batch-sizes={args.batch_sizes}: comma-separated integers >= 1")
    for name in norms:
        if name not in norm.NORM_NAMES:
            parser.error(f"--norms={args.norms}: {name!r} is unknown; allowed: {', '.join(norm.NORM_NAMES)}")
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        allowed = "cpu, cuda" if torch.cuda.is_available() else "cpu (no CUDA device here)"
        parser.error(f"--device={args.device}: allowed: {allowed}")
    for key in ("repeats", "jobs"):
        if getattr(args, key) < 1:
            parser.error(f"--{key}={getattr(args, key)}: must be an integer >= 1")
    if args.steps < 0 or args.seconds <= 0:
        parser.error("--steps must be >= 0 and --seconds > 0")
    return args, norms, sizes


def main(argv: list[str] | None = None) -> int:
    args, norms, sizes = parse_args(argv)
    if args.probe:
        name, batch_size = args.probe.split(",")
        print(json.dumps(probe(name, int(batch_size), args, args.data_root)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        data_root = args.data_root
        if data_root is None:
            n_train, n_test = validation.int_list(args.synthetic_size)
            data_root = data.write_synthetic_mnist(Path(tmp), n_train, n_test)
        if args.packed:
            return bench_packed(norms, sizes, args, data_root)
        return bench_against_reference(norms, sizes, args, data_root)


def measure_rows(title: str, measure: Callable[..., dict], line: Callable[[dict], str],
                 norms: list[str], sizes: list[int], args: argparse.Namespace,
                 data_root: Path) -> tuple[dict, list[dict]]:
    """``measure(norm, batch_size, args, data_root)`` for every norm and batch size, a line printed for each
    as it comes; the machine as at the start, and the rows."""
    start = machine()
    print(f"{title} on {args.device}, {perf.available_cores()} cores; {args.repeats} interleaved blocks each",
          flush=True)
    print(machine_line(start), flush=True)
    rows = []
    for name in norms:
        for batch_size in sizes:
            rows.append(measure(name, batch_size, args, data_root))
            print(f"  {name:4s} bs {batch_size:3d}: {line(rows[-1])}", flush=True)
    return start, rows


def bench_against_reference(norms: list[str], sizes: list[int], args: argparse.Namespace,
                            data_root: Path) -> int:
    """normexp's loop against pytorch/examples' per norm and batch size, then probes of real runs for the
    box's throughput and the sweep estimate; the table printed, the JSON written."""
    start, rows = measure_rows(
        "normexp vs the pytorch/examples loop", compare,
        lambda r: (f"normexp {r['normexp_samples_per_s']:8.0f}/s  "
                   f"reference {r['reference_samples_per_s']:8.0f}/s  {r['ratio']:.2f}x; "
                   f"epoch {r['normexp_epoch_s']:.1f} s against {r['reference_epoch_s']:.1f} s, "
                   f"{r['epoch_ratio']:.2f}x"),
        norms, sizes, args, data_root)
    runs = sweep_runs(data_root, args.device)
    wanted = {(n, b) for n in norms for b in sizes}
    print(f"probing {len(wanted)} real set-ups, {args.jobs} at a time ...", flush=True)
    probes = run_probes([(n, b) for n, b, _ in runs if (n, b) in wanted]
                        + sorted(wanted - {(n, b) for n, b, _ in runs}), args, data_root)
    for r in rows:  # what the box does in a sweep: --jobs runs side by side, each at its probe's rate
        found = probes[(r["norm"], r["batch_size"])]
        r["peak_rss_mb"], r["box_samples_per_s"] = found["peak_rss_mb"], args.jobs * found["samples_per_s"]
        r["box_ratio"] = r["box_samples_per_s"] / r["reference_samples_per_s"]
    estimate = sweep_estimate(probes, runs, args.jobs)
    print()
    end = machine()
    print(machine_line(end))
    print(table(rows, args.jobs))
    print()
    for line in sweep_lines(estimate):
        print(line)
    return write_result(args, start, end, rows=rows, probes=list(probes.values()), sweep=estimate)


def bench_packed(norms: list[str], sizes: list[int], args: argparse.Namespace, data_root: Path) -> int:
    start, rows = measure_rows(
        "3 seeds packed vs one after another vs 1 seed", compare_packed,
        lambda r: (f"1 seed {r['one_ms_per_step']:7.3f} ms, packed {r['packed_price']:.2f}x, "
                   f"one after another {r['sequential_price']:.2f}x"),
        norms, sizes, args, data_root)
    estimate = packed_sweep_estimate(rows, sweep_runs(data_root, args.device))
    end = machine()
    print()
    print(machine_line(end))
    print(packed_table(rows))
    print(f"\nmcn_sweep, 3 seeds, complete MNIST (estimated from these step times, one job at a time): "
          f"{estimate['three_seeds_job_hours']:.2f} h of job time, {estimate['price']:.2f}x its one-seed "
          "sweep "
          f"({estimate['one_seed_job_hours']:.2f} h); three one-seed sweeps: "
          f"{estimate['three_one_seed_sweeps_job_hours']:.2f} h")
    return write_result(args, start, end, rows=rows, sweep=estimate)


def write_result(args: argparse.Namespace, start: dict, end: dict, **parts: Any) -> int:
    """The machine (as at the end, with the load at the start), the arguments and ``parts`` as --json."""
    result = {"machine": {**end, "load_average_start": start["load_average"]},
              "args": {k: str(v) for k, v in vars(args).items()}, **parts}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
