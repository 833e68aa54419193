"""Searches side by side: several started at the same instant on one machine, sharing one
MGC_HOME (so one demo and one cache, written once), one MLflow store, one results folder and
one Tune storage path. Each gets its own Ray and dashboard (the loser of a port race starts
again on another port), its own search name, and every run and result survives."""

import re

import pytest

SEARCHES = 3


@pytest.mark.slow
def test_searches_started_at_once_each_finish_and_lose_nothing(tmp_path, cli_runs, rel, faults):
    home = tmp_path / "home"  # a fresh one: the searches also race to write the demo and prepare its cache
    env = rel.env(home)
    args = rel.args(tmp_path, "--smoke", "--num-samples", "1", "--max-epochs", "1")  # the dashboard on (default)
    runs = [cli_runs("mgc_ray.tune", *args, cwd=tmp_path, env=env) for _ in range(SEARCHES)]
    codes = [run.wait(900) for run in runs]
    outs = [run.output for run in runs]
    assert codes == [0] * SEARCHES, "\n".join(run.tail(3000) for run in runs)
    for out in outs:
        assert "Traceback" not in out and "database is locked" not in out and "SystemExit" not in out, out[-4000:]
    ports = [re.search(r"Ray dashboard at http://[\d.]+:(\d+)", out).group(1) for out in outs]
    assert len(set(ports)) == SEARCHES, f"each search has its own dashboard: {ports}"
    names = [re.search(r"Tune state in \S+/([^/\s]+)", out).group(1) for out in outs]
    assert len(set(names)) == SEARCHES, f"each search has its own name: {names}"
    assert sum("writing the built-in demo dataset" in out for out in outs) == 1, "the demo is written once"

    for name in names:
        c, parent, children = rel.mlflow_search(tmp_path, name=name)
        assert parent.info.status == "FINISHED" and parent.data.tags["mgc.search"] == name
        assert len(children) == 1 and children[0].info.status == "FINISHED"
        assert [m.step for m in c.get_metric_history(children[0].info.run_id, "val/loss")] == [0]
        assert (tmp_path / "results" / "demo-smoke" / name / "leaderboard.csv").is_file()
        assert len(rel.trial_results(tmp_path / "ray" / name)) == 1
    c, _, _ = rel.mlflow_search(tmp_path)
    exp = c.get_experiment_by_name(f"mgc_ray/{rel_arch(rel)}/demo-smoke")
    runs_all = c.search_runs([exp.experiment_id], max_results=1000)
    assert len([r for r in runs_all if r.data.tags.get("mgc.source") == "paper"]) == 1, "one reference run"
    assert len(runs_all) == 1 + 2 * SEARCHES and not [r for r in runs_all if r.info.status == "RUNNING"]
    retried = sum("starting Ray again" in out for out in outs)
    assert all(not run.leftovers() for run in runs), "each command's local Ray ends with it"
    faults.record(
        f"{SEARCHES} searches started at the same instant (one MGC_HOME, MLflow store, results "
        f"and storage path; {retried} lost the dashboard port race and restarted Ray)",
        1,
        "each finished with its own Ray, dashboard, name, MLflow runs and results; nothing lost",
    )


def rel_arch(rel) -> str:
    return rel.args(".")[1]
