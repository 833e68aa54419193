"""An interrupted search finishes with --resume and loses nothing: one search stopped twice,
first with SIGINT (Ctrl+C), then with SIGKILL, then finished.

Checked: completed trials are kept and never re-run, an interrupted trial continues from
its checkpoint, the Optuna sampler keeps its history across Tuner.restore (Ray issue
30861 lost it once), and MLflow ends with one run per trial and nothing left RUNNING."""

import re
import signal
import time

import pytest

N_TRIALS, EPOCHS = 4, 6  # 6 epochs of ~0.3 s: time to interrupt a trial mid-way


def _epochs(rows) -> list[int]:
    return [r["epoch"] for r in rows]


def _study_points(study) -> list[tuple]:
    return [(round(t.params["lr"], 12), round(t.params["weight_decay"], 12)) for t in study.trials]


@pytest.mark.slow
def test_search_survives_sigint_then_sigkill_and_resumes(tmp_path, smoke_home, cli_runs, rel, faults):
    space = tmp_path / "space.yaml"
    space.write_text(rel.CALM_SPACE)
    args = rel.args(
        tmp_path,
        "--smoke",
        "--no-dashboard",
        "--space",
        str(space),
        "--num-samples",
        str(N_TRIALS),
        "--max-epochs",
        str(EPOCHS),
        "--seed",
        "0",
        "--grace-period",
        str(EPOCHS),
    )  # no ASHA stops: a trial short of EPOCHS is unfinished
    env = rel.env(smoke_home)

    # --- 1. Ctrl+C once a trial has finished and the next one has a checkpoint.
    run = cli_runs("mgc_ray.tune", *args, cwd=tmp_path, env=env)
    exp = run.wait_until(lambda: rel.experiment_dir(tmp_path), 120, "the Tune experiment folder")

    def one_done_one_started():
        res = rel.trial_results(exp)
        done = [t for t, rows in res.items() if len(rows) == EPOCHS]
        started = [t for t, rows in res.items() if 0 < len(rows) < EPOCHS]
        return (done, started) if done and started else None

    run.wait_until(one_done_one_started, 300, "a finished trial and a started one")
    time.sleep(0.2)  # let the driver take in the started trial's checkpoint
    run.signal(signal.SIGINT)
    assert run.wait(120) == 130, run.tail()
    before = rel.trial_results(exp)
    state_a = rel.tune_state(exp)
    done = [t for t, st in state_a.items() if st == "TERMINATED" and len(before[t]) == EPOCHS]
    started = [t for t, st in state_a.items() if st != "TERMINATED" and before.get(t)]
    assert done and started, f"Ctrl+C must land mid-trial: {state_a}"
    out = run.output
    name = exp.name
    assert f"--resume --experiment-name {name}" in out, "the command says how to finish the search"
    c, parent, children = rel.mlflow_search(tmp_path)
    assert parent.info.status == "KILLED"
    assert not [r for r in children if r.info.status == "RUNNING"], "Ctrl+C ends every run"
    assert {r.data.tags["mgc.trial_id"]: r.info.status for r in children}[done[0]] == "FINISHED"
    study_a = rel.searcher_study(exp)
    assert len(study_a.trials) >= 2
    assert not run.leftovers(), "the command's local Ray ends with it"

    # --- 2. --resume (the newest search), then SIGKILL once a trial started after the resume has
    # reported an epoch. Tune saves its state every ~10 s and after checkpoints, so that trial may
    # or may not be in it: either way --resume must end with nothing lost or left RUNNING.
    run = cli_runs("mgc_ray.tune", *args, "--resume", cwd=tmp_path, env=env)
    run.wait_until(
        lambda: [t for t, rows in rel.trial_results(exp).items() if rows and not before.get(t)],
        300,
        "an epoch of a trial started after the resume",
    )
    run.signal(signal.SIGKILL)
    run.wait(60)
    # Its local Ray goes down with it: no raylet, GCS or trial worker holds CPUs. Ray's agents
    # and a worker still starting notice only after ~1 min: end those now (they are this test's).
    heavy = ("raylet", "gcs_server", "ray::ImplicitFunc")
    left = [rel.cmdline(p) for p in run.leftovers(grace=20) if any(h in rel.cmdline(p) for h in heavy)]
    assert not left, f"Ray processes outlived the killed driver: {left}"
    run.stop()
    c, parent, _ = rel.mlflow_search(tmp_path)
    assert parent.info.status == "RUNNING", "a SIGKILL leaves the search run RUNNING, for --resume to fix"

    # --- 3. --resume again (by name) finishes the search.
    run = cli_runs("mgc_ray.tune", *args, "--resume", "--experiment-name", name, cwd=tmp_path, env=env)
    assert run.wait(600) == 0, run.tail()
    assert re.search(r"results in .*" + re.escape(name), run.output)

    state = rel.tune_state(exp)
    assert len(state) == N_TRIALS and set(state.values()) == {"TERMINATED"}, state
    after = rel.trial_results(exp)
    assert after[done[0]] == before[done[0]], "a trial finished before Ctrl+C is not re-run"
    resumed = after[started[0]]
    assert _epochs(resumed)[: len(before[started[0]])] == _epochs(before[started[0]])
    assert any(r["restored_epochs"] >= 1 for r in resumed), "the interrupted trial continued from its checkpoint"
    assert _epochs(resumed)[-1] == EPOCHS - 1

    study = rel.searcher_study(exp)
    assert _study_points(study)[: len(study_a.trials)] == _study_points(study_a)
    paper = (1e-4, 1e-4)
    assert _study_points(study).count(paper) == 1, "the paper's point is not suggested again after a resume"
    assert len({t.number for t in study.trials if t.state.name == "COMPLETE"}) >= N_TRIALS

    c, parent, children = rel.mlflow_search(tmp_path, name=name)
    assert parent.info.status == "FINISHED"
    assert not [r for r in children if r.info.status == "RUNNING"]
    by_trial: dict[str, list] = {}
    for r in children:
        by_trial.setdefault(r.data.tags["mgc.trial_id"], []).append(r)
    assert all(len(runs) == 1 for runs in by_trial.values()), "one MLflow run per trial, never a duplicate"
    assert set(state) <= set(by_trial)
    for trial in state:
        r = by_trial[trial][0]
        assert r.info.status == "FINISHED"
        # each epoch logged once, even one that a SIGKILL made Tune re-run from an older checkpoint
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "val/loss"))
        assert steps == sorted(set(_epochs(after[trial]))), f"trial {trial}: {steps}"
    lost = set(by_trial) - set(state)  # started after Tune's last save before the SIGKILL
    for trial in lost:
        assert by_trial[trial][0].info.status == "KILLED" and "mgc.lost" in by_trial[trial][0].data.tags
    faults.record(
        "a search interrupted with SIGINT (Ctrl+C), then --resume",
        1,
        "runs ended KILLED; finished trials not re-run; the interrupted one continued from its checkpoint",
    )
    faults.record(
        "a search's driver SIGKILLed, then --resume",
        1,
        "no run left RUNNING; one MLflow run per trial; each epoch logged once; the sampler's history kept",
    )
