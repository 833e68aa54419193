"""Budgets (--time-budget, --gpu-hours): a spent budget ends a search as a finished one, with
its results, its test metrics and nothing left RUNNING, and says so; --resume continues the
count. Bad durations are one line and exit 2."""

import signal
import subprocess
import sys

import pytest

from mgc_ray.errors import UserError
from mgc_ray.search.duration import parse_duration

N_TRIALS, EPOCHS = 4, 3


@pytest.mark.parametrize(
    "text,seconds",
    [("90s", 90), ("20m", 1200), ("2h", 7200), ("1h30m", 5400), ("45", 45), ("1.5m", 90), (" 2H ", 7200)],
)
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "m20", "-3m", "0", "0s", "1h-30m"])
def test_a_bad_duration_is_a_user_error(text):
    with pytest.raises(UserError, match="--time-budget"):
        parse_duration(text)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--time-budget", "soon"], "is not a duration"),
        (["--time-budget", "0m"], "more than 0 seconds"),
        (["--gpu-hours", "0"], "--gpu-hours must be > 0"),
    ],
)
def test_bad_budget_flags_are_one_line_and_exit_2(tmp_path, argv, needle):
    proc = subprocess.run(
        [sys.executable, "-m", "mgc_ray.tune", "--arch", "densenet", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr and "Traceback" not in proc.stderr


def _result(epoch: int, seconds: float, max_epochs: int = 4) -> dict:
    return {"training_iteration": epoch, "time_this_iter_s": seconds, "config": {"max_epochs": max_epochs}}


def test_the_demos_budget_plans_ahead_and_keeps_two_trials():
    # The demo's budget (plan_ahead, 2 trials guaranteed), with the time already spent set
    # directly: its decisions, not the clock, are under test.
    from mgc_ray.search.budget import Budget

    b = Budget(time_s=100, min_trials=2, plan_ahead=True)
    b._trials = 1  # the paper trial
    assert not b.stop_trial("paper", _result(1, 30)), "30 s spent + its next epoch + a first epoch fit in 100 s"
    b.wall_before = 45
    assert b.stop_trial("paper", _result(2, 20)), "45 + 30 (its longest epoch) + 30 (the sampled trial's) > 100"
    assert not b.refuse_trial(), "the sampled trial starts: two trials are guaranteed"
    b._trials = 2
    assert not b.refuse_trial(), "45 + a 30-s first epoch fit"
    b.wall_before = 75
    assert b.refuse_trial(), "75 + a 30-s first epoch would end past 100 s"
    assert not b.stop_trial("sampled", _result(4, 30)), "a trial's last epoch is not a budget stop"
    assert b.stopped == {"paper": 2} and "time budget of 1m 40s" in b.ended


def test_a_resumed_budget_continues_the_count_and_keeps_its_limits():
    from mgc_ray.search.budget import Budget

    first = Budget(time_s=600)
    first.wall_before = 250.0
    again = Budget()  # --resume without a budget: the search's own budget holds
    again.set_state(first.get_state())
    assert (again.time_s, again.wall(), again.resumed) == (600, 250.0, True)
    assert again.spent() is None and Budget(time_s=60).spent() is None
    shorter = Budget(time_s=200)  # a budget given with --resume replaces the limit, not the count
    shorter.set_state(first.get_state())
    assert shorter.time_s == 200 and "time budget of 3m 20s" in shorter.spent()


def _runs(rel, work):
    c, parent, children = rel.mlflow_search(work)
    return parent, children


TWO_ARCHS = ("baseline_a_2d", "baseline_a_1d")  # the two cheapest models: one search, one driver


@pytest.mark.slow
@pytest.mark.parametrize("archs", [TWO_ARCHS[:1], TWO_ARCHS], ids=["one-arch", "two-archs"])
def test_a_spent_budget_ends_the_search_with_results(tmp_path, smoke_home, cli_runs, rel, archs):
    # A budget that is spent before the first report: the first trial (a paper trial) is
    # stopped at its first epoch, no other trial starts, and the search still finishes; with
    # several archs the same budget ends the one search over all of them.
    run = cli_runs(
        "mgc_ray.tune",
        *rel.args(
            tmp_path,
            "--smoke",
            "--no-dashboard",
            "--num-samples",
            str(N_TRIALS),
            "--max-epochs",
            str(EPOCHS),
            "--time-budget",
            "1s",
            arch=",".join(archs),
        ),
        cwd=tmp_path,
        env=rel.env(smoke_home),
    )
    assert run.wait(600) == 0, run.tail()
    out = run.output
    assert "| ours, paper settings |" in out, "the comparison table is printed"
    searches = {a: rel.mlflow_search(tmp_path, arch=a) for a in archs}
    children = [r for _, _, kids in searches.values() for r in kids]
    assert len(children) == 1 < N_TRIALS, "no trial starts once the budget is spent"
    trial = children[0]
    for c, parent, kids in searches.values():
        assert parent.info.status == "FINISHED"
        assert not [r for r in kids if r.info.status == "RUNNING"]
        ended = parent.data.tags["mgc.budget_ended"]
        assert "time budget of 1s was spent" in ended and f"1 of {N_TRIALS} trials" in ended
        assert ended in out
        assert parent.data.metrics["search/wall_s"] > 1
    c, parent, _ = searches[trial.data.params["arch"]]
    assert "test/paper_f1" in parent.data.metrics and "test/paper_f1" in trial.data.metrics
    assert [m.step for m in c.get_metric_history(trial.info.run_id, "val/loss")] == [0], (
        "the trial ran one epoch: it was stopped at its first report"
    )
    results = next((tmp_path / "results" / "demo-smoke").glob(f"{'+'.join(archs)}-*"))
    if len(archs) > 1:
        assert ended in (results / "summary.md").read_text()
        results = results / trial.data.params["arch"]
    assert (results / "test_metrics.json").is_file() and (results / "leaderboard.csv").is_file()
    assert ended in (results / "summary.md").read_text()


@pytest.mark.slow
def test_resume_continues_the_budget_count(tmp_path, smoke_home, cli_runs, rel):
    # A search with a large budget, interrupted mid-trial; resumed with a budget smaller than
    # what the first session already spent, it starts no new trial: the count went on.
    args = rel.args(
        tmp_path,
        "--smoke",
        "--no-dashboard",
        "--space",
        str(tmp_path / "space.yaml"),
        "--num-samples",
        str(N_TRIALS),
        "--max-epochs",
        "6",
        "--grace-period",
        "6",
    )
    (tmp_path / "space.yaml").write_text(rel.CALM_SPACE)
    env = rel.env(smoke_home)
    run = cli_runs("mgc_ray.tune", *args, "--time-budget", "1h", cwd=tmp_path, env=env)
    exp = run.wait_until(lambda: rel.experiment_dir(tmp_path), 120, "the Tune experiment folder")
    run.wait_until(
        lambda: any(0 < len(rows) < 6 for rows in rel.trial_results(exp).values()),
        300,
        "a trial part-way through its epochs",
    )
    run.signal(signal.SIGINT)
    assert run.wait(120) == 130, run.tail()
    parent, children = _runs(rel, tmp_path)
    first = parent.data.metrics["search/wall_s"]
    trials_before = set(rel.tune_state(exp))
    assert "mgc.budget_ended" not in parent.data.tags, "Ctrl+C, not the budget, stopped it"

    run = cli_runs("mgc_ray.tune", *args, "--resume", "--time-budget", "1s", cwd=tmp_path, env=env)
    assert run.wait(600) == 0, run.tail()
    assert "spent before this --resume" in run.output
    parent, children = _runs(rel, tmp_path)
    assert parent.info.status == "FINISHED"
    assert not [r for r in children if r.info.status == "RUNNING"]
    assert set(rel.tune_state(exp)) == trials_before, "a budget already spent starts no new trial"
    assert "time budget of 1s was spent" in parent.data.tags["mgc.budget_ended"]
    c = rel.mlflow_search(tmp_path)[0]
    walls = [m.value for m in c.get_metric_history(parent.info.run_id, "search/wall_s")]
    assert walls[0] == pytest.approx(first) and walls[-1] >= first, f"the count continues: {walls}"
    assert "test/paper_f1" in parent.data.metrics


def test_gpu_hours_without_gpus_is_refused(tmp_path, smoke_home, rel):
    # Here the trials get no GPU, so GPU-hours would never be spent: one line, exit 2, before any trial.
    proc = subprocess.run(
        [sys.executable, "-m", "mgc_ray.tune", *rel.args(tmp_path, "--smoke", "--no-dashboard", "--gpu-hours", "0.5")],
        cwd=tmp_path,
        env=rel.env(smoke_home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "--gpu-hours" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "ray").exists() or not any((tmp_path / "ray").iterdir()), "no search was started"
