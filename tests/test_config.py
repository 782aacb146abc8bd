"""Bad command lines through the real CLI: one line naming the key, the value and what is allowed, exit != 0,
and no run or sweep folder made."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import ROOT, compose_config, run_cli_many, write_mnist

# any download attempt meets a closed port: fast, and the same with or without network
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}
FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"

def choices(group: str) -> str:
    return ", ".join(sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")))


NORMS, PRESETS = choices("norm"), choices("experiment")
# name: (overrides, the one line expected after "normexp: error: "); {data}, {empty}: data roots; a first
# override "-m" makes it a sweep. The tiny training split has 200 digits.
CASES = {  # through the CLI: one of each kind of check (composition, values, custom import, data, sweeps)
    "unknown norm": (["norm=foo"], f"norm='foo': unknown; allowed: {NORMS}"),
    "unknown data": (["data=foo"], "data='foo': unknown; allowed: fashion_mnist, mnist"),
    "unknown experiment": (["experiment=foo"], f"experiment='foo': unknown; allowed: {PRESETS}"),
    "batch_size 0": (["batch_size=0"], "batch_size=0: must be an integer >= 1"),
    "batch_size > split": (["batch_size=201"],
                           "batch_size=201: larger than the 200 examples of the training split"),
    "gn groups 3": (["norm=gn", "norm.groups=3"],
                    "norm.groups=3: must divide every layer's channel count (20, 50, 500)"),
    "custom target not importing": (["norm=custom", "norm.target=nopkg.layers.MyNorm"],
                                    "norm.target='nopkg.layers.MyNorm': does not import (ImportError: Error "
                                    "loading 'nopkg.layers.MyNorm': ModuleNotFoundError(\"No module named "
                                    "'nopkg'\") Are you sure that module 'nopkg' is installed?)"),
    "cuda without gpu": (["train.device=cuda"],
                         "train.device='cuda': no CUDA device is available here; allowed: auto, cpu"),
    "data missing, no download": (["data.root={empty}", "data.download=false"],
                                  "data.root='{empty}': no mnist data in {empty}/MNIST/raw and "
                                  f"data.download=false; expected the files {FILES}"),
    "data missing, download fails": (["data.root={empty}"],
                                     "data.root='{empty}': no usable mnist data in {empty}/MNIST/raw: the "
                                     "download failed (<urlopen error [Errno 111] Connection refused>); "
                                     f"expected the files {FILES}"),
    "sweep with a bad batch size": (["-m", "batch_size=4,0"], "batch_size=0: must be an integer >= 1"),
    "sweep with an unknown norm": (["-m", "norm=gn,foo"],
                                   f"norm='foo': unknown; allowed: {NORMS}"),
    "sweep, one job > split": (["-m", "batch_size=4,201"],
                               "batch_size=201: larger than the 200 examples of the training split"),
}
VALUE_CASES = {  # the other values, checked in-process by the same function (normexp.config.problems)
    "batch_size -1": (["batch_size=-1"], "batch_size=-1: must be an integer >= 1"),
    "batch_size abc": (["batch_size=abc"], "batch_size='abc': must be an integer >= 1"),
    "batch_size 2.5": (["batch_size=2.5"], "batch_size=2.5: must be an integer >= 1"),
    "epochs 0": (["train.epochs=0"], "train.epochs=0: must be an integer in [1, 1000002]"),
    "lr 0": (["optim.lr=0"], "optim.lr=0: must be a number > 0 or 'auto'"),
    "lr negative": (["optim.lr=-0.1"], "optim.lr=-0.1: must be a number > 0 or 'auto'"),
    "momentum 1": (["optim.momentum=1.0"], "optim.momentum=1.0: must be a number in [0, 1)"),
    "momentum negative": (["optim.momentum=-0.1"], "optim.momentum=-0.1: must be a number in [0, 1)"),
    "gn groups 0": (["norm=gn", "norm.groups=0"],
                    "norm.groups=0: must be a positive integer or 'per_channel'"),
    "brn r_max < 1": (["norm=brn", "norm.r_max=0.5"], "norm.r_max=0.5: must be a number >= 1"),
    "brn d_max < 0": (["norm=brn", "norm.d_max=-1"], "norm.d_max=-1: must be a number >= 0"),
    "brn r_max a bool": (["norm=brn", "norm.r_max=true"], "norm.r_max=True: must be a number >= 1"),
    "frn eps 0": (["norm=frn", "norm.eps=0"], "norm.eps=0: must be a number > 0"),
    "frn tlu": (["norm=frn", "norm.tlu=first"], "norm.tlu='first': allowed: relu, every"),
    "frn learn_eps": (["norm=frn", "norm.learn_eps=maybe"], "norm.learn_eps='maybe': must be true or false"),
    "ws_gn ws_eps < 0": (["norm=ws_gn", "norm.ws_eps=-1"], "norm.ws_eps=-1: must be a number > 0"),
    "evonorm_s0 groups 3": (["norm=evonorm_s0", "norm.groups=3"],
                            "norm.groups=3: must divide every layer's channel count (20, 50, 500)"),
    "custom without target": (["norm=custom"], "norm.target=None: must be the import path of a "
                              "torch.nn.Module class, e.g. mypkg.layers.MyNorm"),
    "custom wrong signature": (["norm=custom", "norm.target=torch.nn.ReLU", "+norm.kwargs.inplace=true"],
                               "norm.target='torch.nn.ReLU': cannot be called as torch.nn.ReLU(num_channels="
                               "20, **norm.kwargs): it must accept num_channels (TypeError: got an "
                               "unexpected keyword argument 'num_channels')"),
}


def command(overrides: list[str], folder: Path, data: Path) -> list[str]:
    """The overrides, with the run (or sweep) folder and the tiny data unless they name their own."""
    sweep = overrides[:1] == ["-m"]
    where = f"hydra.sweep.dir={folder}" if sweep else f"hydra.run.dir={folder}"
    root = [] if any(o.startswith("data.root=") for o in overrides) else [f"data.root={data}"]
    return [*overrides[:1], where, *root, *overrides[1:]] if sweep else [where, *root, *overrides]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    """Every case run once, all together (each is a second or two of start-up); name -> (result, folder, empty
    data root)."""
    base = tmp_path_factory.mktemp("bad_input")
    data = write_mnist(base / "data")
    cases = {}
    for i, (name, (overrides, _)) in enumerate(CASES.items()):
        folder, empty = base / f"out{i}", base / f"empty{i}"
        cases[name] = (command([o.format(empty=empty) for o in overrides], folder, data), folder, empty)
    results = run_cli_many([args for args, _, _ in cases.values()], env=NO_NETWORK)
    return {name: (result, folder, empty)
            for (name, (_, folder, empty)), result in zip(cases.items(), results, strict=True)}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_clear_line_and_no_folder(outcomes, name):
    if name == "cuda without gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is available here")
    result, folder, empty = outcomes[name]
    expected = "normexp: error: " + CASES[name][1].format(empty=empty)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [expected], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not folder.exists()


@pytest.mark.parametrize("name", VALUE_CASES)
def test_bad_values_are_the_one_line_the_cli_prints(tiny_mnist, name):
    from normexp.config import problems

    overrides, line = VALUE_CASES[name]
    base = [] if any(o.startswith("batch_size=") for o in overrides) else ["batch_size=8"]
    assert problems(compose_config([f"data.root={tiny_mnist}", *base, *overrides])) == [line]


MORE = {  # the other keys, checked in-process (the CLI path is the same as above): override -> the line
    "optim.scaling=cubic": "optim.scaling='cubic': allowed: linear, sqrt, none",
    "optim.weight_decay=-1": "optim.weight_decay=-1: must be a number >= 0",
    "optim.ref_batch_size=0": "optim.ref_batch_size=0: must be an integer >= 1",
    "norm.eps=0": "norm.eps=0: must be a number > 0",
    "train.seed=-1": "train.seed=-1: must be an integer in [0, 18446688733642]",
    "train.seed=9223372036854775807": "train.seed=9223372036854775807: must be an integer in [0, "
                                      "18446688733642]",
    "train.device=tpu": "train.device='tpu': allowed: auto, cpu, cuda",
    "train.resume=maybe": "train.resume='maybe': must be true or false",
    "train.max_loss=0": "train.max_loss=0: must be a number > 0",
    "train.eval_batch_size=0": "train.eval_batch_size=0: must be an integer >= 1",
    "train.threads=0": "train.threads=0: must be 'auto' or an integer >= 1",
    "data.download=maybe": "data.download='maybe': must be true or false",
}


def test_other_bad_values_and_several_at_once(tmp_path):
    from normexp.config import problems

    data = f"data.root={write_mnist(tmp_path / 'data')}"
    for override, line in MORE.items():
        assert problems(compose_config([data, "batch_size=8", override])) == [line]
    brn = ["norm=brn", "norm.alpha=0", "norm.schedule.unit=epochs", "norm.schedule.ramp=-1"]
    assert problems(compose_config([data, *brn, "batch_size=0", "train.epochs=0"])) == [
        "norm.alpha=0: must be a number in (0, 1]",
        "norm.schedule.unit='epochs': allowed: epoch, step",
        "norm.schedule.ramp=-1: must be a number >= 0",
        "train.epochs=0: must be an integer in [1, 1000002]",
        "batch_size=0: must be an integer >= 1",
    ]  # every problem, one line each
    fine = [data, "batch_size=200", "norm.groups=per_channel"]  # the whole split in one batch is fine
    assert problems(compose_config(fine)) == []


BOOLS_AND_NON_FINITE = {  # a bool is no number here, though Python counts it as an int; nor is inf or nan
    ("norm=bn", "norm.eps=true"): "norm.eps=True: must be a number > 0",
    ("norm=bn", "norm.momentum=true"): "norm.momentum=True: must be a number in [0, 1]",
    ("norm=bn", "norm.momentum=false"): "norm.momentum=False: must be a number in [0, 1]",
    ("norm=brn", "norm.d_max=true"): "norm.d_max=True: must be a number >= 0",
    ("norm=brn", "norm.alpha=true"): "norm.alpha=True: must be a number in (0, 1]",
    ("norm=brn", "norm.r_max=inf"): "norm.r_max=inf: must be a number >= 1",
    ("norm=brn", "norm.schedule.ramp=inf"): "norm.schedule.ramp=inf: must be a number >= 0",
    ("norm=gn", "norm.eps=nan"): "norm.eps=nan: must be a number > 0",
    ("optim.lr=inf",): "optim.lr=inf: must be a number > 0 or 'auto'",
    ("optim.weight_decay=nan",): "optim.weight_decay=nan: must be a number >= 0",
    ("train.seed=" + "9" * 30,): f"train.seed={'9' * 30}: must be an integer in [0, 18446688733642]",
}


@pytest.mark.parametrize("overrides", BOOLS_AND_NON_FINITE, ids=" ".join)
def test_bools_infinities_nans_and_huge_integers_are_rejected(tmp_path, overrides):
    from normexp.config import problems

    data = f"data.root={write_mnist(tmp_path / 'data')}"
    assert problems(compose_config([data, "batch_size=8", *overrides])) == [BOOLS_AND_NON_FINITE[overrides]]
