"""Search workers sharing one Optuna study: where it lives, exact trial counts, the trials of
dead workers, worker processes.

A study lives in Optuna's journal file in the search directory (`JournalStorage` with its file
backend and lock: any number of processes on one machine), or in a database at a URL
(`RDBStorage`: PostgreSQL for workers on many machines; SQLite for a study made before the
journal). A worker runs trials until the study holds the number asked for:

- counting and starting a trial happen under one lock held by every worker of the study (a
  file lock beside the journal or SQLite file, an advisory lock in PostgreSQL), and running
  trials count, so no worker starts a trial beyond the count;
- a worker with nothing left to start waits for the running trials of the others instead of
  leaving, so that it retries any whose worker dies. A dead worker's trial is failed and queued
  again with its parameters (`RetryHeartbeatStaleTrialCallback`): in a database once Optuna's
  heartbeat of the trial is stale; in the journal, which has no heartbeat, once the lock file
  its worker held for its life is free (the kernel drops a dead process's locks).
"""

from __future__ import annotations

import hashlib
import importlib.util
import multiprocessing
import multiprocessing.connection
import os
import platform
import secrets
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from budgetnet.errors import BudgetnetError, one_line, stderr_line
from budgetnet.files import DirLock
from budgetnet.train.engine import TrainingInterrupted

JOURNAL = "study.journal"
SQLITE = "study.db"  # where searches kept their study before the journal
WORKER_ATTR = "worker"  # trial user attr: the worker running it
REPORTED_ATTR = "reported_trials"  # study user attr: how many trials it held at its last report
# A database worker beats every HEARTBEAT_SECONDS; one silent for GRACE_BEATS beats is dead.
HEARTBEAT_SECONDS, GRACE_BEATS = 30, 4
# How often a worker with nothing to start looks again at the others' running trials.
WAIT_SECONDS = 2.0
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
COUNTED = (*FINISHED, TrialState.RUNNING)
_WORKERS_DIR = ".workers"  # the journal workers' life locks


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue `trial` again with its parameters and attributes (its run directory among them);
    Optuna records the trial it retries (`retry_history`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, trial)


def retried_trial(trial: FrozenTrial) -> int | None:
    """The number of the trial that `trial` retries, if it is a retry."""
    history = trial.system_attrs.get("retry_history", [])
    return history[-1] if history else None


def running_trial(trial: optuna.Trial) -> FrozenTrial:
    """The stored state of a running trial, system attributes included."""
    return next(t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number == trial.number)


@dataclass(frozen=True)
class StudyStore:
    """Where a search's study lives: `url` None means the journal file in `out`."""

    out: Path
    url: str | None = None
    heartbeat: int = HEARTBEAT_SECONDS

    @classmethod
    def resolve(cls, out: Path, url: str | None, heartbeat: int = HEARTBEAT_SECONDS) -> StudyStore:
        """The store for `--storage url` (PostgreSQL or SQLite; a plain postgresql:// is read
        with psycopg 3), or by default the search directory's journal, or the SQLite file a
        search started there before the journal became the default."""
        if url is None:
            legacy = out / SQLITE
            return cls(out, f"sqlite:///{legacy}" if legacy.is_file() and not (out / JOURNAL).exists() else None, heartbeat)
        try:
            parsed = sqlalchemy.engine.make_url(url)
        except sqlalchemy.exc.ArgumentError:
            raise BudgetnetError(f"--storage {url!r} is not a database URL; give postgresql://USER:PASS@HOST/DB") from None
        backend = parsed.get_backend_name()
        if backend not in ("postgresql", "sqlite"):
            raise BudgetnetError(f"--storage takes a postgresql:// or sqlite:/// URL, not {backend}://")
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.drivername == "postgresql+psycopg" and importlib.util.find_spec("psycopg") is None:
            raise BudgetnetError("a PostgreSQL study needs psycopg; install it with: pip install 'budgetnet[postgres]'")
        return cls(out, parsed.render_as_string(hide_password=False), heartbeat)

    @property
    def label(self) -> str:
        """For messages and summary.json: the journal's path, or the URL without its password."""
        if self.url is None:
            return str(self.out / JOURNAL)
        return sqlalchemy.engine.make_url(self.url).render_as_string(hide_password=True)

    def storage(self) -> optuna.storages.BaseStorage:
        if self.url is None:
            path = str(self.out / JOURNAL)
            lock = optuna.storages.journal.JournalFileOpenLock(path)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path, lock_obj=lock))
        # SQLite's default 5 s busy timeout is too short for several workers writing at once.
        engine_kwargs = {"connect_args": {"timeout": 60}} if self.url.startswith("sqlite") else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                self.url, engine_kwargs=engine_kwargs, heartbeat_interval=self.heartbeat,
                grace_period=GRACE_BEATS * self.heartbeat, heartbeat_stale_trial_callback=retry,
            )

    def lock(self, study_name: str) -> StudyLock:
        """The lock every worker of the study takes to count and start trials."""
        if self.url is None:
            return StudyLock(DirLock(self.out, name=f".{JOURNAL}.claim", wait=True))
        database = sqlalchemy.engine.make_url(self.url).database
        if self.url.startswith("sqlite"):
            db = Path(database or "").resolve()
            return StudyLock(DirLock(db.parent, name=f".{db.name}.claim", wait=True))
        digest = hashlib.sha256(f"budgetnet search {study_name}".encode()).digest()
        return StudyLock(_AdvisoryLock(self.url, int.from_bytes(digest[:8], "big", signed=True)))


class _AdvisoryLock:
    """A PostgreSQL session advisory lock: its connection's end (a dead worker's too) frees it."""

    def __init__(self, url: str, key: int) -> None:
        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        self.key = key
        self._connection: sqlalchemy.Connection | None = None

    def __enter__(self) -> _AdvisoryLock:
        self._connection = self.engine.connect()
        self._connection.execute(sqlalchemy.select(sqlalchemy.func.pg_advisory_lock(self.key)))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class StudyLock:
    """A lock that its holder may release early (`release`), e.g. once its trial exists."""

    def __init__(self, lock: DirLock | _AdvisoryLock) -> None:
        self._lock = lock
        self._held = False

    def __enter__(self) -> StudyLock:
        self._lock.__enter__()
        self._held = True
        return self

    def release(self) -> None:
        if self._held:
            self._held = False
            self._lock.__exit__(None, None, None)

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def worker_life(store: StudyStore) -> Iterator[str]:
    """This process's name as a worker of the study, held for the worker's life. A journal
    worker holds a lock file of that name meanwhile, which tells the others it is alive."""
    worker = f"{platform.node()}-{os.getpid()}-{secrets.token_hex(2)}"
    if store.url is not None:  # a database has Optuna's heartbeat for that
        yield worker
        return
    life = DirLock(store.out / _WORKERS_DIR, name=f"{worker}.lock")
    try:
        with life:
            yield worker
    finally:
        life.path.unlink(missing_ok=True)


def _journal_worker_alive(store: StudyStore, worker: str) -> bool:
    try:
        with DirLock(store.out / _WORKERS_DIR, name=f"{worker}.lock") as life:
            pass
    except BudgetnetError:  # held: its worker lives
        return True
    life.path.unlink(missing_ok=True)
    return False


def fail_orphans(study: optuna.Study, store: StudyStore) -> None:
    """Fail the running trials whose workers died, and queue them again. Called under the
    study's lock, so every running trial already names its worker."""
    if store.url is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # calls `retry` for each
        return
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        if worker is None or not _journal_worker_alive(store, worker):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            retry(study, trial)


def work(
    study: optuna.Study,
    store: StudyStore,
    objective: Callable[[optuna.Trial], float],
    *,
    total: int,
    timeout: float | None = None,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
) -> None:
    """Run trials of `study` until it holds `total` finished ones (complete or pruned), or
    until `timeout` seconds have passed (then no new trial starts)."""
    started = time.monotonic()
    lock = store.lock(study.study_name)
    with worker_life(store) as worker:

        def claimed(trial: optuna.Trial) -> float:
            trial.set_user_attr(WORKER_ATTR, worker)
            lock.release()  # the trial exists and counts: the next worker may count
            return objective(trial)

        while True:
            with lock:
                fail_orphans(study, store)
                counted = study.get_trials(deepcopy=False, states=COUNTED)
                if sum(t.state in FINISHED for t in counted) >= total:
                    return
                if timeout is not None and time.monotonic() - started >= timeout:
                    return
                if len(counted) < total:
                    # Asked under the lock: a queued trial goes to one worker, a grid point to one trial.
                    study.optimize(claimed, n_trials=1, callbacks=callbacks, gc_after_trial=True)
                    continue
            time.sleep(WAIT_SECONDS)


@contextmanager
def leaving(study: optuna.Study, store: StudyStore) -> Iterator[bool]:
    """Leave the study, under its lock: True for the worker that should write the study's
    report, the last to leave (no trial runs any more) since the study last changed, so the
    report is written once for its trials, whichever worker ends them."""
    with store.lock(study.study_name):
        fail_orphans(study, store)
        trials = study.get_trials(deepcopy=False)
        last = all(t.state != TrialState.RUNNING for t in trials) and study.user_attrs.get(REPORTED_ATTR) != len(trials)
        yield last
        if last:
            study.set_user_attr(REPORTED_ATTR, len(trials))


def _stop_with_parent() -> None:
    """SIGTERM this process once its parent is gone (killed outright), so that a worker ends
    with its launcher: its trial is checkpointed and queued again."""
    parent = multiprocessing.parent_process()
    assert parent is not None and parent.sentinel is not None

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


def _process_main(target: Callable[[Any], None], job: Any) -> None:
    """A worker process: `target(job)`, its ends turned into exit codes (130/143 interrupted,
    2 a one-line error) instead of tracebacks."""
    _stop_with_parent()
    try:
        target(job)
    except TrainingInterrupted as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    except BudgetnetError as exc:
        stderr_line(f"budgetnet: error: {one_line(exc)}")
        sys.exit(2)


def run_processes(target: Callable[[Any], None], jobs: list[Any]) -> list[int]:
    """Run `target(job)` for each job in its own process (spawned: no state forked from this
    one) and wait for them all; their exit codes (negative: killed by that signal). A SIGTERM
    here is passed on to them (a terminal's Ctrl-C reaches them itself), and they are waited
    for."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_process_main, args=(target, job), name=f"search worker {i}")
                 for i, job in enumerate(jobs)]

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        for process in processes:
            process.start()
        for process in processes:
            while True:
                try:
                    process.join()
                    break
                except KeyboardInterrupt:  # a terminal's Ctrl-C reached the workers too
                    continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    return [int(process.exitcode or 0) for process in processes]  # all joined: none is None
