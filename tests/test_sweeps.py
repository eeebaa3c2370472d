"""`gptlab sweep` and `gptlab compare`: grid, random and TPE search, pruning, failed trials, a killed sweep
rerun, two processes on one study, bad specs. Tiny models, a few steps per trial."""

from __future__ import annotations

import csv
import itertools
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptlab.atomic import complete_directory
from gptlab.checkpoint import load_checkpoint, read_info
from gptlab.cli import build_parser, config_overrides, main
from gptlab.config import build_config
from gptlab.data.prepare import prepare
from gptlab.sweeps.space import parse_space
from gptlab.training.metrics import read_metrics

optuna = pytest.importorskip("optuna", reason="the sweep extra (pip install 'gptlab[sweep]') is not installed")
from optuna.trial import TrialState  # noqa: E402

from gptlab.sweeps import study as study_module  # noqa: E402
from gptlab.sweeps.study import Sweep  # noqa: E402

# A trial trains a 1-layer, 16-wide GPT for a few steps and evaluates on one batch.
TINY = {
    "n_layer": "1",
    "n_embd": "16",
    "batch_size": "4",
    "max_iters": "4",
    "eval_interval": "2",
    "eval_iters": "1",
    "log_interval": "1",
    "sample_tokens": "0",
    "warmup_iters": "1",
    "device": "cpu",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from conftest import small_corpus

    root = tmp_path_factory.mktemp("sweep_data")
    (root / "corpus.txt").write_text(small_corpus())
    prepare([str(root / "corpus.txt")], root / "data")
    return root / "data"


def sweep_args(data: Path, out: Path, *args: str, **fixed: str) -> list[str]:
    flags = [x for key, value in {**TINY, **fixed}.items() for x in (f"--{key}", value)]
    return ["sweep", "--data", str(data), "--out", str(out), "--preset", "tiny", *flags, *args]


def make_sweep(data: Path, out: Path, params: list[str], search: str, trials: int | None, prune=False, **fixed):
    overrides = {**TINY, **fixed}
    return Sweep(out, data, parse_space(params, overrides), "tiny", overrides, search, trials, prune)


def load_study(out: Path):
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")


def table_rows(markdown: str) -> list[dict[str, str]]:
    """The rows of the runs table in a text, as header -> cell."""
    lines = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()]
    header = next(cells for cells in lines if cells[0] == "run")
    return [dict(zip(header, cells)) for cells in lines if cells[0].startswith("trial-")]


# -- bad specs ---------------------------------------------------------------------------------------------

BAD = [
    (["--param", "learning_rate", "--trials", "2"], "must look like KEY=KIND:ARGS"),
    (["--param", "lr=loguniform:1e-4:1e-2", "--trials", "2"], "unknown config key 'lr'"),
    (["--param", "learning_rate=normal:1:2", "--trials", "2"], "unknown kind 'normal'"),
    (["--param", "learning_rate=loguniform:1e-2:1e-4", "--trials", "2"], "the low bound must be below the high"),
    (["--param", "learning_rate=loguniform:0:1e-2", "--trials", "2"], "loguniform needs a positive low bound"),
    (["--param", "learning_rate=uniform:1e-3", "--trials", "2"], "uniform takes two bounds"),
    (["--param", "block_size=choice:8,abc", "--trials", "2"], "block_size expects int, got 'abc'"),
    (["--param", "block_size=choice:8,8", "--trials", "2"], "a value is listed twice"),
    (["--param", "optimizer=uniform:1:2", "--trials", "2"], "optimizer takes str values, not a range"),
    (["--param", "vocab_size=choice:10,20", "--trials", "2"], "vocab_size comes from the data directory"),
    (["--param", "block_size=choice:0,8", "--trials", "2"], "block_size=0, which fails: block_size must be in [1, "),
    (["--param", "n_head=choice:2,3", "--trials", "2"], "n_head=3, which fails: n_embd (16) must be divisible"),
    (["--param", "block_size=choice:8,100000", "--trials", "2"], "block_size=100000, which fails: the train split"),
    (["--param", "learning_rate=loguniform:1e-5:1e-2", "--trials", "2"], "min_lr must be in [0, learning_rate]"),
    (["--param", "learning_rate=loguniform:1e-3:1e-2"], "--trials N is needed for tpe search"),
    (["--param", "learning_rate=loguniform:1e-3:1e-2", "--search", "grid"], "grid search takes only choice params"),
    (["--param", "block_size=choice:8,16", "--search", "grid", "--trials", "3"], "the grid has 2 points"),
    (["--param", "block_size=choice:8,16", "--trials", "0"], "--trials must be at least 1"),
    (["--param", "block_size=choice:8", "--param", "block_size=choice:16", "--trials", "2"], "is given twice"),
    (["--param", "n_embd=choice:16,32", "--trials", "2"], "n_embd is both swept (--param) and fixed (--n-embd)"),
    (["--param", "block_size=choice:8,16", "--trials", "2", "--max_iters", "0"], "max_iters must be at least 1"),
    (["--trials", "2"], "give at least one --param"),
    (["--param", "block_size=choice:8,16", "--trials", "2", "--storage", "nodb://x"], "cannot be opened"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_specs_get_one_line_errors_before_anything_trains(data, tmp_path, capsys, args, message):
    out = tmp_path / "sweep"
    assert main(sweep_args(data, out, *args)) == 2  # a flag given twice: the last one counts
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()  # nothing trained, nothing written


def test_a_sweep_without_optuna_says_how_to_install_it(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    monkeypatch.delitem(sys.modules, "gptlab.sweeps.study")
    assert main(sweep_args(data, tmp_path / "sweep", "--param", "block_size=choice:8,16", "--trials", "2")) == 2
    assert "pip install 'gptlab[sweep]'" in capsys.readouterr().err


# -- grid, the summary, compare ----------------------------------------------------------------------------


def test_grid_search_trains_exactly_the_grid_and_summarises_it(data, tmp_path, capsys):
    out = tmp_path / "grid"
    args = ["--search", "grid", "--param", "learning_rate=choice:1e-3,3e-3", "--param", "block_size=choice:8,16"]
    assert main(sweep_args(data, out, *args)) == 0
    printed = capsys.readouterr().out
    trials = load_study(out).get_trials()
    grid = set(itertools.product([1e-3, 3e-3], [8, 16]))
    assert sorted((t.params["learning_rate"], t.params["block_size"]) for t in trials) == sorted(grid)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    for t in trials:  # each trial is an ordinary run directory, trained with its parameters
        ckpt = load_checkpoint(out / f"trial-{t.number:04d}")
        assert (ckpt.config.train.learning_rate, ckpt.config.model.block_size) == (
            t.params["learning_rate"],
            t.params["block_size"],
        )
        assert t.value == min(r["val_loss"] for r in read_metrics(out / f"trial-{t.number:04d}") if r["kind"] == "eval")

    # summary.csv: sorted by best val loss, with params, steps, time and status
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [float(r["best_val_loss"]) for r in rows] == sorted(t.value for t in trials)
    assert {r["status"] for r in rows} == {"complete"} and {r["steps"] for r in rows} == {"4"}
    assert all(float(r["seconds"]) > 0 for r in rows)
    assert {(float(r["learning_rate"]), int(r["block_size"])) for r in rows} == grid
    for name in ("summary.md", "params.png", "curves.png"):
        assert (out / name).stat().st_size > 0
    summary_rows = table_rows((out / "summary.md").read_text())
    assert summary_rows == table_rows(printed) and [r["run"] for r in summary_rows] == [r["run"] for r in rows]

    # the best trial's settings as the train command that trains it longer
    best = min(trials, key=lambda t: t.value)
    command = next(line.strip() for line in printed.splitlines() if line.strip().startswith("gptlab train"))
    parsed = build_parser().parse_args(shlex.split(command)[1:])
    trained = load_checkpoint(out / f"trial-{best.number:04d}").config
    longer = build_config(parsed.preset, config_overrides(parsed))
    assert longer.train.max_iters == 50  # the tiny preset's, more than twice the trial's 4
    longer.train.max_iters = trained.train.max_iters
    assert (
        trained.train.threads >= 1 and longer.train.threads == 0
    )  # the trial's share of the cores; the command's: all
    longer.train.threads = trained.train.threads
    trained.model.vocab_size = 0
    assert longer == trained

    # gptlab compare prints the same table for these runs
    compared = tmp_path / "compare.csv"
    assert main(["compare", *(str(out / f"trial-{t.number:04d}") for t in trials), "--csv", str(compared)]) == 0
    assert table_rows(capsys.readouterr().out) == summary_rows
    assert [r["best_val_loss"] for r in csv.DictReader(compared.open())] == [r["best_val_loss"] for r in rows]

    # the same command again: nothing left to train; other settings on this study: refused
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("trial-*/metrics.jsonl")}
    assert main(sweep_args(data, out, *args)) == 0
    assert len(load_study(out).get_trials()) == 4
    assert {p: p.stat().st_mtime_ns for p in out.glob("trial-*/metrics.jsonl")} == stamps
    capsys.readouterr()
    args[-1] = "block_size=choice:8,32"
    assert main(sweep_args(data, out, *args)) == 2
    assert "made with other settings (--param learning_rate" in capsys.readouterr().err


# -- random and TPE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("search", ["random", "tpe"])
def test_random_and_tpe_search_are_reproducible_with_a_seed(data, tmp_path, search):
    params = ["learning_rate=loguniform:1e-3:1e-2", "block_size=choice:8,16"]

    def run(name: str, seed: str, trials: int):
        make_sweep(data, tmp_path / name, params, search, trials, seed=seed, max_iters="2").run()
        return [(t.params, t.value) for t in load_study(tmp_path / name).get_trials()]

    first = run("a", "7", 3)  # tpe: 1 random trial, then 2 drawn by TPE from the results so far
    assert run("b", "7", 3) == first
    assert len({p["learning_rate"] for p, _ in first}) == 3
    assert run("c", "8", 1)[0][0] != first[0][0]  # another seed draws another trial
    assert load_checkpoint(tmp_path / "a" / "trial-0000").config.train.seed == 7  # --seed also seeds training


# -- pruning, failures --------------------------------------------------------------------------------------


def test_pruning_stops_a_deliberately_bad_trial(data, tmp_path):
    out = tmp_path / "prune"
    params = ["learning_rate=loguniform:1e-6:1e-2"]
    sweep = make_sweep(data, out, params, "random", 4, prune=True, min_lr="0")
    for lr in (5e-3, 5e-3, 5e-3, 1e-6):  # three good trials, then one that learns nothing
        sweep.study.enqueue_trial({"learning_rate": lr})
    summary = sweep.run()
    trials = load_study(out).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert trials[3].params["learning_rate"] == 1e-6
    assert read_info(complete_directory(out / "trial-0003" / "last"))["step"] == 2  # its first evaluation after 0
    assert max(r["step"] for r in read_metrics(out / "trial-0003")) == 2
    assert all(max(r["step"] for r in read_metrics(out / f"trial-{i:04d}")) == 4 for i in range(3))
    pruned = next(r for r in summary.rows if r.status == "pruned")
    assert pruned.steps == 2 and pruned.saved_seconds > 0
    assert "4 trials: 3 complete, 1 pruned." in summary.text()
    assert "Pruning stopped 1 trial early and saved about" in (out / "summary.md").read_text()


def test_a_trial_that_crashes_is_recorded_as_failed_and_never_run_again(data, tmp_path, monkeypatch):
    calls = []
    real_train = study_module.train

    def train_failing_at_2e_3(cfg, *args, **kwargs):
        calls.append(cfg.train.learning_rate)
        if cfg.train.learning_rate == 2e-3:
            raise RuntimeError("injected fault")
        return real_train(cfg, *args, **kwargs)

    monkeypatch.setattr(study_module, "train", train_failing_at_2e_3)
    out = tmp_path / "fail"
    params = ["learning_rate=choice:1e-3,2e-3"]
    summary = make_sweep(data, out, params, "grid", None).run()
    trials = load_study(out).get_trials()
    states = {t.params["learning_rate"]: (t.state, t.user_attrs.get("error")) for t in trials}
    assert states == {1e-3: (TrialState.COMPLETE, None), 2e-3: (TrialState.FAIL, "RuntimeError: injected fault")}
    failed = next(t for t in trials if t.state == TrialState.FAIL)
    assert f"- trial-{failed.number:04d}: RuntimeError: injected fault" in (out / "summary.md").read_text()
    assert f"| trial-{failed.number:04d} | failed |" in summary.text()
    calls.clear()
    make_sweep(data, out, params, "grid", None).run()
    assert calls == []  # the study is done: the failed trial is not tried again
    assert [t.state for t in load_study(out).get_trials()].count(TrialState.FAIL) == 1


# -- real processes: killed, and two at once ---------------------------------------------------------------


# `gptlab sweep` in a process that, once the second trial has saved its checkpoint of step {step}, waits there
# to be killed: a trial of this tiny model trains 100 steps in a fraction of a second, too fast to catch by polling.
HOLD_AFTER_SAVE = """
import sys, time
from gptlab.cli import main
from gptlab.training.trainer import Trainer

save_last, saved = Trainer.save_last, []

def save_and_hold(self, *args, **kwargs):
    save_last(self, *args, **kwargs)
    if self.step == {step}:
        saved.append(self.run_dir.path)
        if len(saved) == 2:
            time.sleep(600)

Trainer.save_last = save_and_hold
sys.exit(main(sys.argv[1:]))
"""


def start_sweep(argv: list[str], hold_at_step: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = ["-m", "gptlab"] if hold_at_step is None else ["-c", HOLD_AFTER_SAVE.format(step=hold_at_step)]
    return subprocess.Popen(
        [sys.executable, *launch, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def running_trial_with_checkpoint(out: Path) -> bool:
    """Trial 0 is complete and trial 1 is RUNNING with its checkpoint of step 50 (of 100)."""
    if not (out / ".workers").exists():  # the sweep has not finished creating its study yet
        return False
    trials = load_study(out).get_trials()
    if not trials or trials[0].state != TrialState.COMPLETE:
        return False
    for t in trials:
        last = complete_directory(out / f"trial-{t.number:04d}" / "last")
        try:
            if t.state == TrialState.RUNNING and last and 0 < read_info(last)["step"] < 100:
                return True
        except (OSError, ValueError):  # replaced while read
            pass
    return False


def test_a_killed_sweep_rerun_finishes_the_study_without_repeating_finished_trials(data, tmp_path, capsys):
    out = tmp_path / "killed"
    grid = ["--search", "grid", "--param", "learning_rate=choice:1e-3,2e-3"]
    argv = sweep_args(data, out, *grid, max_iters="100", eval_interval="50")  # steps are cheap, evaluations not
    proc = start_sweep(argv, hold_at_step=50)
    deadline = time.monotonic() + 120
    while not running_trial_with_checkpoint(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, log
    before = {t.number: t for t in load_study(out).get_trials()}
    finished = [n for n, t in before.items() if t.state == TrialState.COMPLETE]
    killed = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert finished and len(killed) == 1, log
    metrics = {n: (out / f"trial-{n:04d}" / "metrics.jsonl").read_text() for n in finished}

    assert main(argv) == 0  # the same command again
    printed = capsys.readouterr().out
    after = load_study(out).get_trials()
    assert len(after) == 2 and all(t.state == TrialState.COMPLETE for t in after)
    for n in finished:  # untouched: neither trained again nor re-recorded
        assert after[n].datetime_complete == before[n].datetime_complete
        assert (out / f"trial-{n:04d}" / "metrics.jsonl").read_text() == metrics[n]
    assert f"trial {killed[0]} was interrupted" in printed and "resuming at step" in printed
    assert after[killed[0]].user_attrs["interruptions"] == 1
    steps = [r["step"] for r in read_metrics(out / f"trial-{killed[0]:04d}") if r["kind"] == "eval"]
    assert steps == [0, 50, 100]


def test_two_processes_share_one_study_without_overlap(data, tmp_path):
    out = tmp_path / "shared"
    grid = ["--param", "learning_rate=choice:1e-3,2e-3", "--param", "block_size=choice:8,16"]
    argv = sweep_args(data, out, "--search", "grid", *grid, max_iters="40", eval_interval="40")
    procs = [start_sweep(argv) for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    trials = load_study(out).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    points = [(t.params["learning_rate"], t.params["block_size"]) for t in trials]
    assert sorted(points) == sorted(itertools.product([1e-3, 2e-3], [8, 16]))  # each point once
    by = [t.user_attrs["worker"]["pid"] for t in trials]
    assert set(by) == {p.pid for p in procs}, by  # both took trials
    assert sorted(p.name for p in out.glob("trial-*")) == [f"trial-{n:04d}" for n in range(4)]


def test_sweep_directories_share_a_study_in_another_database(data, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    shared = ["--param", "learning_rate=loguniform:1e-3:1e-2", "--storage", storage, "--study-name", "lr"]
    assert main(sweep_args(data, tmp_path / "a", *shared, "--trials", "1", max_iters="2")) == 0
    assert main(sweep_args(data, tmp_path / "b", *shared, "--trials", "2", max_iters="2")) == 0
    trials = optuna.load_study(study_name="lr", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert [p.name for p in (tmp_path / "a").glob("trial-*")] == ["trial-0000"]
    assert [p.name for p in (tmp_path / "b").glob("trial-*")] == ["trial-0001"]
    assert "2 trials: 2 complete." in capsys.readouterr().out
    assert not (tmp_path / "a" / "study.db").exists()
