"""Search workers sharing one study: worker processes on one machine (the journal), workers
in separate processes as on separate machines (PostgreSQL), a killed worker's trial run again
by another, exact trial counts, the report written once, `budgetnet search report`.

The searches train the ~5k-parameter ResNet of test_search.py on 300 synthetic 16x16 images;
the PostgreSQL test starts a throwaway server in a temporary directory (skipped, saying why,
where PostgreSQL or psycopg is missing).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from test_search import TINY, run_cli

from budgetnet.search_workers import REPORTED_ATTR, StudyStore

_SCRIPT = Path(sys.executable).with_name("budgetnet")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "budgetnet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "4"}  # torch takes at most the machine's cores
TIMEOUT = 1200  # seconds: generous, since a busy machine starves the workers
# Enough epochs that a test sees a trial mid-training, in time to kill its worker.
LONG = {**TINY, "train": {**TINY["train"], "epochs": 8}}
# Trials that outlast the second worker's start on any machine: on a fast one, 8 epochs ended
# the whole 3-trial search before both workers were ever mid-trial at once.
ENDLESS = {**TINY, "train": {**TINY["train"], "epochs": 2000}}


def write_space(path: Path, base: dict, **fields: object) -> Path:
    path.write_text(yaml.safe_dump({"base": base, "budget": "20k", **fields}, sort_keys=False))
    return path


def load(store: StudyStore, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=store.storage()).get_trials()


def worker_pid(trial: optuna.trial.FrozenTrial) -> int:
    return int(trial.user_attrs["worker"].rsplit("-", 2)[1])  # host-pid-token


def kill_mid_trial(store: StudyStore, name: str, procs: list[subprocess.Popen[str]]) -> optuna.trial.FrozenTrial:
    """SIGKILL the worker of the first trial seen after its first epoch; that trial."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a search ended before a trial could be killed"
        with contextlib.suppress(KeyError, FileNotFoundError):  # the study is not made yet
            for trial in load(store, name):
                if trial.state == TrialState.RUNNING and trial.user_attrs.get("epochs_run", 0) >= 1:
                    os.kill(worker_pid(trial), signal.SIGKILL)
                    return trial
        time.sleep(0.05)
    raise AssertionError("no trial reached its first epoch")


def search_args(space: Path, search_data: Path, out: Path, *more: str) -> list[str]:
    return [*CLI, "search", "--space", str(space), "--data", str(search_data), "--out", str(out), "--pruner", "none", *more]


def finish(procs: list[subprocess.Popen[str]]) -> list[tuple[str, str]]:
    return [p.communicate(timeout=TIMEOUT) for p in procs]


# ---- one machine: worker processes sharing the journal -----------------------------------


def test_workers_share_the_journal_exact_count_each_grid_point_once(tmp_path, search_data) -> None:
    lrs = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3]
    base = {**TINY, "train": {**TINY["train"], "epochs": 1, "threads": None}}
    space = write_space(tmp_path / "grid.yaml", base, sampler="grid", params={"optim.lr": {"choices": lrs}})
    out = tmp_path / "search"
    proc = subprocess.run(search_args(space, search_data, out, "--trials", "5", "--workers", "2"),
                          capture_output=True, text=True, timeout=TIMEOUT, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    trials = load(StudyStore(out), "grid")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5  # exactly 5: none beyond, none failed
    assert len({t.params["optim.lr"] for t in trials}) == 5  # each grid point once
    ran = [int(line.split(":")[0].split()[1]) for line in proc.stderr.splitlines() if line.startswith("trial ")]
    assert sorted(ran) == [0, 1, 2, 3, 4]  # each trial run by one worker, once
    assert len({t.user_attrs["worker"] for t in trials}) <= 2
    threads = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=ENV,
                             capture_output=True, text=True, check=True).stdout
    for t in trials:  # each worker trained with its half of the threads
        assert json.loads((out / "trials" / str(t.number) / "environment.json").read_text())["threads"] == max(1, int(threads) // 2)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["complete"] == 5 and summary["files"]["best_yaml"] == str(out / "best.yaml")
    assert optuna.load_study(study_name="grid", storage=StudyStore(out).storage()).user_attrs[REPORTED_ATTR] == 5


def test_independent_searches_on_one_directory_write_one_report(tmp_path, search_data) -> None:
    """Two `budgetnet search` commands on one directory share its journal: together exactly
    the trials asked for, and only the last to leave writes the report."""
    space = write_space(tmp_path / "shared.yaml", {**TINY, "train": {**TINY["train"], "epochs": 1}}, sampler="random",
                        params={"optim.lr": {"low": 0.02, "high": 0.3, "log": True}})
    out = tmp_path / "search"
    procs = [subprocess.Popen(search_args(space, search_data, out, "--trials", "4"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, env={**ENV, "OMP_NUM_THREADS": "1"})
             for _ in range(2)]
    results = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]

    trials = load(StudyStore(out), "shared")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    wrote = ["wrote trials.csv" in stdout for stdout, _ in results]
    assert sorted(wrote) == [False, True]  # one report, by one of them; the other says who writes it
    assert "search report --out" in results[wrote.index(False)][1]
    ran = [{int(line.split(":")[0].split()[1]) for line in err.splitlines() if line.startswith("trial ")}
           for _, err in results]
    assert not ran[0] & ran[1] and ran[0] | ran[1] == {0, 1, 2, 3}


def test_a_killed_workers_trial_is_run_again_by_the_other(tmp_path, search_data) -> None:
    space = write_space(tmp_path / "kill.yaml", LONG, sampler="random", params={"optim.lr": {"low": 0.02, "high": 0.3}})
    out = tmp_path / "search"
    proc = subprocess.Popen(search_args(space, search_data, out, "--trials", "3", "--workers", "2", "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    killed = kill_mid_trial(StudyStore(out), "kill", [proc])
    (stdout, stderr), = finish([proc])
    assert proc.returncode == 0, stderr
    assert "1 of 2 search workers ended early (killed by SIGKILL)" in stderr

    trials = {t.number: t for t in load(StudyStore(out), "kill")}
    assert trials[killed.number].state == TrialState.FAIL
    retry = next(t for t in trials.values() if t.system_attrs.get("retry_history") == [killed.number])
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["note"] == f"resumed trial {killed.number}"  # same directory: from its checkpoint
    assert retry.user_attrs["worker"] != killed.user_attrs["worker"]
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 3 and len(trials) == 4
    assert json.loads(stdout)["files"]["best_yaml"]


def test_a_killed_search_is_continued_from_its_checkpoint(tmp_path, search_data) -> None:
    space = write_space(tmp_path / "again.yaml", LONG, params={"optim.lr": {"choices": [0.1]}})
    out = tmp_path / "search"
    args = search_args(space, search_data, out, "--trials", "1", "--json")
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    killed = kill_mid_trial(StudyStore(out), "again", [first])
    finish([first])
    # As if the kill had landed between an epoch's checkpoint and its metrics.csv row: the
    # checkpoint holds one epoch more than the file, and that epoch must still reach the pruner.
    metrics = out / "trials" / str(killed.number) / "metrics.csv"
    rows = metrics.read_text().splitlines(keepends=True)
    assert len(rows) >= 2, rows  # a header and at least one epoch before the kill
    metrics.write_text("".join(rows[:-1]))
    again = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, env=ENV, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    trials = load(StudyStore(out), "again")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["note"] == f"resumed trial {killed.number}"
    assert trials[1].intermediate_values.keys() == set(range(1, 9))  # the epochs before the kill replayed


def test_ctrl_c_stops_every_worker_and_queues_their_trials_again(tmp_path, search_data) -> None:
    space = write_space(tmp_path / "int.yaml", ENDLESS, sampler="random", params={"optim.lr": {"low": 0.02, "high": 0.3}})
    out = tmp_path / "search"
    proc = subprocess.Popen(search_args(space, search_data, out, "--trials", "3", "--workers", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path,
                            start_new_session=True)  # its own process group, as a terminal's
    deadline = time.monotonic() + TIMEOUT
    running: list[optuna.trial.FrozenTrial] = []
    while len(running) < 2:  # both workers mid-trial, far from its end
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
        with contextlib.suppress(KeyError, FileNotFoundError):
            running = [t for t in load(StudyStore(out), "int")
                       if t.state == TrialState.RUNNING and 1 <= t.user_attrs.get("epochs_run", 0) <= 1000]
    os.killpg(proc.pid, signal.SIGINT)
    (_, stderr), = finish([proc])
    assert proc.returncode == 130 and "budgetnet: search interrupted" in stderr

    trials = load(StudyStore(out), "int")  # each worker's trial checkpointed, failed and queued again
    assert [trials[t.number].state for t in running] == [TrialState.FAIL] * 2
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.system_attrs["retry_history"][-1] for t in queued) == sorted(t.number for t in running)
    assert all((out / t.user_attrs["run_dir"] / "last.pt").is_file() for t in queued)


def test_search_report_writes_the_report_of_a_study(tmp_path, search_data, capsys) -> None:
    space = write_space(tmp_path / "rep.yaml", {**TINY, "train": {**TINY["train"], "epochs": 1}},
                        params={"optim.lr": {"choices": [0.1]}})
    out = tmp_path / "search"
    assert run_cli(capsys, "search", "--space", str(space), "--data", str(search_data), "--out", str(out), "--trials", "1")[0] == 0
    (out / "best.yaml").unlink()
    code, stdout, err = run_cli(capsys, "search", "report", "--out", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["trials"]["complete"] == 1 and (out / "best.yaml").is_file()

    code, _, err = run_cli(capsys, "search", "report", "--out", str(tmp_path / "nothing"))
    assert code == 2 and "holds no search" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "search", "report", "--out", str(out), "--study", "other")
    assert code == 2 and "no study 'other'" in err
    code, _, err = run_cli(capsys, "search", "--data", str(search_data))
    assert code == 2 and "pass --space" in err
    code, _, err = run_cli(capsys, "search", "--space", str(space), "--data", str(search_data), "--storage", "mysql://h/db", "--trials", "1")
    assert code == 2 and "postgresql:// or sqlite:///" in err


# ---- several machines: PostgreSQL ---------------------------------------------------------


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on a unix socket in a temporary directory (run as
    `nobody` when the tests run as root, which PostgreSQL refuses); its URL."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'budgetnet[postgres]')")
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (initdb/pg_ctl not found; .ci/run installs it)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="budgetnet-pg-"))
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without runuser to start PostgreSQL as another user")
        as_user = [runuser, "-u", "nobody", "--"]
        os.chown(root, 65534, 65534)
        root.chmod(0o700)
    data_dir = root / "data"
    started = False
    try:
        subprocess.run([*as_user, initdb, "-D", str(data_dir), "-U", "postgres", "--auth=trust", "--no-sync",
                        "--no-locale", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, pg_ctl, "start", "-w", "-D", str(data_dir), "-l", str(root / "log"), "-o",
                        f"-k {root} -c listen_addresses='' -c fsync=off -p 5432"],
                       check=True, capture_output=True, timeout=120)
        started = True
        yield f"postgresql://postgres@/postgres?host={root}&port=5432"
    finally:
        if started:
            subprocess.run([*as_user, pg_ctl, "stop", "-m", "immediate", "-D", str(data_dir)], capture_output=True,
                           timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_machines_share_a_postgres_study_and_retry_a_killed_workers_trial(tmp_path, search_data, postgres_url) -> None:
    """Two workers as on two machines (own directories, one database). One is SIGKILLed
    mid-trial; once its heartbeat is stale the other fails that trial and runs it again."""
    space = write_space(tmp_path / "pg.yaml", LONG, sampler="random", params={"optim.lr": {"low": 0.02, "high": 0.3}})
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    procs = [subprocess.Popen(search_args(space, search_data, out, "--trials", "3", "--storage", postgres_url, "--study", "pg",
                                          "--heartbeat", "2", "--json"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
             for out in outs]
    store = StudyStore.resolve(tmp_path, postgres_url)
    killed = kill_mid_trial(store, "pg", procs)
    results = finish(procs)
    victim = next(i for i, p in enumerate(procs) if p.pid == worker_pid(killed))
    survivor = 1 - victim
    assert procs[victim].returncode == -signal.SIGKILL
    assert procs[survivor].returncode == 0, results[survivor][1]

    trials = {t.number: t for t in load(store, "pg")}
    assert trials[killed.number].state == TrialState.FAIL
    retry = next(t for t in trials.values() if t.system_attrs.get("retry_history") == [killed.number])
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert worker_pid(retry) == procs[survivor].pid
    assert retry.user_attrs["note"] == f"retry of trial {killed.number}"  # another machine: trained afresh
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 3 and len(trials) == 4
    summary = json.loads(results[survivor][0])
    assert summary["files"]["best_yaml"] == str(outs[survivor] / "best.yaml")
    assert not (outs[victim] / "best.yaml").exists()

