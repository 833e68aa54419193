"""Searches side by side: several started at the same instant on one machine, sharing one
MGC_HOME (so one demo and one cache, written once) and one MLflow store (so one Optuna storage),
and some of them a results folder or a Tune storage path. Each gets its own Ray and dashboard (the
loser of a port race starts again on another port), its own search name in every store, and every
run and result survives."""

import json
import re
import subprocess
import sys

import pytest

SEARCHES = 3
# (--storage-path, --results-dir) under the work folder: the second search has a Tune storage path
# of its own, the third a results folder of its own; each shares the other with the first
FOLDERS = (("ray", "results"), ("ray-own", "results"), ("ray", "results-own"))


@pytest.mark.slow
def test_searches_started_at_once_each_finish_and_lose_nothing(tmp_path, cli_runs, rel, faults):
    home = tmp_path / "home"  # a fresh one: the searches also race to write the demo and prepare its cache
    env = rel.env(home)
    args = rel.args(tmp_path, "--smoke", "--num-samples", "1", "--max-epochs", "1")  # the dashboard on (default)
    runs = []
    for storage, results in FOLDERS:
        own = list(args)
        own[own.index("--storage-path") + 1] = str(tmp_path / storage)
        own[own.index("--results-dir") + 1] = str(tmp_path / results)
        runs.append(cli_runs("mgc_ray.tune", *own, cwd=tmp_path, env=env))
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

    for name, (storage, results) in zip(names, FOLDERS):
        c, parent, children = rel.mlflow_search(tmp_path, name=name)
        assert parent.info.status == "FINISHED" and parent.data.tags["mgc.search"] == name
        assert len(children) == 1 and children[0].info.status == "FINISHED"
        assert [m.step for m in c.get_metric_history(children[0].info.run_id, "val/loss")] == [0]
        assert (tmp_path / results / "demo-smoke" / name / "leaderboard.csv").is_file()
        assert len(rel.trial_results(tmp_path / storage / name)) == 1
    for folder in ("ray", "ray-own"):
        held = sorted(p.name for p in (tmp_path / folder).iterdir() if p.is_dir())
        assert held == sorted(n for n, f in zip(names, FOLDERS) if f[0] == folder), f"{folder}: {held}"
    for folder in ("results", "results-own"):
        held = sorted(p.name for p in (tmp_path / folder / "demo-smoke").iterdir())
        assert held == sorted(n for n, f in zip(names, FOLDERS) if f[1] == folder), f"{folder}: {held}"
    import optuna

    studies = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert sorted(st.study_name for st in studies) == sorted(names), "one study per search, under its name"
    c, _, _ = rel.mlflow_search(tmp_path)
    exp = c.get_experiment_by_name(f"mgc_ray/{rel_arch(rel)}/demo-smoke")
    runs_all = c.search_runs([exp.experiment_id], max_results=1000)
    assert len([r for r in runs_all if r.data.tags.get("mgc.source") == "paper"]) == 1, "one reference run"
    assert len(runs_all) == 1 + 2 * SEARCHES and not [r for r in runs_all if r.info.status == "RUNNING"]
    retried = sum("starting Ray again" in out for out in outs)
    assert all(not run.leftovers() for run in runs), "each command's local Ray ends with it"
    faults.record(
        f"{SEARCHES} searches started at the same instant (one MGC_HOME and MLflow store, two of them one "
        f"results folder, two one storage path; {retried} lost the dashboard port race and restarted Ray)",
        1,
        "each finished with its own Ray, dashboard, name, MLflow runs and results; nothing lost",
    )


def rel_arch(rel) -> str:
    return rel.args(".")[1]


# --- the name's claim, raced: two processes claim one search name at the same instant ----------
# Each scenario gives the two claimers shared or separate stores: "shared" ones lie under the
# scenario's folder, separate ones under a folder of each claimer's own. MLflow's store and the
# Optuna storage beside it go together (the default), as do the Tune storage and the results.
NAME = "baseline_a_2d-demo-smoke-20250101-120000"
SCENARIOS = {
    "one MLflow store, separate storage paths and results": ("mlflow",),
    "one storage path and results, separate MLflow stores": ("folders",),
    "every store shared": ("mlflow", "folders"),
}
_CLAIMER = r"""
import json, sys, time
from pathlib import Path
from mgc_ray.search import names, tracking
from mgc_ray.search.plan import Plan
import optuna, mlflow.tracking  # imported before the barrier: the claims start together

me, work, scenarios = int(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
out = {}
for label, shared in scenarios.items():
    base = work / str(len(out))
    own = base / f"own{me}"
    mine = lambda store: base if store in shared else own
    plan = Plan(
        arch="baseline_a_2d", cache="", dataset="demo-smoke", name=sys.argv[4], num_samples=1, max_epochs=1, seed=0,
        paper_only=False, storage_path=str(mine("folders") / "ray"), results_root=str(mine("folders") / "results"),
        mlflow_uri=f"sqlite:///{mine('mlflow') / 'mlflow.db'}",
        optuna_storage=f"sqlite:///{mine('mlflow') / 'optuna.db'}",
    )
    (own / "ray").mkdir(parents=True, exist_ok=True)
    (base / "ray").mkdir(parents=True, exist_ok=True)
    (base / f"ready{me}").touch()  # a barrier: both claim the moment both are here
    waited = time.monotonic()
    while len(list(base.glob("ready*"))) < 2:
        if time.monotonic() - waited > 120:
            sys.exit("the other claimer never came")
        time.sleep(0.001)
    claim = names.claim(plan, ["baseline_a_2d"])
    out[label] = {"claim": claim.__dict__, "plan": plan.__dict__}
print(json.dumps(out))
"""


def _stores(plan: dict) -> dict:
    """What each store holds under any name: Tune folders, result folders, studies, search runs."""
    from pathlib import Path

    import optuna
    from mlflow.tracking import MlflowClient

    runs = []
    c = MlflowClient(tracking_uri=plan["mlflow_uri"])
    exp = c.get_experiment_by_name("mgc_ray/baseline_a_2d/demo-smoke")
    if exp is not None:
        runs = [r.data.tags["mgc.search"] for r in c.search_runs([exp.experiment_id]) if "mgc.search" in r.data.tags]
    return {
        "tune": sorted(p.name for p in Path(plan["storage_path"]).iterdir() if p.is_dir()),
        "results": sorted(p.name for p in (Path(plan["results_root"]) / "demo-smoke").iterdir()),
        "study": sorted(s.study_name for s in optuna.get_all_study_summaries(plan["optuna_storage"])),
        "mlflow": sorted(runs),
    }


def test_two_searches_claiming_one_name_at_once_get_their_own_in_every_store(tmp_path, faults):
    """Whichever stores two searches share, the two claims of one name at the same instant give
    NAME and NAME-2, each shared store holds one of each (a separate one its claimer's only), and
    a name given back (a search that failed before writing) is free again."""
    from mgc_ray.search.names import Claim, claim
    from mgc_ray.search.plan import Plan

    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, str(i), str(tmp_path), json.dumps(SCENARIOS), NAME],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    done = [p.communicate(timeout=300) for p in claimers]
    assert [p.returncode for p in claimers] == [0, 0], "\n".join(err[-3000:] for _, err in done)
    got = [json.loads(out) for out, _ in done]
    for label, shared in SCENARIOS.items():
        (a, b) = (g[label] for g in got)
        names = sorted(x["claim"]["name"] for x in (a, b))
        assert names == [NAME, f"{NAME}-2"], (label, names)
        for x in (a, b):
            mine = x["claim"]["name"]
            held = _stores(x["plan"])
            both = sorted(names)
            # a shared store holds both names, a separate one the claimer's own only
            assert held["mlflow"] == held["study"] == (both if "mlflow" in shared else [mine]), (label, held)
            assert held["tune"] == held["results"] == (both if "folders" in shared else [mine]), (label, held)
            runs = x["claim"]["runs"]
            assert len(runs) == 1 and x["claim"]["study"] == [x["plan"]["optuna_storage"], mine]
    # The loser of the all-shared race gives its name back: every store is as before its claim.
    a, b = (g["every store shared"] for g in got)
    loser = a if a["claim"]["name"] != NAME else b
    Claim(
        **{**loser["claim"], "study": tuple(loser["claim"]["study"]), "runs": tuple(loser["claim"]["runs"])}
    ).release()
    assert _stores(loser["plan"]) == {"tune": [NAME], "results": [NAME], "study": [NAME], "mlflow": [NAME]}
    plan = Plan(**{**loser["plan"], "archs": (), "warm_start": ()})
    assert claim(plan, ["baseline_a_2d"]).name == f"{NAME}-2", "a name given back is taken again"
    faults.record(
        "two searches claiming one name at the same instant, with one MLflow/Optuna store and separate "
        "storage paths and results, the reverse, and all shared",
        len(SCENARIOS),
        "distinct names (NAME, NAME-2) in every shared store, one of each; a name given back is free again",
    )
