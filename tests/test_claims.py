"""The writeup's claims decided from runs: each criterion on runs made to pass or fail it."""

from __future__ import annotations

import pandas as pd
from fake_runs import make_run

from normexp.analysis import claims, results

CODE = ("optim.scaling=none", "optim.factors=autonn")


def test_each_claim_is_decided_per_protocol(tmp_path):
    s = tmp_path / "sweep"
    for norm, err in (("none", 0.05), ("bn", 0.030), ("brn", 0.032), ("gn", 0.033)):
        make_run(s, norm, 256, 0, (0.2, err))  # about equal: within 0.5 points
    make_run(s, "none", 16, 0, (), status="diverged", diverged_epoch=1)
    make_run(s, "bn", 4, 0, (0.05, 0.02, 0.09, 0.03))  # swings by 7 points in its second half: unstable
    make_run(s, "brn", 4, 0, (0.05, 0.03, 0.03, 0.03))
    make_run(s, "gn", 4, 0, (0.05, 0.03, 0.031, 0.03))
    for bs in (2, 1):
        make_run(s, "gn", bs, 0, (0.05, 0.04))
        make_run(s, "bn", bs, 0, (0.9, 0.8))  # near chance: not converged
        make_run(s, "brn", bs, 0, (), status="diverged", diverged_epoch=1)
    make_run(s, "gn", 256, 0, (0.2, 0.10), extra=CODE)  # the code protocol: one run, other claims not run
    make_run(s, "none", 16, 0, (0.9,), status="unfinished", extra=CODE)  # unfinished: decides nothing
    table = claims.claims_table(results.load([s])).set_index("claim")
    verdicts = table.map(lambda cell: cell.split(":")[0])
    assert verdicts["text"].tolist() == ["yes", "yes", "yes", "yes"]
    assert verdicts["code"].tolist() == ["not decided"] * 4
    assert "gn bs 256: 3.30 % (n=1)" in table.loc["bs 256: all normalizers about equal", "text"]
    assert "brn bs 2: – % (n=1, 1 diverged)" in table.loc["bs 2 and 1: only GN converges", "text"]


def test_a_claim_with_a_run_still_unfinished_is_not_decided(tmp_path):
    s = tmp_path / "sweep"
    make_run(s, "bn", 4, 0, (0.05, 0.02, 0.09, 0.03))
    make_run(s, "brn", 4, 0, (0.05, 0.03, 0.03, 0.03))
    make_run(s, "gn", 4, 0, (0.05, 0.03, 0.031, 0.03))
    claim = "bs 4: BN unstable, BRN and GN stable"
    decided = claims.claims_table(results.load([s])).set_index("claim").loc[claim]
    make_run(s, "gn", 4, 1, (0.05,), status="unfinished")  # a second seed that could still turn the claim
    waiting = claims.claims_table(results.load([s])).set_index("claim").loc[claim]
    assert decided["text"].startswith("yes: ")
    assert waiting["text"] == decided["text"].replace("yes: ", "not decided: ") + "; 1 unfinished"


def test_a_claim_waits_for_the_runs_its_sweep_planned_but_has_not_started(tmp_path):
    s = tmp_path / "sweep"
    for norm in ("bn", "brn", "gn"):
        make_run(s, norm, 4, 0, (0.05, 0.02, 0.09, 0.03) if norm == "bn" else (0.05, 0.03, 0.03, 0.03))
    claim = "bs 4: BN unstable, BRN and GN stable"
    decided = claims.claims_table(results.load([s]), results.not_started([s])).set_index("claim").loc[claim]
    # the sweep planned seeds 0 and 1, and the baseline, which this claim does not need; none of them started
    (s / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper\n"
        "    params:\n      norm: none,bn,brn,gn\n      batch_size: '4'\n      train.seed: 0,1\n"
        "  overrides:\n    task: []\n")
    waiting = claims.claims_table(results.load([s]), results.not_started([s])).set_index("claim").loc[claim]
    assert decided["text"].startswith("yes: ")
    assert waiting["text"] == decided["text"].replace("yes: ", "not decided: ") + "; 3 not started"


def test_criteria():
    run = pd.Series({"status": "completed", "final": 0.03, "best": 0.02, "swing": 0.005})
    assert claims.converges(run) and not claims.unstable(run) and not claims.diverges(run)
    assert claims.unstable(run.copy().replace({0.005: 0.02}))  # a 2-point swing
    assert claims.unstable(pd.Series({"status": "completed", "final": 0.05, "best": 0.02, "swing": 0.0}))
    stuck = pd.Series({"status": "completed", "final": 0.6, "best": 0.5, "swing": 0.0})
    assert claims.diverges(stuck) and not claims.converges(stuck)
