"""The writeup's own results (``writeup.csv``: final errors read off its figures) and which of normexp's runs
can be held beside them: MNIST with all 60,000 training digits, and the writeup's number of epochs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

CSV = Path(__file__).with_name("writeup.csv")
TRAIN_DIGITS = 60_000  # the complete MNIST training set
EPOCHS, EPOCHS_AT = 30, {1: 10}  # 10 at batch size 1
DIVERGED = "div"


def epochs(batch_size: int) -> int:
    return EPOCHS_AT.get(int(batch_size), EPOCHS)


def final_errors() -> pd.DataFrame:
    """norm, batch_size, writeup (the text as read off: a number in %, "div", or "" for no run) and
    writeup_error (as a fraction, like normexp's errors; NaN unless a number)."""
    table = pd.read_csv(CSV, comment="#", dtype={"writeup": str}, keep_default_na=False)
    table["writeup_error"] = pd.to_numeric(table["writeup"], errors="coerce") / 100
    return table


def comparable(runs: pd.DataFrame) -> pd.Series:
    """Per run (``results.runs`` rows): trained on the writeup's data for the writeup's number of epochs."""
    planned = runs["batch_size"].map(epochs)
    return (runs["data"] == "mnist") & (runs["train_digits"] == TRAIN_DIGITS) & (runs["epochs"] == planned)
