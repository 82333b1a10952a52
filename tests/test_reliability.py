"""Reliability of real `budgetnet train` processes: SIGKILL at random moments and resume,
graceful SIGINT/SIGTERM, and two processes on one run directory.

Every run here is the same tiny training (256 16x16 images, a 5k-parameter ResNet, 10 epochs
of 14 steps, a checkpoint every 3 steps); one uninterrupted reference run, started when the
module starts, is what every interrupted-and-resumed run must reproduce. Processes are
started with the `budgetnet` console script, so each costs a Python + torch start-up (~3-5 s
here); two kill chains run side by side to keep the module near a minute.
"""

from __future__ import annotations

import csv
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import write_noisy_npz

from budgetnet.config import build_config, read_yaml_mapping
from budgetnet.train.checkpoint import load_checkpoint

_SCRIPT = Path(sys.executable).with_name("budgetnet")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "budgetnet"]

EPOCHS, BATCH, TRAIN_IMAGES = 10, 16, 256 - 32
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH  # 14
TRAIN_ARGS = [
    "--input-size", "16", "--classes", "3", "--val-size", "32", "--blocks", "1,1", "--channels", "8,16",
    "--stem-width", "8", "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--checkpoint-every", "3",
    "--seed", "3", "--precision", "fp32", "--device", "cpu", "--threads", "1", "--quiet",
]
COMPARED = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "nan_skips"]  # not the seconds
CHECKPOINTS = ("last.pt", "previous.pt", "best.pt")
TOTAL_KILLS = 12  # across the two chains


@dataclass
class Env:
    root: Path
    data: Path
    env: dict[str, str]

    def start(self, args: list[str], log: str) -> subprocess.Popen:
        # The child keeps its own copies of the two descriptors; ours close when it has started.
        with open(self.root / f"{log}.out", "w") as out, open(self.root / f"{log}.err", "w") as err:
            return subprocess.Popen([*CLI, *args], stdout=out, stderr=err, env=self.env, cwd=self.root)

    def fresh(self, run: Path, log: str) -> subprocess.Popen:
        return self.start(["train", "--data", str(self.data), *TRAIN_ARGS, "--out", str(run)], log)

    def resume(self, run: Path, log: str) -> subprocess.Popen:
        return self.start(["train", "--resume", str(run), "--quiet"], log)

    def logs(self, log: str) -> tuple[str, str]:
        return (self.root / f"{log}.out").read_text(), (self.root / f"{log}.err").read_text()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("reliability")
    cache = root / "cache"
    environ = dict(os.environ, BUDGETNET_CACHE=str(cache), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return Env(root, write_noisy_npz(root / "data.npz", 256, seed=0), environ)


class Reference:
    """The uninterrupted run, started at once and waited for only when first needed."""

    def __init__(self, env: Env) -> None:
        self.run = env.root / "reference"
        self._proc = env.fresh(self.run, "reference")
        self._env = env
        self._lock = threading.Lock()
        self._done = False

    def metrics(self) -> list[dict[str, float]]:
        with self._lock:
            if not self._done:
                rc = self._proc.wait(timeout=300)
                assert rc == 0, self._env.logs("reference")
                self._done = True
        return read_metrics(self.run)


@pytest.fixture(scope="module")
def reference(env: Env) -> Reference:
    return Reference(env)


def read_metrics(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def assert_same_metrics(got: list[dict[str, float]], want: list[dict[str, float]]) -> None:
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for g, w in zip(got, want):
        for key in COMPARED:
            assert math.isclose(g[key], w[key], rel_tol=1e-4, abs_tol=1e-6), (int(w["epoch"]), key, g[key], w[key])


def assert_consistent(run: Path) -> dict[str, int]:
    """What must hold after any kill: the config parses, every checkpoint present loads, and
    metrics.csv counts each epoch once, in order, no further than the newest checkpoint."""
    counts: Counter[str] = Counter()
    if not run.exists():  # killed before it got as far as creating the directory
        return counts
    if not (run / "config.yaml").exists():
        # Only a kill before training started leaves no config: nothing else may be there but
        # the lock file and the temp file of a config.yaml write the kill cut short.
        left = {p.name for p in run.iterdir() if not p.name.startswith(".config.yaml.tmp-")}
        assert left <= {".lock"}, sorted(left)
        return counts
    build_config(read_yaml_mapping(run / "config.yaml"))
    newest = -1
    for name in CHECKPOINTS:
        if (run / name).exists():
            state = load_checkpoint(run / name)  # raises BudgetnetError if damaged
            counts[name] += 1
            if name != "best.pt":
                progress = state.resume.progress
                assert len(progress.history) == progress.epoch
                assert [int(r["epoch"]) for r in progress.history] == list(range(1, progress.epoch + 1))
                assert all(math.isfinite(float(t.float().sum())) for t in state.model.values())
                newest = max(newest, progress.epoch)
    if (run / "metrics.csv").exists():
        epochs = [int(r["epoch"]) for r in read_metrics(run)]
        assert epochs == list(range(1, len(epochs) + 1)), epochs  # no epoch twice, none skipped
        # A kill between writing last.pt and metrics.csv leaves metrics behind, never ahead.
        assert len(epochs) <= max(newest, 0) or newest < 0, (epochs, newest)
    return counts


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _wait_training(proc: subprocess.Popen, run: Path, before: tuple[int, int] | None, timeout: float = 60) -> bool:
    """Block until this process has written a new last.pt (so it is inside the training loop)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        now = _stamp(run / "last.pt")
        if now is not None and now != before:
            return True
        time.sleep(0.005)
    raise AssertionError(f"{run}: no checkpoint within {timeout} s")


def _kill_in_write(proc: subprocess.Popen, run: Path, timeout: float = 0.5) -> bool:
    """SIGKILL the moment a temp file of a checkpoint (or metrics) write by `proc` shows up
    (True), or after `timeout` s if none was seen (False)."""
    suffix = f".tmp-{proc.pid}"
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            names = os.listdir(run)
        except FileNotFoundError:
            names = []
        if any(n.endswith(suffix) for n in names):
            proc.send_signal(signal.SIGKILL)
            return True
        time.sleep(0.0005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    return False


@dataclass
class ChainStats:
    kills: int = 0
    mid_write: int = 0
    during_startup: int = 0
    completed_early: bool = False
    fallbacks: int = 0
    restarts_fresh: int = 0
    loaded: Counter = field(default_factory=Counter)
    steps: list[int] = field(default_factory=list)  # global step of the newest checkpoint after each kill


class _Tally:
    """Kills so far across the chains: each goes on until the total is reached (or its run
    finishes, which the other chain then makes up for)."""

    def __init__(self) -> None:
        self.kills = 0
        self.lock = threading.Lock()

    def add(self) -> None:
        with self.lock:
            self.kills += 1


def _kill_chain(env: Env, run: Path, tally: _Tally, seed: int) -> ChainStats:
    rng = random.Random(seed)
    stats = ChainStats()
    n = 0
    while tally.kills < TOTAL_KILLS:
        log = f"{run.name}-{n}"
        n += 1
        fresh = not (run / "config.yaml").exists()
        if fresh and run.exists():
            stats.restarts_fresh += 1
        before = _stamp(run / "last.pt")
        proc = env.fresh(run, log) if fresh else env.resume(run, log)
        mode = rng.choice(["startup", "train", "write", "write"])
        if mode == "startup":
            deadline = time.monotonic() + rng.uniform(0.5, 3.0)
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        elif _wait_training(proc, run, before):
            time.sleep(rng.uniform(0.0, 0.25))
            if mode == "train":
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
            else:
                stats.mid_write += _kill_in_write(proc, run)
        rc = proc.wait(timeout=120)
        out, err = env.logs(log)
        stats.fallbacks += err.count("falling back")
        if rc == 0:  # it finished before the kill came; a fresh start on it proves nothing more
            stats.completed_early = True
            break
        assert rc == -signal.SIGKILL, (rc, out, err)
        stats.kills += 1
        tally.add()
        stats.during_startup += mode == "startup"
        stats.loaded.update(assert_consistent(run))
        newest = [load_checkpoint(run / name).resume.progress.global_step for name in ("last.pt", "previous.pt")
                  if (run / name).exists()]
        stats.steps.append(max(newest, default=0))
    return stats


def test_sigkill_at_random_moments_then_resume_reproduces_the_uninterrupted_run(
    env: Env, reference: Reference
) -> None:
    started = time.monotonic()
    runs = [env.root / "killed-a", env.root / "killed-b"]
    tally = _Tally()
    with ThreadPoolExecutor(len(runs)) as pool:
        chains = list(pool.map(lambda i: _kill_chain(env, runs[i], tally, seed=1000 + i), range(len(runs))))
    total = sum(c.kills for c in chains)
    print(f"\nkill test: {total} SIGKILLs survived ({sum(c.mid_write for c in chains)} during a checkpoint write, "
          f"{sum(c.during_startup for c in chains)} during start-up), "
          f"{sum(c.fallbacks for c in chains)} fallbacks to previous.pt, "
          f"{sum(c.restarts_fresh for c in chains)} fresh restarts, checkpoints verified: "
          f"{dict(sum((c.loaded for c in chains), Counter()))}; steps reached (of {EPOCHS * STEPS_PER_EPOCH}): "
          f"{[c.steps for c in chains]}")
    assert total >= TOTAL_KILLS, chains
    finals = [env.resume(run, f"{run.name}-final") for run in runs]  # side by side, as the chains ran
    want = reference.metrics()
    for run, proc in zip(runs, finals):
        assert proc.wait(timeout=300) == 0, env.logs(f"{run.name}-final")
        assert_consistent(run)
        got = read_metrics(run)
        assert_same_metrics(got, want)
        assert len(got) == EPOCHS
        # Not only the logged numbers: the final weights match the reference's too.
        ref_model = load_checkpoint(reference.run / "last.pt").model
        final = load_checkpoint(run / "last.pt")
        assert final.resume.progress.global_step == EPOCHS * STEPS_PER_EPOCH
        for key, value in ref_model.items():
            torch.testing.assert_close(final.model[key], value, rtol=1e-4, atol=1e-5)
        # Kills mid-write leave temp files behind; a resumed run clears them.
        assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]
    print(f"kill test: {time.monotonic() - started:.1f} s")


def test_sigint_and_sigterm_checkpoint_and_exit_with_a_resume_hint_and_a_busy_dir_names_its_holder(
    env: Env, reference: Reference
) -> None:
    run = env.root / "signalled"
    a = env.fresh(run, "sig-a")
    assert _wait_training(a, run, None)
    # Freeze the holder mid-epoch so the others surely meet its lock, then try two intruders.
    a.send_signal(signal.SIGSTOP)
    try:
        intruders = [env.fresh(run, "sig-fresh"), env.resume(run, "sig-resume")]
        for log, proc in zip(("sig-fresh", "sig-resume"), intruders):
            assert proc.wait(timeout=120) == 2
            out, err = env.logs(log)
            lines = err.strip().splitlines()
            assert len(lines) == 1, err
            assert lines[0].startswith("budgetnet: error: ") and f"pid {a.pid}" in lines[0], lines
            assert "in use" in lines[0]
        assert_consistent(run)
    finally:
        a.send_signal(signal.SIGCONT)

    for sig, code, log, next_log in ((signal.SIGINT, 130, "sig-a", "sig-b"), (signal.SIGTERM, 143, "sig-b", None)):
        proc = a
        before = _stamp(run / "last.pt")
        steps_before = load_checkpoint(run / "last.pt").resume.progress.global_step
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == code, env.logs(log)
        out, err = env.logs(log)
        assert f"budgetnet: interrupted by {sig.name}; resume with: budgetnet train --resume {run}" in err, err
        assert "Traceback" not in err
        # It wrote a checkpoint on its way out, at or after the step it was at.
        assert _stamp(run / "last.pt") != before
        assert load_checkpoint(run / "last.pt").resume.progress.global_step >= steps_before
        assert_consistent(run)
        if next_log:
            before = _stamp(run / "last.pt")
            a = env.resume(run, next_log)
            assert _wait_training(a, run, before)

    final = env.resume(run, "sig-final")
    assert final.wait(timeout=300) == 0, env.logs("sig-final")
    assert_same_metrics(read_metrics(run), reference.metrics())
