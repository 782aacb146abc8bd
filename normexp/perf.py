"""CPU settings of a run (threads, oneDNN, memory layout), from its batch size and the jobs sharing the box.

Chosen by measurement on this project's 2-core machine (AMD EPYC, torch 2.14; ``scripts/bench.py`` and the
README's Performance section). Samples/s of whole training steps of one job alone on the box, 2 threads,
medians of 5 interleaved blocks (the machine is shared: repeated measurements move by up to 15 %):

    batch size              1      2      4      8     16     32     64    128    256
    GN, native, NCHW      1620   2518   3663   5042   2509   2919
    GN, oneDNN, NCHW                            3270   4740   6191   6942   7471
    GN, oneDNN, NHWC                                   4362   5840   7494   8791
    BN, native, NCHW      1494   2404   3606   4834   2405   2804
    BN, oneDNN, NCHW                            3130   4406   5597   5863   7053   7065
    BN, oneDNN, NHWC                            2288   4748   4748   5576   7776   8052
    one thread instead of two, native: GN 1388, 1964, 2727, 3249 and BN 1326, 1835, 2626, 3137 (1 to 8);
    at batch size 1, a repetition an hour later: GN 1310 on one thread, 1084 on two; BN 1139 and 898

Up to batch size 8 PyTorch's native convolutions are fastest: oneDNN's per-call set-up costs more than it
saves; from 16 on the native ones fall behind. Channels-last (NHWC) lets oneDNN do the arithmetic faster, but
batch norm's CPU kernels and the pooling layers lose some of it again: it pays from batch size 64 on. A second
thread pays from batch size 2 on (at 1 it wins or loses by 15-20 % from one measurement to the next, so one
thread, which cannot stall on a busy sibling core); but two jobs side by side, one core each, use the machine
better than one job on two threads, so "auto" gives each job its share of the cores (see ``parallel_jobs``).
"""

from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import dataclass

import torch

# Under "auto", the largest batch sizes that run on one thread, with PyTorch's native convolutions (oneDNN
# off), and in NCHW; larger ones run in channels-last
ONE_THREAD_MAX = 1
NATIVE_CONV_MAX = 8
NCHW_MAX = 32


@dataclass(frozen=True)
class CpuSettings:
    threads: int
    mkldnn: bool
    channels_last: bool = False  # conv weights, and so activations, in NHWC: oneDNN's fast layout

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# CPU features that decide which kernels torch and oneDNN run (and so how float32 sums are ordered)
KERNEL_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")


def _cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags, from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
                if flags and key == "":
                    break
    except OSError:
        pass
    return model, flags


def cpu_fingerprint() -> dict[str, object]:
    """What decides this machine's CPU kernels: model, kernel-relevant flags, cores, torch and oneDNN."""
    model, flags = _cpu_info()
    return {
        "model": model,
        "machine": platform.machine(),
        "flags": sorted(flags.intersection(KERNEL_FLAGS)),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "cores": available_cores(),
        "torch": torch.__version__,
        "onednn": onednn_version(),
    }


def onednn_version() -> str | None:
    """oneDNN's version as torch's build information states it (torch has no other public accessor)."""
    found = re.search(r"MKL-DNN v([0-9][0-9.]*)", torch.__config__.show())
    return found.group(1) if found else None


def peak_rss_mb() -> float:
    """This process's largest resident set so far, in MB: Linux's VmHWM, or getrusage's maxrss elsewhere
    (on Linux a child's maxrss also counts the resident set its parent had when it forked)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        per_mb = 2**20 if sys.platform == "darwin" else 2**10  # macOS reports bytes, others kilobytes
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mb


def parallel_jobs() -> int:
    """How many jobs of this sweep the launcher runs at once on this machine (1 outside a sweep)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher
    except (ImportError, ValueError):
        return 1
    target = str(launcher.get("_target_", ""))
    if "joblib" in target.lower():
        n_jobs = launcher.get("n_jobs", -1)
        return available_cores() if n_jobs is None or n_jobs < 1 else n_jobs
    if "LocalLauncher" in target:
        # submitit's local launcher starts every job of the sweep at once: the box is shared by as many jobs
        # as it has cores, or by as many as fit when each asks for cpus_per_task
        cpus = launcher.get("cpus_per_task")
        return max(1, available_cores() // cpus) if cpus else available_cores()
    return 1


def choose(
    batch_size: int, device: torch.device, threads="auto", mkldnn="auto", jobs: int = 1, fast: bool = True
) -> CpuSettings:
    """The settings for a run; explicit ``threads``/``mkldnn`` values win over the rule. ``fast`` allows the
    channels-last layout (used with oneDNN on CPU only; the plain path keeps PyTorch's default layout)."""
    cpu = device.type == "cpu"
    cores = max(1, available_cores() // max(1, jobs))
    use_mkldnn = bool(mkldnn) if mkldnn != "auto" else not (cpu and batch_size <= NATIVE_CONV_MAX)
    return CpuSettings(
        threads=int(threads) if threads != "auto" else (1 if cpu and batch_size <= ONE_THREAD_MAX else cores),
        mkldnn=use_mkldnn,
        channels_last=fast and cpu and use_mkldnn and batch_size > NCHW_MAX,
    )


def apply(settings: CpuSettings) -> None:
    """Sets the process-wide parts (threads, oneDNN); the layout is applied to the model by its owner."""
    torch.set_num_threads(settings.threads)
    torch.backends.mkldnn.enabled = settings.mkldnn


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Lays each optimizer state tensor (momentum) out like its parameter, e.g. after loading a checkpoint
    written under another layout: the fused update walks parameter, gradient and state as flat arrays."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param).copy_(value)
