"""`gptlab sweep`: many training runs over one Optuna study, each trial an ordinary run directory.

    SWEEP/study.db                 the study (SQLite); with --storage URL it lives in that database instead
    SWEEP/trial-NNNN/              trial NNNN's run directory (`gptlab sample/eval/inspect/report` work on it)
    SWEEP/summary.md, summary.csv, params.png, curves.png       written when a sweep process ends
    SWEEP/.workers/                one file per sweep process, locked by it while it lives

A sweep process loops: claim a trial, train it, record it; it stops when the study holds --trials
trials and none waits. Processes that share a study split its trials:

- Claiming is serialised by a lock file beside an SQLite study (study.db.lock), so two processes never
  take the same trial nor run more than --trials. (A database server has no such file: there, processes
  on several machines that claim the last trial at the same moment may run one trial more.)
- Each claimed trial records its process: the host and that process's locked file. A RUNNING trial
  whose process is gone (killed, machine rebooted) goes back to the queue (Optuna's WAITING state) with
  its number, parameters and run directory, and is resumed from its last checkpoint by the next claim on
  that host, with a message. So a killed sweep, rerun with the same command, goes on where it was.
- A trial whose training raises is FAIL, with its error; it is never run again.

Each trial reports its val loss at every evaluation (Optuna's intermediate values: the curves). With
--prune, a trial stops when its best val loss so far is clearly worse than the completed trials' at the
same step: worse than three quarters of them (Optuna's PercentilePruner at 75; from the first
evaluation after step 0, once 3 trials completed). The median rule (Optuna's default) pruned trials
within 0.005 of the best in a real sweep, whose top trials were near twins (docs/sweeps.md).
"""

from __future__ import annotations

import json
import os
import socket
import traceback
import uuid
from contextlib import nullcontext
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.atomic import complete_directory
from gptlab.checkpoint import RunDir, read_info
from gptlab.config import build_config, field_types
from gptlab.data.batches import TokenData
from gptlab.device import set_threads
from gptlab.errors import GptlabError
from gptlab.sweeps.space import Param, check_space, grid
from gptlab.sweeps.summary import Row, SweepSummary, run_row, show, train_command
from gptlab.training.interrupt import TrainingInterrupted
from gptlab.training.trainer import resume, train

try:
    import optuna
    from filelock import FileLock, Timeout
    from optuna.trial import TrialState
    from sqlalchemy.engine import make_url  # Optuna's database layer
except ImportError:  # the optional extra
    raise GptlabError("gptlab sweep needs Optuna: pip install 'gptlab[sweep]'") from None

SEARCHES = ("tpe", "random", "grid")
PRUNE_PERCENTILE = 75.0  # --prune: stop a trial worse than this share of the completed trials at a step
SPEC = "gptlab_sweep"  # the study's user attribute that records what the sweep is
HOST = socket.gethostname()
UNRECORDED_GRACE = timedelta(minutes=1)  # a claim records its process within this; older and unrecorded: orphaned
STATUS = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own line per trial


class GridSearch(optuna.samplers.GridSampler):
    """Optuna's GridSampler: trial k takes point k of the grid, shuffled by the seed. Its after_trial calls
    Study.stop() when the grid is done, which works only inside Study.optimize; the sweep counts trials itself."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def process_alive(lock_path: str | Path) -> bool:
    """Whether the process that locked this file still holds it (the OS releases it when a process ends)."""
    path = Path(lock_path)
    if not path.exists():
        return False
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


class Worker:
    """This sweep process as the others see it: a file it keeps locked while it lives."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = (directory / f"{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock").resolve()
        self.lock = FileLock(self.path)
        self.record = {"host": HOST, "pid": os.getpid(), "lock": str(self.path)}

    def __enter__(self) -> Worker:
        self.lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()
        self.path.unlink(missing_ok=True)

    def share_cores(self) -> int:
        """torch threads for this process's next trial: what --threads 0 gives here (OMP_NUM_THREADS,
        else the cores available), shared among the sweep processes alive in this sweep."""
        alive = sum(process_alive(p) for p in self.path.parent.glob("*.lock"))
        return max(1, set_threads(0) // max(1, alive))


def spec_text(key: str, value: Any) -> str:
    """One item of a sweep's record as the command line gives it."""
    if key == "params":
        return " ".join(f"--param {spec}" for spec in value)
    if key == "fixed":
        return " ".join(f"--{k.replace('_', '-')} {show(v)}" for k, v in value.items()) or "no --key value"
    if key == "data_sha256":
        return f"data {value[:12]}"
    return f"--{key} {value}"


def seed_for(seed: int, number: int) -> int:
    """Trial `number`'s sampler seed: its draws depend on the sweep's seed and its number, not on which
    process runs it (two processes with one seed would otherwise draw the same values)."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def open_storage(url: str):
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # wait out other writers
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as e:  # sqlalchemy: a malformed URL, a missing driver, an unreachable server
        raise GptlabError(f"the study's database {url!r} cannot be opened: {str(e).splitlines()[0]}") from None


def claim_lock(url: str):
    """The lock that serialises claims: a file beside an SQLite database; a no-op for a database server."""
    try:
        parsed = make_url(url)
    except Exception:
        raise GptlabError(f"--storage {url!r} is not a database URL (e.g. sqlite:///path/study.db)") from None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return nullcontext()
    return FileLock(f"{Path(parsed.database).resolve()}.lock")


class Sweep:
    """A study of training runs: the search space, the fixed settings and the study that holds the trials."""

    def __init__(
        self,
        out: Path,
        data_dir: Path,
        space: list[Param],
        preset: str | None = None,
        fixed: dict[str, Any] | None = None,
        search: str = "tpe",
        trials: int | None = None,
        prune: bool = False,
        storage: str | None = None,
        study_name: str | None = None,
    ):
        if search not in SEARCHES:
            raise GptlabError(f"--search must be one of {', '.join(SEARCHES)}; got {search!r}")
        self.out, self.data_dir, self.space, self.preset = Path(out), Path(data_dir), space, preset
        self.search, self.prune = search, prune
        base = build_config(preset, fixed or {})  # a bad --key value fails here, before anything trains
        types = field_types()
        self.fixed = {k: getattr(getattr(base, types[k][0]), k) for k in (fixed or {})}
        self.base_max_iters = base.train.max_iters
        self.seed = self.fixed.get("seed")  # --seed: every trial's training seed, and the search's
        data = TokenData(self.data_dir)
        self.grid = grid(space) if search == "grid" else None
        check_space(space, base, data, every_combination=self.grid is not None)
        self.n_trials = self.trials_wanted(trials)
        self.spec = {
            "preset": preset,
            "params": [p.spec for p in space],
            "fixed": json.loads(json.dumps(self.fixed)),
            "search": search,
            "data_sha256": data.meta["content_sha256"],
        }
        self.check_out()
        url = storage or f"sqlite:///{(self.out / 'study.db').resolve()}"
        self.study_name = study_name or self.out.resolve().name
        self.claim_lock = claim_lock(url)
        new_out = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        with self.claim_lock:  # two processes creating one SQLite study at once would both create its tables
            try:
                self.storage = open_storage(url)
            except GptlabError:
                if new_out and not any(self.out.iterdir()):
                    self.out.rmdir()
                raise
            pruner = (
                optuna.pruners.PercentilePruner(PRUNE_PERCENTILE, n_startup_trials=3, n_warmup_steps=1)
                if prune
                else optuna.pruners.NopPruner()
            )
            self.study = optuna.create_study(
                storage=self.storage,
                study_name=self.study_name,
                direction="minimize",
                load_if_exists=True,
                sampler=self.sampler_for(0),
                pruner=pruner,
            )
            self.check_study(url)

    def trials_wanted(self, trials: int | None) -> int:
        if trials is not None and trials < 1:
            raise GptlabError(f"--trials must be at least 1, got {trials}")
        if self.grid is None:
            if trials is None:
                raise GptlabError(f"--trials N is needed for {self.search} search: how many trials the study runs")
            return trials
        size = int(np.prod([len(values) for values in self.grid.values()]))
        if trials is not None and trials > size:
            raise GptlabError(f"the grid has {size} points, so --trials can be at most {size} (or leave it out)")
        return trials or size

    def check_out(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise GptlabError(f"--out {self.out} is a file; give a directory for the sweep")
        names = {p.name for p in self.out.iterdir()} if self.out.is_dir() else set()
        sweep = {"study.db", "study.db.lock", ".workers"}  # the lock alone: another process is creating the study
        if names and not (sweep & names or any(n.startswith("trial-") for n in names)):
            raise GptlabError(f"{self.out} holds other files, not a sweep; choose another --out")

    def check_study(self, url: str) -> None:
        """A new study records what it is; an existing one must be the same sweep (--trials and --prune may change)."""
        recorded = self.study.user_attrs.get(SPEC)
        if recorded is None:
            if self.study.get_trials(deepcopy=False):
                raise GptlabError(
                    f"the study {self.study_name!r} in {url} was not made by gptlab sweep; give another --study-name"
                )
            if any(self.out.glob("trial-*")):
                raise GptlabError(f"{self.out} holds the trials of another study; choose another --out")
            self.study.set_user_attr(SPEC, self.spec)
            return
        for key, mine in self.spec.items():
            theirs = recorded.get(key)
            if theirs != mine:
                raise GptlabError(
                    f"the study {self.study_name!r} in {self.out} was made with other settings "
                    f"({spec_text(key, theirs)}, here {spec_text(key, mine)}); rerun it with its own settings (only "
                    "--trials and --prune may change), or choose another --out"
                )

    def sampler_for(self, number: int):
        if self.grid is not None:
            return GridSearch(self.grid, seed=self.seed)
        seed = None if self.seed is None else seed_for(self.seed, number)
        if self.search == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # A quarter of the trials (at most Optuna's default 10) draw at random before TPE models the rest.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, self.n_trials // 4)))

    # -- claiming ------------------------------------------------------------------------------------

    def claim(self, worker: Worker):
        """The next trial for this process (a waiting one first), or None when the study is done."""
        with self.claim_lock:
            self.requeue_interrupted()
            trials = self.study.get_trials(deepcopy=False)
            if len(trials) >= self.n_trials and not any(t.state == TrialState.WAITING for t in trials):
                return None
            trial = self.study.ask()
            trial.set_user_attr("worker", worker.record)
            return trial

    def requeue_interrupted(self) -> None:
        """RUNNING trials whose process on this host is gone go back to the queue, to resume."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get("worker")
            if worker is None:  # claimed, but its process was not recorded yet
                if datetime.now() - t.datetime_start < UNRECORDED_GRACE:
                    continue
            elif worker["host"] != HOST or process_alive(worker["lock"]):
                continue  # alive, or another machine's (that machine's rerun resumes it)
            self.put_back(t._trial_id, t.user_attrs)  # FrozenTrial._trial_id: the storage addresses trials by id
            print(f"trial {t.number} was interrupted (its process ended before it finished); it resumes from its run")

    def put_back(self, trial_id: int, user_attrs: dict[str, Any]) -> None:
        """RUNNING -> WAITING, which the storage allows though Study has no method for it: the next claim
        (Study.ask takes waiting trials first) gets the trial back with its number and parameters."""
        self.storage.set_trial_user_attr(trial_id, "interruptions", user_attrs.get("interruptions", 0) + 1)
        self.storage.set_trial_state_values(trial_id, TrialState.WAITING)

    # -- running -------------------------------------------------------------------------------------

    def run(self, progress: bool | None = None) -> SweepSummary:
        """Claim and train trials until the study is done; then write and return the summary."""
        with Worker(self.out / ".workers") as worker:
            while (trial := self.claim(worker)) is not None:
                self.run_trial(trial, worker, progress)
        return self.summary(write=True)

    def trial_dir(self, number: int) -> Path:
        return self.out / f"trial-{number:04d}"

    def run_trial(self, trial, worker: Worker, progress: bool | None) -> None:
        self.study.sampler = self.sampler_for(trial.number)  # the seeded draw of this trial's number
        params = {p.key: p.suggest(trial) for p in self.space}
        run_dir = self.trial_dir(trial.number)
        resuming = trial.user_attrs.get("interruptions", 0) > 0
        threads = self.fixed.get("threads") or worker.share_cores()  # --threads N is kept as given
        print(
            f"trial {trial.number}{' (resuming)' if resuming else ''}: "
            + ", ".join(f"{k}={show(v)}" for k, v in params.items())
            + f" -> {run_dir} ({threads} thread{'s' if threads > 1 else ''})",
            flush=True,
        )
        pruned = False

        def after_eval(step: int, losses: dict[str, float]) -> bool:
            nonlocal pruned
            trial.report(losses["val"], step)
            pruned = self.prune and trial.should_prune()
            return pruned

        try:
            self.train_trial({**params, "threads": threads}, run_dir, resuming, after_eval, progress)
        except TrainingInterrupted as e:  # Ctrl-C or SIGTERM: the trainer saved a checkpoint
            self.put_back(trial._trial_id, trial.user_attrs)
            raise TrainingInterrupted(
                f"stopped during trial {trial.number}, whose checkpoint is saved: rerun the same `gptlab sweep` "
                "command to go on",
                e.exit_code - 128,
            ) from None
        except Exception as e:
            error = str(e) if isinstance(e, GptlabError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, GptlabError):
                traceback.print_exc()
            trial.set_user_attr("error", error.splitlines()[0] if error.strip() else type(e).__name__)
            self.record_run(trial, run_dir)
            self.study.tell(trial, state=TrialState.FAIL)
            print(f"trial {trial.number} failed: {trial.user_attrs['error']}", flush=True)
            return
        row = self.record_run(trial, run_dir)
        if pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, row.best[1])
        print(
            f"trial {trial.number} {'pruned' if pruned else 'complete'}: best val loss {row.best[1]:.4f} at step "
            f"{row.best[0]}, {row.steps} steps in {row.seconds or 0:.1f} s",
            flush=True,
        )

    def train_trial(self, settings: dict[str, Any], run_dir: Path, resuming: bool, after_eval, progress) -> None:
        """settings: the trial's params and its threads, over the fixed keys."""
        last = complete_directory(RunDir(run_dir).last) if resuming else None
        if last is None:  # a new trial, or one interrupted before its first checkpoint
            cfg = build_config(self.preset, {**self.fixed, **settings})
            train(cfg, self.data_dir, run_dir, overwrite=resuming, progress=progress, after_eval=after_eval)
            return
        info = read_info(last)
        if info["step"] < info["run"]["train"]["max_iters"]:
            threads = {"threads": settings["threads"]}
            resume(run_dir, threads, data_dir=self.data_dir, progress=progress, after_eval=after_eval)
        # else it finished training before its process ended: only its record is left to write

    def record_run(self, trial, run_dir: Path) -> Row | None:
        """Steps and time from the run directory, kept in the study (so any process can summarise it)."""
        if not (RunDir(run_dir).is_run() and RunDir(run_dir).metrics.is_file()):
            return None
        row = run_row(run_dir)
        trial.set_user_attr("steps", row.steps)
        trial.set_user_attr("seconds", row.seconds)
        return row

    # -- results -------------------------------------------------------------------------------------

    def rows(self) -> list[Row]:
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            status = STATUS[t.state]
            if t.state == TrialState.WAITING and t.user_attrs.get("interruptions"):
                status = "interrupted"
            curve = sorted(t.intermediate_values.items())
            rows.append(
                Row(
                    name=self.trial_dir(t.number).name,
                    status=status,
                    params=dict(t.params),
                    curve=curve,
                    steps=t.user_attrs.get("steps", curve[-1][0] if curve else 0),
                    max_iters=t.params.get("max_iters", self.base_max_iters),
                    seconds=t.user_attrs.get("seconds"),
                    error=t.user_attrs.get("error", ""),
                )
            )
        return rows

    def summary(self, write: bool = False) -> SweepSummary:
        rows = self.rows()
        summary = SweepSummary(
            out=self.out,
            title=f"Study {self.study_name!r}: {self.search} search over "
            + " ".join(f"--param {p.spec}" for p in self.space)
            + (", pruning trials worse than 3/4 of the completed ones at a step" if self.prune else ""),
            rows=rows,
            space=self.space,
            best_command=None,
        )
        best = summary.best
        if best is not None:
            out = self.out.parent / f"{self.out.name}-best"
            summary.best_command = train_command(self.preset, self.data_dir, out, {**self.fixed, **best.params})
        if write:
            summary.write()
        return summary
