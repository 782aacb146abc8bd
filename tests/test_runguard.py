"""A run folder holds one run and one writer, through the real CLI: resume only what the folder holds (every
kind of difference refused before anything is touched, .hydra/ included), train.resume=false keeps the old
results aside, one process per folder (a second run stops naming the PID, two copies of a sweep divide the
jobs), corrupt or foreign run files and a full or read-only disk are one line each; and a sweep stopped by
SIGTERM or SIGINT to its main process (joblib, submitit_local, basic): the running jobs save an interrupted
checkpoint, no job starts after the signal, no process is left, one line, and the same command resumes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, run_cli, run_cli_many, start_cli, wait_for, write_mnist

from normexp import runguard
from normexp.analysis import runfiles

QUIET = ["train.threads=1", "train.progress=false"]
BASE = {"norm": "gn", "batch_size": "40", "train.epochs": "1"}


def args(run_dir: Path, data: Path, **changes: str) -> list[str]:
    """The base run's command line into ``run_dir``, with some keys changed (``norm__groups`` for
    norm.groups)."""
    settings = {**BASE, **{k.replace("__", "."): v for k, v in changes.items()}}
    return [f"hydra.run.dir={run_dir}", f"data.root={data}", *QUIET,
            *(f"{k}={v}" for k, v in settings.items())]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of the folder and its bytes (the lock file aside: a refused start may take the lock)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != runguard.LOCK}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / runfiles.SUMMARY).read_text())


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("normexp: error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0].removeprefix("normexp: error: ")


@pytest.fixture(scope="module")
def completed(tmp_path_factory):
    """(data root, another root with the same files, a root with other files, a completed 1-epoch run)."""
    base = tmp_path_factory.mktemp("completed")
    data = write_mnist(base / "data")
    same = base / "same"
    shutil.copytree(data, same)
    other = write_mnist(base / "other", n_train=210)
    run_dir = base / "run"
    result = run_cli(*args(run_dir, data))
    assert result.returncode == 0, result.stderr
    return data, same, other, run_dir


REFUSED = {  # name: (changes, a part of the line that names the difference)
    "batch size": ({"batch_size": "20"}, "batch_size: 40 (in the folder) vs 20 (now)"),
    "seed": ({"train.seed": "1"}, "train.seed: 0 (in the folder) vs 1 (now)"),
    "learning rate": ({"optim.lr": "0.02"}, "optim.lr: 'auto' (in the folder) vs 0.02 (now)"),
    "protocol": ({"optim.scaling": "none"}, "optim.scaling: 'linear' (in the folder) vs 'none' (now)"),
    "norm": ({"norm": "bn"}, "norm.groups: 2 (in the folder) vs absent (now)"),
    "data": ({"data.root": "{other}"}, "data file train-images-idx3-ubyte: 156816 bytes, sha256 "),
}


def test_another_run_into_a_folder_is_refused_before_anything_is_touched(completed, tmp_path):
    data, _, other, run_dir = completed
    cases = {}
    for name, (changes, _) in REFUSED.items():
        folder = tmp_path / name.replace(" ", "_")
        shutil.copytree(run_dir, folder)
        changes = {k: v.format(other=other) for k, v in changes.items()}
        cases[name] = (folder, snapshot(folder), args(folder, data, **changes))
    killed = tmp_path / "killed"  # a run killed in its first epoch: summary.json says "running"
    shutil.copytree(run_dir, killed)
    (killed / runfiles.SUMMARY).write_text(json.dumps({**summary(run_dir), "status": "running"}))
    cases["killed, other batch size"] = (killed, snapshot(killed), args(killed, data, batch_size="20"))
    results = run_cli_many([command for _, _, command in cases.values()])
    for (name, (folder, before, _)), result in zip(cases.items(), results, strict=True):
        assert result.returncode == 2, (name, result.stderr)
        line = error_line(result)
        assert line.startswith(f"{folder}: holds another run (") and "use another hydra.run.dir" in line
        assert "train.resume=false" in line
        assert REFUSED.get(name, (None, "batch_size: 40 (in the folder) vs 20 (now)"))[1] in line, line
        assert snapshot(folder) == before, name  # .hydra/ and the log included
    print("\n".join(r.stderr.strip() for r in results))


def test_more_epochs_and_the_same_data_elsewhere_continue_the_run(completed, tmp_path):
    data, same, _, run_dir = completed
    more, elsewhere, speed = tmp_path / "more", tmp_path / "elsewhere", tmp_path / "speed"
    for folder in (more, elsewhere, speed):
        shutil.copytree(run_dir, folder)
    # a run an older normexp started
    marker = json.loads((elsewhere / runfiles.MARKER).read_text()) | {"normexp": "0.0.1"}
    (elsewhere / runfiles.MARKER).write_text(json.dumps(marker))
    results = run_cli_many([args(more, data, train__epochs="2"), args(elsewhere, same),
                            args(speed, data, train__fast="false", train__mkldnn="false")])
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert (summary(more)["status"], summary(more)["epochs_run"]) == ("completed", 2)
    assert "resuming" in (more / "train.log").read_text()
    for folder in (elsewhere, speed):
        assert "already completed after 1 epochs, nothing to do" in (folder / "train.log").read_text()
    assert json.loads((elsewhere / runfiles.MARKER).read_text()) == marker  # where the run came from, kept


def test_folders_without_normexps_marker(completed, tmp_path):
    data, _, _, run_dir = completed
    old, old_other = tmp_path / "old", tmp_path / "old_other"  # normexp runs from before the marker
    for folder in (old, old_other):
        shutil.copytree(run_dir, folder)
        (folder / runfiles.MARKER).unlink()
    foreign = tmp_path / "foreign"  # another tool's run folder
    (foreign / ".hydra").mkdir(parents=True)
    (foreign / ".hydra" / "config.yaml").write_text("model: resnet\n")
    (foreign / runfiles.SUMMARY).write_text(json.dumps({"status": "completed", "epochs_run": 100}))
    not_ours = tmp_path / "not_ours"  # a summary.json of another shape
    not_ours.mkdir()
    (not_ours / runfiles.SUMMARY).write_text(json.dumps({"accuracy": 0.99}))
    before = {d: snapshot(d) for d in (old_other, foreign, not_ours)}
    results = run_cli_many([args(old, data), args(old_other, data, batch_size="20"), args(foreign, data),
                            args(not_ours, data)])
    assert results[0].returncode == 0, results[0].stderr
    log = (old / "train.log").read_text()
    assert "no normexp.json (a run from before it existed): compared with the config in its summary" in log
    assert "already completed" in log and (old / runfiles.MARKER).is_file()
    assert error_line(results[1]).startswith(f"{old_other}: holds another run (batch_size: 40 (in the "
                                             "folder) vs 20 (now))")
    assert error_line(results[2]) == (
        f"{foreign}: holds run files but no normexp.json, and no normexp summary.json with its config: not "
        f"a normexp run folder; use another folder, or {runguard.START_OVER}")
    assert error_line(results[3]) == (
        f"{not_ours / 'summary.json'}: not normexp's summary (status is None; allowed: running, completed, "
        f"diverged, interrupted, failed); {runguard.START_OVER}, or use another folder")
    assert {d: snapshot(d) for d in (old_other, foreign, not_ours)} == before
    print(results[2].stderr, results[3].stderr)


def test_corrupt_run_files_are_one_line_each_and_resume_false_keeps_them_aside(completed, tmp_path):
    data, _, _, run_dir = completed
    cases = {}
    for name in ("garbage checkpoint", "half a checkpoint", "summary a list", "summary not json",
                 "summary not json, no checkpoint"):
        folder = tmp_path / name.replace(" ", "_").replace(",", "")
        shutil.copytree(run_dir, folder)
        (folder / runfiles.SUMMARY).write_text(json.dumps({**summary(run_dir), "status": "interrupted"}))
        cases[name] = folder
    (cases["garbage checkpoint"] / runfiles.CHECKPOINT).write_bytes(b"not a checkpoint at all")
    whole = (run_dir / runfiles.CHECKPOINT).read_bytes()
    (cases["half a checkpoint"] / runfiles.CHECKPOINT).write_bytes(whole[: len(whole) // 2])
    (cases["summary a list"] / runfiles.SUMMARY).write_text("[1]")
    for name in ("summary not json", "summary not json, no checkpoint"):
        (cases[name] / runfiles.SUMMARY).write_text('{"status": "comp')
    (cases["summary not json, no checkpoint"] / runfiles.CHECKPOINT).unlink()
    redo = tmp_path / "redo"
    shutil.copytree(cases["garbage checkpoint"], redo)
    commands = [args(folder, data) for folder in cases.values()] + [args(redo, data, train__resume="false")]
    results = dict(zip([*cases, "redo"], run_cli_many(commands), strict=True))
    failed = ("garbage checkpoint", "half a checkpoint", "summary not json, no checkpoint")
    lines = {name: error_line(results[name]) for name in failed}
    checkpoint = f"{cases['garbage checkpoint'] / runfiles.CHECKPOINT}: unreadable (UnpicklingError: "
    assert lines["garbage checkpoint"].startswith(checkpoint) and lines["garbage checkpoint"].endswith(
        runguard.START_OVER)
    assert "weights_only" not in lines["garbage checkpoint"]  # not torch's advice to load it unsafely
    assert lines["half a checkpoint"].startswith(f"{cases['half a checkpoint'] / runfiles.CHECKPOINT}: "
                                                 "unreadable (")
    no_checkpoint = cases["summary not json, no checkpoint"] / runfiles.SUMMARY
    assert lines["summary not json, no checkpoint"].startswith(f"{no_checkpoint}: unreadable (JSONDecode")
    assert all(results[name].returncode == 2 for name in failed)
    for name in ("summary a list", "summary not json"):  # rebuilt from the checkpoint beside it
        assert results[name].returncode == 0, results[name].stderr
        assert summary(cases[name])["status"] == "completed"
        assert (cases[name] / (runfiles.SUMMARY + ".unreadable")).read_text() in ("[1]", '{"status": "comp')
        assert "unreadable; kept as summary.json.unreadable" in (cases[name] / "train.log").read_text()
    assert results["redo"].returncode == 0, results["redo"].stderr
    [aside] = redo.glob("replaced-*")
    assert (aside / runfiles.CHECKPOINT).read_bytes() == b"not a checkpoint at all"
    assert (aside / ".hydra" / "config.yaml").is_file() and (aside / "train.log").is_file()
    assert summary(redo)["status"] == "completed" and runfiles.load_checkpoint(redo)["epoch"] == 1
    assert f"train.resume=false: moved the previous results of {redo} aside into {aside.name}/" in (
        redo / "train.log").read_text()
    print("\n".join(lines.values()))


def running(run_dir: Path) -> bool:
    try:
        return summary(run_dir)["status"] == "running"
    except (FileNotFoundError, json.JSONDecodeError):
        return False


LONG = ["batch_size=2", "train.epochs=3"]  # 2000 digits: 1000 steps an epoch, killed long before the end


def test_resume_false_then_a_kill_loses_nothing_and_a_second_process_is_refused(completed, tmp_path):
    _, _, _, run_dir = completed
    data = write_mnist(tmp_path / "data", n_train=2000, n_test=50)
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    old_summary = (folder / runfiles.SUMMARY).read_bytes()
    command = [f"hydra.run.dir={folder}", f"data.root={data}", *QUIET, *LONG]
    victim = start_cli(*command, "train.resume=false")
    wait_for(lambda: running(folder), victim, "the new run's summary.json")
    hydra_config = (folder / ".hydra" / "config.yaml").read_bytes()
    second = run_cli(*command)
    line = error_line(second)
    assert second.returncode == 2 and victim.poll() is None, "the first run ended too soon for this test"
    assert line == (f"{folder}: in use by process {victim.pid} (it holds {runguard.LOCK} there); wait for it "
                    "to end, or use another folder")
    assert (folder / ".hydra" / "config.yaml").read_bytes() == hydra_config
    victim.kill()
    victim.wait()
    [aside] = folder.glob("replaced-*")  # the old, completed run, whole
    assert (aside / runfiles.SUMMARY).read_bytes() == old_summary
    assert summary(folder)["status"] == "running"  # no "already completed" for the next start
    runguard.acquire(folder)  # the dead process's lock holds nothing
    runguard.release(folder)
    print(line)


def test_two_copies_of_one_sweep_divide_the_jobs(tmp_path):
    data, sweep = write_mnist(tmp_path / "data", n_train=2000, n_test=50), tmp_path / "sweep"
    command = ["-m", f"hydra.sweep.dir={sweep}", f"data.root={data}", "norm=gn,bn,none", *LONG[:1],
               "train.epochs=2", *QUIET]  # each job long enough for the second copy to find it running
    first = start_cli(*command)
    wait_for(lambda: any(sweep.glob("*/checkpoint.pt")) or any(sweep.glob("*/summary.json")), first,
             "the first job")
    second = start_cli(*command)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 3
    for job in jobs:
        log = (job / "train.log").read_text()
        assert (summary(job)["status"], summary(job)["epochs_run"]) == ("completed", 2)
        assert [log.count(f"epoch {e}/2 train loss") for e in (1, 2)] == [1, 1], job  # trained once
        assert "in use by" not in log
    notes = [line for _, err in outputs for line in err.splitlines() if line.startswith("normexp: note:")]
    assert notes and all(" skipped: " in n and "in use by process" in n for n in notes)
    gn = sweep / "batch_size=2,norm=gn"  # the first job: the first copy had it when the second started
    assert f"normexp: note: skipped: {gn}: in use by process {first.pid}" in outputs[1][1]
    print("\n".join(notes))


FAIL_WRITE = '''
import os
_spec = os.environ.get("NORMEXP_TEST_FAIL_WRITE")
if _spec:
    _errno, _name, _nth = _spec.split(":")
    _seen, _fsync = [0], os.fsync

    def _failing_fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{_name}."):
            _seen[0] += 1
            if _seen[0] >= int(_nth):
                raise OSError(int(_errno), os.strerror(int(_errno)))
        return _fsync(fd)

    os.fsync = _failing_fsync
'''


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a descriptor's file")
def test_disk_full_and_read_only_are_one_line_and_the_last_checkpoint_survives(tmp_path):
    data = write_mnist(tmp_path / "data")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FAIL_WRITE)
    full, read_only = tmp_path / "full", tmp_path / "read_only"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    results = [run_cli(*args(full, data, train__epochs="2"), env={**env, "NORMEXP_TEST_FAIL_WRITE":
                                                                    "28:checkpoint.pt:2"}),
               run_cli(*args(read_only, data), env={**env, "NORMEXP_TEST_FAIL_WRITE": "30:summary.json:1"})]
    assert [r.returncode for r in results] == [2, 2], [r.stderr for r in results]
    intact = ("the files written before are intact: free space or fix the permissions, then run the same "
              "command again to resume")
    assert error_line(results[0]) == f"{full}: cannot write checkpoint.pt (No space left on device); {intact}"
    assert error_line(results[1]) == (f"{read_only}: cannot write summary.json (Read-only file system); "
                                      f"{intact}")
    assert runfiles.load_checkpoint(full)["epoch"] == 1  # the first epoch's checkpoint, whole
    assert not list(full.glob(".*.tmp"))
    assert summary(full)["status"] == "failed" and "No space left on device" in summary(full)["error"]
    resumed = run_cli(*args(full, data, train__epochs="2"))  # space freed: the same command resumes it
    assert resumed.returncode == 0 and summary(full)["status"] == "completed", resumed.stderr
    print("\n".join(r.stderr.strip() for r in results))


@pytest.fixture
def mounted(tmp_path):
    """Mounts a 1 MB tmpfs at a folder: ``mounted(name, options)``; skips where the tests cannot mount."""
    made = []

    def mount(name: str, options: str = "size=1m") -> Path:
        point = tmp_path / name
        point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (the simulated failures cover the messages)")
        made.append(point)
        return point

    yield mount
    for point in made:
        subprocess.run(["umount", str(point)], check=True)


def test_a_real_full_disk(mounted, tmp_path):
    """A 5 MB disk: one checkpoint fits, not two."""
    small_disk = mounted("small", "size=5m")
    data = write_mnist(tmp_path / "data")
    result = run_cli(*args(small_disk / "run", data, train__epochs="2"))
    assert result.returncode == 2, result.stderr
    assert error_line(result).startswith(f"{small_disk / 'run'}: cannot write checkpoint.pt (No space left "
                                         "on device); the files written before are intact")
    assert runfiles.load_checkpoint(small_disk / "run")["epoch"] == 1
    print(result.stderr)


def test_a_full_disk_or_a_read_only_sweep_folder_is_one_line_and_leaves_nothing(mounted, tmp_path):
    data = write_mnist(tmp_path / "data")
    full, read_only = mounted("full"), mounted("read_only", "size=1m,ro")
    with open(full / "fill", "wb") as f:  # the disk filled to the last byte
        with contextlib.suppress(OSError):
            while True:
                f.write(bytes(1 << 16))
                f.flush()
    results = [run_cli(*args(full / "runs" / "run", data)),
               run_cli("-m", f"hydra.sweep.dir={read_only / 'sweep'}", f"data.root={data}", *QUIET,
                       "batch_size=40", "train.epochs=1", "norm=gn,bn")]
    assert [r.returncode for r in results] == [2, 2], [r.stderr for r in results]
    lines = [error_line(r) for r in results]
    assert lines[0].startswith(f"{full / 'runs' / 'run'}: cannot ") and "(No space left on device)" in (
        lines[0])
    assert lines[1] == (f"hydra.sweep.dir={read_only / 'sweep'}: cannot write there (Read-only file system); "
                        "free space or fix the permissions, then run again")
    assert sorted(p.name for p in full.iterdir()) == ["fill"] and list(read_only.iterdir()) == []
    print("\n".join(lines))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a descriptor's file")
def test_a_folder_that_takes_a_lock_but_no_more_is_one_line_and_left_as_it_was(tmp_path):
    data = write_mnist(tmp_path / "data")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FAIL_WRITE)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
           "NORMEXP_TEST_FAIL_WRITE": f"28:{runguard.PROBE}:1"}
    result = run_cli(*args(tmp_path / "new" / "run", data), env=env)
    assert result.returncode == 2
    assert error_line(result) == (f"hydra.run.dir={tmp_path / 'new' / 'run'}: cannot write there (No space "
                                  "left on device); free space or fix the permissions, then run again")
    assert not (tmp_path / "new").exists()


WITH_GROUPS = ", ".join(p.stem for p in sorted((ROOT / "conf" / "norm").glob("*.yaml"))
                       if "groups" in (yaml.safe_load(p.read_text()) or {}))
STRUCT = {  # overrides: the one line
    ("train.max_epochs_by_batch_size={4:0}",): (
        "train.max_epochs_by_batch_size={4:0}: train.max_epochs_by_batch_size is a mapping whose keys Hydra "
        "keeps fixed under key=value; write ++train.max_epochs_by_batch_size={4:0} to add to it"),
    ("++train.max_epochs_by_batch_size={4:0}",): (
        "train.max_epochs_by_batch_size={4: 0}: must map batch sizes to integers >= 1"),
    ("norm=bn", "norm.groups=2"): (
        "norm.groups=2: norm=bn has no key groups (its keys: name, eps, momentum, moments); the norm choices "
        f"with it: {WITH_GROUPS}"),
    ("-m", "norm=gn,bn", "norm.groups=2"): (
        "norm.groups=2: norm=bn has no key groups (its keys: name, eps, momentum, moments); the norm choices "
        f"with it: {WITH_GROUPS}"),
    ("train.foo=1",): "train.foo=1: train has no key foo (its keys: epochs, max_epochs_by_batch_size, seed, "
                      "device, resume, max_loss, eval_batch_size, fast, threads, mkldnn, autotune, progress, "
                      "seeds, pack_size)",
}


def test_keys_the_config_lacks_are_one_line(tmp_path):
    data = write_mnist(tmp_path / "data")
    commands = []
    for i, overrides in enumerate(STRUCT):
        where = "hydra.sweep.dir" if overrides[0] == "-m" else "hydra.run.dir"
        head = ["-m"] if overrides[0] == "-m" else []
        rest = overrides[1:] if head else overrides
        out = tmp_path / f"out{i}"
        commands.append([*head, f"{where}={out}", f"data.root={data}", "batch_size=8", *rest])
    results = run_cli_many(commands)
    for i, (overrides, result) in enumerate(zip(STRUCT, results, strict=True)):
        assert result.returncode == 2, (overrides, result.stderr)
        assert error_line(result) == STRUCT[overrides]
        assert not (tmp_path / f"out{i}").exists()


def test_a_lock_is_reentrant_in_one_process_and_refuses_another(tmp_path):
    runguard.acquire(tmp_path / "run")
    runguard.acquire(tmp_path / "run")
    code = ("import sys; from pathlib import Path; from normexp import runguard\n"
            "try:\n    runguard.acquire(Path(sys.argv[1]))\nexcept runguard.Busy as err:\n    print(err)")
    probe = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True,
                           text=True)
    assert probe.stdout.strip().startswith(f"{tmp_path / 'run'}: in use by process {os.getpid()} ")
    runguard.release(tmp_path / "run")
    runguard.release(tmp_path / "run")
    probe = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True,
                           text=True)
    assert probe.stdout.strip() == "" and probe.returncode == 0


def test_signals_stop_the_process_that_holds_no_lock_any_longer(tmp_path):
    """A killed holder releases the folder at once (flock), whatever signal ended it."""
    code = ("import sys, time; from pathlib import Path; from normexp import runguard\n"
            "runguard.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(runguard.Busy):
        runguard.acquire(tmp_path / "run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    runguard.acquire(tmp_path / "run")
    runguard.release(tmp_path / "run")


CRAFTED = '''
import os, sys, torch
class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {sys.argv[2]}",))
state = torch.load(sys.argv[1], weights_only=True)
state["optimizer"]["state"] = Payload()  # deep inside, where a loader would reach it last
torch.save(state, sys.argv[1])
'''


def craft(run_dir: Path, proof: Path) -> None:
    """Turns the folder's checkpoint into one that runs ``touch proof`` when it is unpickled."""
    command = [sys.executable, "-c", CRAFTED, str(run_dir / runfiles.CHECKPOINT), str(proof)]
    subprocess.run(command, check=True)
    (run_dir / runfiles.SUMMARY).write_text(json.dumps({**summary(run_dir), "status": "interrupted"}))


def test_a_crafted_checkpoint_never_runs_in_a_run_a_sweep_or_a_seed(completed, tmp_path):
    data, _, _, run_dir = completed
    proof = tmp_path / "proof"
    single = tmp_path / "single"
    shutil.copytree(run_dir, single)
    craft(single, proof)
    sweep = tmp_path / "sweep"
    sweep_args = ["-m", f"hydra.sweep.dir={sweep}", f"data.root={data}", *QUIET, "batch_size=40",
                  "norm=gn,bn,none"]
    seeded = tmp_path / "seeded"
    made = run_cli_many([[*sweep_args, "train.epochs=1"], args(seeded, data, train__seeds="[0,1]")])
    assert [r.returncode for r in made] == [0, 0], [r.stderr for r in made]
    first, second, third = sorted(p for p in sweep.iterdir() if p.is_dir())
    craft(second, proof)
    whole = (third / runfiles.CHECKPOINT).read_bytes()
    (third / runfiles.CHECKPOINT).write_bytes(whole[: len(whole) // 2])  # a torn checkpoint, in the last job
    craft(seeded / "seed=1", proof)
    results = run_cli_many([args(single, data), [*sweep_args, "train.epochs=2"],
                            args(seeded, data, train__seeds="[0,1]")])
    assert [r.returncode for r in results] == [2, 2, 2]
    *sweep_lines, torn = results[1].stderr.strip().splitlines()  # every job checked before the first starts
    results[1].stderr = "\n".join(sweep_lines)
    lines = [error_line(r) for r in results]
    for line, folder in zip(lines, (single, second, seeded / "seed=1"), strict=True):
        assert line.startswith(f"{folder / runfiles.CHECKPOINT}: not normexp's checkpoint (NotACheckpoint: "
                               "it holds more than tensors and plain values, which normexp never unpickles: ")
        assert "GLOBAL posix.system" in line or "GLOBAL os.system" in line, line
    assert torn.startswith(f"normexp: error: {third / runfiles.CHECKPOINT}: unreadable (")
    assert not proof.exists()
    assert summary(first)["epochs_run"] == 1  # the sweep stopped before its first job trained
    print("\n".join([*lines, torn]))


def test_links_out_of_a_run_folder_are_never_followed(completed, tmp_path):
    data, _, _, run_dir = completed
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    folders = {}
    for name in (runguard.LOCK, runfiles.METRICS, runfiles.SUMMARY, "train.log"):
        folder = folders[name] = tmp_path / name.strip(".").replace(".", "_")
        shutil.copytree(run_dir, folder)
        (folder / name).unlink(missing_ok=True)
        (folder / name).symlink_to(target)
    fresh = tmp_path / "fresh"  # a new folder whose lock is a link
    fresh.mkdir()
    (fresh / runguard.LOCK).symlink_to(target)
    results = run_cli_many([args(f, data, train__epochs="2") for f in (*folders.values(), fresh)])
    lines = [error_line(r) for r in results]
    assert [r.returncode for r in results] == [2] * 5
    for line, (name, folder) in zip(lines, [*folders.items(), (runguard.LOCK, fresh)], strict=True):
        assert line.startswith(f"{folder / name}: a symbolic link"), line
    assert target.read_text() == "keep me"
    print("\n".join(lines))


def test_resume_false_moves_only_the_runs_own_files(completed, tmp_path):
    data, _, _, run_dir = completed
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    (folder / "notes.txt").write_text("mine")
    (folder / "src").mkdir()
    result = run_cli(*args(folder, data, train__resume="false"))
    assert result.returncode == 0, result.stderr
    [aside] = folder.glob("replaced-*")
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "src").is_dir()
    assert sorted(p.name for p in aside.iterdir()) == sorted(
        [".hydra", runfiles.CHECKPOINT, runfiles.MARKER, runfiles.METRICS, runfiles.SUMMARY, "train.log"])


# ---------------------------------------------------------------- a sweep stopped by a signal

def start(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "NORMEXP_DATA_ROOT"}
    return subprocess.Popen([sys.executable, "-m", "normexp.train", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def status(job: Path) -> str | None:
    try:
        return json.loads((job / runfiles.SUMMARY).read_text())["status"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"PPid:\t{pid}\n" in (entry / "status").read_text():
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def describe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("signals") / "data", n_train=2000, n_test=50)


# 2000 digits at batch size 2: 1000 steps an epoch, so that the jobs are mid-epoch when the signal comes
JOBS = ["norm=gn,bn,none", "batch_size=2", "train.epochs=2", *QUIET]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc to list the workers")
@pytest.mark.parametrize("signum, group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM to the main process", "Ctrl-C to the process group"])
def test_joblib_sweep_stops_cleanly_and_resumes(data, tmp_path, signum, group):
    sweep = tmp_path / "sweep"
    command = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}",
               f"data.root={data}", *JOBS]
    main = start(*command)
    running = [sweep / f"batch_size=2,norm={n}" for n in ("gn", "bn")]
    wait_for(lambda: all(status(j) == "running" for j in running), main, "both workers' jobs started",
             timeout=180)
    workers = children(main.pid)
    os.killpg(main.pid, signum) if group else main.send_signal(signum)
    out, err = main.communicate(timeout=120)
    assert main.returncode == 128 + signum, err
    assert err.strip().splitlines() == [
        f"normexp: stopped by signal {signum}: the running jobs saved a checkpoint and no other job started; "
        "run the same command again to resume"]
    assert "Traceback" not in out + err
    for job in running:
        assert status(job) == "interrupted", job
        # a position inside epoch 1 (batch 0 where a loaded machine signals before the first step)
        assert 0 <= runfiles.load_checkpoint(job)["batch"] < 1000
    assert status(sweep / "batch_size=2,norm=none") is None  # never started
    deadline = time.monotonic() + 30  # the workers end with the sweep (a zombie is not alive)
    while [pid for pid in workers if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(pid, describe(pid)) for pid in workers if alive(pid)] == []  # no worker left

    if signum == signal.SIGTERM:  # the same command again: every job resumed or started, to the end
        again = run_cli(*command)
        assert again.returncode == 0, again.stderr
        for job in [*running, sweep / "batch_size=2,norm=none"]:
            assert status(job) == "completed", job
        assert all("resuming" in (job / "train.log").read_text() for job in running)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc to list the jobs")
def test_submitit_local_sweep_passes_sigterm_to_its_jobs_and_leaves_none_running(data, tmp_path):
    sweep = tmp_path / "sweep"
    main = start("-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}", f"data.root={data}",
                 "norm=gn,bn", "batch_size=2", "train.epochs=2", *QUIET)
    running = [sweep / f"batch_size=2,norm={n}" for n in ("gn", "bn")]
    wait_for(lambda: all(status(j) == "running" for j in running), main, "both jobs started", timeout=180)
    below = children(main.pid)
    below |= {pid for child in below for pid in children(child)}  # submitit's controller, and its job
    main.send_signal(signal.SIGTERM)
    out, err = main.communicate(timeout=120)
    assert main.returncode == 143, err
    assert err.strip().splitlines()[-1] == (
        "normexp: stopped by signal 15: the running jobs saved a checkpoint and no other job started; run "
        "the same command again to resume")
    assert "Traceback" not in out + err
    for job in running:
        assert status(job) == "interrupted", job
        assert 0 <= runfiles.load_checkpoint(job)["batch"] < 1000
    deadline = time.monotonic() + 30
    while [pid for pid in below if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(pid, describe(pid)) for pid in below if alive(pid)] == []  # nothing left running


def test_basic_sweep_stops_at_sigint_without_a_traceback(data, tmp_path):
    sweep = tmp_path / "sweep"
    main = start("-m", f"hydra.sweep.dir={sweep}", f"data.root={data}", *JOBS)
    first = sweep / "batch_size=2,norm=gn"
    wait_for(lambda: (first / runfiles.CHECKPOINT).exists() or status(first) == "running", main,
               "the first job started", timeout=180)
    time.sleep(1)
    main.send_signal(signal.SIGINT)
    out, err = main.communicate(timeout=120)
    assert main.returncode == 130, err
    assert "Traceback" not in out + err
    assert status(first) == "interrupted" and not (sweep / "batch_size=2,norm=bn").exists()


def test_a_signal_between_two_jobs_stops_the_sweep_before_the_next(tmp_path):
    """In the sweep's process: the request made by the signal reaches the next run's StopSignal (and the
    next job's start), and the handlers from before come back at the end."""
    code = """
import os, signal
from normexp import runguard, steps
before = signal.getsignal(signal.SIGTERM)
runguard.begin_sweep([])
os.kill(os.getpid(), signal.SIGTERM)  # between two jobs: no run's handler is installed
assert runguard.requested() == signal.SIGTERM and not runguard.in_worker()
with steps.StopSignal() as stop:
    assert stop.signum == signal.SIGTERM  # the next run stops before its first step
assert runguard.end_sweep() == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is before
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "NORMEXP_SWEEP_STOP"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.stdout.strip() == "ok", proc.stderr
