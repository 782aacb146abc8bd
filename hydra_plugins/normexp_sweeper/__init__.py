"""normexp's default sweeper: Hydra's basic sweeper (the same grid, the same jobs and folders) launching the
jobs longest expected first (``normexp.analysis.sweeps.by_expected_time``), so that under a parallel launcher
(joblib, submitit, SLURM) the longest jobs, the smallest batch sizes, never start last and run alone at the
end. ``hydra/sweeper=basic`` launches in grid order again.

It subclasses Hydra's basic sweeper, whose class Hydra keeps in ``hydra._internal`` (there is no public
form); tests/test_sweeps.py runs real sweeps under it and checks their launch order, so a change in Hydra
fails there loudly."""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override

from normexp.analysis import sweeps


class LongestFirstSweeper(BasicSweeper):
    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
        """The grid's jobs (as the basic sweeper expands them), longest expected first, in batches of at most
        ``max_batch_size``."""
        jobs = sweeps.by_expected_time(self.config, _jobs(BasicSweeper.split_arguments(overrides, None)))
        size = max_batch_size or max(1, len(jobs))
        return [jobs[i:i + size] for i in range(0, len(jobs), size)]


def _jobs(batches: Sequence[Sequence[Sequence[str]]]) -> list[list[str]]:
    return [list(job) for batch in batches for job in batch]
