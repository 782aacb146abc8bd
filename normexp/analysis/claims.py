"""The writeup's claims, decided by the runs of a results table (``results.load``), per protocol.

Each criterion in one line:
- converges: the run completed with a final validation error of at most 10 % (chance is 90 %);
- diverges: the run diverged (a loss above ``train.max_loss`` or not finite), or it ended at 50 % validation
  error or more (stuck near chance: what the writeup calls "exploded" is this too);
- unstable: it converges, but over the second half of its epochs its validation error swings by more than
  1 percentage point (highest minus lowest), or it ends above twice its best;
- about equal: the normalizers' mean final errors lie within 0.5 percentage points of each other.
A claim about several seeds holds where it holds for most of them (more than half). Only finished runs
(completed or diverged) decide; a claim with a run still unfinished or not started yet (planned by its sweep,
``results.not_started``), or with no finished run of a norm it needs, is "not decided".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

CONVERGED_MAX, STUCK_MIN, SWING_MAX, EQUAL_SPREAD = 0.10, 0.50, 0.01, 0.005
NORMALIZERS = ("bn", "brn", "gn")
FINISHED = ("completed", "diverged")


def final_errors(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run and protocol (a run may stand for two: its own, and as a norm's best rate): norm,
    batch size, seed, status, final and best validation error, and its swing (highest minus lowest
    validation error over the second half of its epochs)."""
    rows = []
    for (run_dir, protocol), run in df.groupby(["run_dir", "protocol"], sort=False):
        epochs = run.dropna(subset=["epoch"]).sort_values("epoch")
        late = epochs["val_error"].iloc[len(epochs) // 2 :]
        first = run.iloc[0]
        rows.append({"run_dir": run_dir, "protocol": protocol, "norm": first["norm"],
                     "batch_size": first["batch_size"],
                     "seed": first["seed"], "status": first["status"],
                     "final": epochs["val_error"].iloc[-1] if len(epochs) else float("nan"),
                     "best": epochs["val_error"].min() if len(epochs) else float("nan"),
                     "swing": late.max() - late.min() if len(late) else float("nan")})
    return pd.DataFrame(rows)


def diverges(run: pd.Series) -> bool:
    return run["status"] == "diverged" or run["final"] >= STUCK_MIN


def converges(run: pd.Series) -> bool:
    return run["status"] == "completed" and run["final"] <= CONVERGED_MAX


def unstable(run: pd.Series) -> bool:
    return converges(run) and (run["swing"] > SWING_MAX or run["final"] > 2 * run["best"])


@dataclass(frozen=True)
class Claim:
    batch_sizes: tuple[int, ...]
    norms: tuple[str, ...]  # the runs it is decided on (and waits for)
    text: str
    decide: Callable[[pd.DataFrame], tuple[bool | None, str]]  # runs at those sizes -> (holds, numbers)


def _most(runs: pd.DataFrame, test: Callable[[pd.Series], bool]) -> bool | None:
    return None if runs.empty else runs.apply(test, axis=1).mean() > 0.5


def _numbers(runs: pd.DataFrame, norms: tuple[str, ...]) -> str:
    """Final validation error per norm and batch size: mean ± std over seeds (n), diverged runs counted."""
    parts = []
    for (norm, bs), group in runs[runs["norm"].isin(norms)].groupby(["norm", "batch_size"]):
        done = group[group["status"] == "completed"]["final"] * 100
        text = f"{norm} bs {bs}: " + (f"{done.mean():.2f}" if len(done) else "–")
        text += f" ± {done.std():.2f}" if len(done) > 1 else ""
        diverged = int((group["status"] == "diverged").sum())
        parts.append(text + f" % (n={len(group)}" + (f", {diverged} diverged)" if diverged else ")"))
    return "; ".join(parts) or "no runs"


def _all_equal(runs: pd.DataFrame) -> tuple[bool | None, str]:
    means = runs[runs["norm"].isin(NORMALIZERS) & (runs["status"] == "completed")].groupby("norm")["final"]
    means = means.mean()
    holds = None if len(means) < len(NORMALIZERS) else bool(means.max() - means.min() <= EQUAL_SPREAD)
    return holds, _numbers(runs, ("none", *NORMALIZERS))


def _baseline_diverges(runs: pd.DataFrame) -> tuple[bool | None, str]:
    return _most(runs[runs["norm"] == "none"], diverges), _numbers(runs, ("none",))


def _bn_unstable_others_stable(runs: pd.DataFrame) -> tuple[bool | None, str]:
    bn = _most(runs[runs["norm"] == "bn"], lambda r: diverges(r) or unstable(r))
    stable = [_most(runs[runs["norm"] == n], lambda r: converges(r) and not unstable(r))
              for n in ("brn", "gn")]
    verdicts = [bn, *stable]
    return (None if None in verdicts else all(verdicts)), _numbers(runs, NORMALIZERS)


def _only_gn_converges(runs: pd.DataFrame) -> tuple[bool | None, str]:
    verdicts = [_most(runs[(runs["norm"] == "gn") & (runs["batch_size"] == bs)], converges)
                for bs in sorted(runs["batch_size"].unique())]
    verdicts += [_most(runs[(runs["norm"] == n) & (runs["batch_size"] == bs)], lambda r: not converges(r))
                 for n in ("bn", "brn") for bs in sorted(runs["batch_size"].unique())]
    return (None if not verdicts or None in verdicts else all(verdicts)), _numbers(runs, NORMALIZERS)


CLAIMS = (
    Claim((256,), ("none", *NORMALIZERS), "bs 256: all normalizers about equal", _all_equal),
    Claim((16,), ("none",), "bs 16: the baseline diverges", _baseline_diverges),
    Claim((4,), NORMALIZERS, "bs 4: BN unstable, BRN and GN stable", _bn_unstable_others_stable),
    Claim((2, 1), NORMALIZERS, "bs 2 and 1: only GN converges", _only_gn_converges),
)


def claims_table(df: pd.DataFrame, not_started: pd.DataFrame | None = None) -> pd.DataFrame:
    """A row per claim, per protocol in ``df`` (or ``not_started``, the runs its sweeps planned that have no
    folder yet): whether its finished runs reproduce it (yes, no, or "not decided" where runs are missing,
    unfinished or not started) and the numbers it was decided on."""
    runs = final_errors(df)
    waiting = pd.DataFrame(columns=["protocol", "norm", "batch_size"]) if not_started is None else not_started
    rows = []
    for claim in CLAIMS:
        row = {"claim": claim.text}
        for protocol in sorted({*runs["protocol"], *waiting["protocol"]}):
            at = _runs_of(runs, protocol, claim)
            finished = at[at["status"].isin(FINISHED)]
            holds, numbers = claim.decide(finished)
            unfinished, planned = len(at) - len(finished), len(_runs_of(waiting, protocol, claim))
            for count, what in ((unfinished, "unfinished"), (planned, "not started")):
                if count:
                    holds, numbers = None, f"{numbers}; {count} {what}"
            row[protocol] = ({True: "yes", False: "no", None: "not decided"}[holds] + ": " + numbers)
        rows.append(row)
    return pd.DataFrame(rows)


def _runs_of(runs: pd.DataFrame, protocol: str, claim: Claim) -> pd.DataFrame:
    return runs[(runs["protocol"] == protocol) & runs["norm"].isin(claim.norms)
                & runs["batch_size"].isin(claim.batch_sizes)]


def claims_markdown(table: pd.DataFrame) -> str:
    columns = list(table.columns)
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
