"""How many jobs share the machine, by the sweep's Hydra launcher."""

from __future__ import annotations

import pytest

from normexp import launchers, perf


def test_outside_a_sweep_one_job_runs():
    assert launchers.parallel_jobs() == 1


@pytest.mark.parametrize(
    ("launcher", "jobs"),
    [
        ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, 8),
        ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 3}, 3),
        ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"}, 8),
        ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
          "cpus_per_task": 2}, 4),
        ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}, 1),
        ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 1),
    ],
)
def test_jobs_sharing_the_box_follow_the_launcher(monkeypatch, launcher, jobs):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    monkeypatch.setattr(perf, "available_cores", lambda: 8)
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: OmegaConf.create({"launcher": launcher})))
    assert launchers.parallel_jobs() == jobs
