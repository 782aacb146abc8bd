"""The sweeps (owns ``conf/experiment``: each preset is a Hydra multirun of the basic sweeper): the jobs of a
sweep, listed exactly as Hydra's basic sweeper will launch them, without importing torch."""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

PACK_JOB_FILES = ".pack"  # a job of train.seeds keeps Hydra's files here: its seeds' folders hold .hydra/


def job_files(seeds: object) -> str:
    """hydra.output_subdir (conf/config.yaml): .hydra, or PACK_JOB_FILES for a job of ``train.seeds``."""
    return ".hydra" if seeds is None else PACK_JOB_FILES


OmegaConf.register_new_resolver("normexp_job_files", job_files, replace=True)


def is_basic_sweeper(config: DictConfig) -> bool:
    """Whether the sweep runs under Hydra's basic sweeper (the one whose jobs can be listed up front)."""
    return str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper")


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of every job of a sweep, expanded as Hydra's basic sweeper will expand them; None for
    other sweepers (their jobs are checked one by one as they start)."""
    if not is_basic_sweeper(config):
        return None
    # Hydra's own expansion (a public static method of a class in its _internal package), so that the jobs
    # listed here are exactly the jobs it will launch
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    arguments = params + list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


# The two protocols of the writeup: its text (the learning rate scaled with the batch size, PyTorch's
# conventions) and its code (mcn_code_sweep); the settings that tell them apart, as "key: value"
PROTOCOLS = {
    "text": {"optim.scaling": "linear", "optim.factors": "none", "norm.moments": "pytorch"},
    "code": {"optim.scaling": "none", "optim.factors": "autonn", "norm.moments": "matconvnet"},
}


def protocol_settings(config: DictConfig | dict) -> dict[str, str]:
    """The values of the protocol keys in a run's configuration (a norm without moving statistics counts
    as following whichever protocol its other settings follow)."""
    optim, norm = config["optim"], config["norm"]
    return {"optim.scaling": optim["scaling"], "optim.factors": optim.get("factors", "none"),
            "norm.moments": norm.get("moments")}


def protocol_name(settings: dict[str, str | None]) -> str:
    """"text" or "code" where the settings are one protocol's, else the settings themselves."""
    for name, protocol in PROTOCOLS.items():
        if all(settings[k] in (v, None) for k, v in protocol.items()):
            return name
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in settings.items() if v is not None)
