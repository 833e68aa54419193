"""`python -m mgc_ray.compare`: the session's real search store, and the row-choosing rules
on a store written here run by run."""

import csv
import re
from pathlib import Path

import pytest

from mgc_ray import compare
from mgc_ray.config import PAPER
from mgc_ray.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TABLE1 = Path(__file__).resolve().parents[2] / "results" / "paper_table1.csv"
METRICS = ("paper_f1", "paper_accuracy", "macro_precision", "macro_recall")


def _table1() -> dict[str, dict[str, str]]:
    return {r["arch"]: r for r in csv.DictReader(TABLE1.open())}


def test_comparison_of_a_real_search_against_table1(smoke_search, run_module, tmp_path):
    from mlflow.tracking import MlflowClient

    from mgc_ray.search import tracking

    db = tmp_path / "mlflow.db"  # a copy: the other archs' reference runs go into it, not the shared store
    db.write_bytes((smoke_search.workdir / "mlflow.db").read_bytes())
    uri = f"sqlite:///{db}"
    c = MlflowClient(tracking_uri=uri)
    for arch in PAPER:
        tracking.ensure_paper_run(c, tracking.experiment_id(c, f"mgc_ray/{arch}/demo-smoke", uri), arch)
    out = tmp_path / "results" / "comparison.md"
    proc = run_module("mgc_ray.compare", "--mlflow-uri", uri, "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    md = out.read_text()
    assert "## demo-smoke" in md
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    table1 = _table1()
    paper_rows = {r["arch"]: r for r in rows if r["row"] == "paper Table 1"}
    assert set(paper_rows) == set(PAPER) == set(table1), "one paper row per arch"
    for arch, ref in table1.items():
        for k in METRICS:
            assert float(paper_rows[arch][k]) == float(ref[k]), (arch, k)
        md_row = f"| {ref['label']} | paper Table 1 | " + " | ".join(ref[k] for k in METRICS) + " |"
        assert md_row in md, "the markdown shows Table 1's exact figures"

    ours = {r["row"]: r for r in rows if r["arch"] == "baseline_a_2d" and r["row"] != "paper Table 1"}
    assert set(ours) == {"ours, paper settings", "ours, best searched"}
    parent = c.get_run(smoke_search.parent_run_id)
    best = ours["ours, best searched"]
    for k in (*METRICS, "macro_f1", "top1_accuracy"):
        assert float(best[k]) == pytest.approx(parent.data.metrics[f"test/{k}"])
    assert float(best["delta_paper_f1"]) == pytest.approx(parent.data.metrics["test/paper_f1"] - 0.558)
    assert smoke_search.best_run_id in best["source"]
    # each of ours with its 95 % intervals (as the search logged them), and the difference in words
    for k in (*METRICS, "macro_f1", "top1_accuracy"):
        low, high = float(best[f"{k}_ci95_low"]), float(best[f"{k}_ci95_high"])
        assert (low, high) == pytest.approx(
            (parent.data.metrics[f"test_ci95/{k}/low"], parent.data.metrics[f"test_ci95/{k}/high"])
        )
        assert low <= float(best[k]) <= high
    assert "95 % intervals of ours (bootstrap over the test tracks):" in md
    assert re.search(
        r"- 2D Baseline A, ours, best searched: F1 \(paper\) (lower than|no clear difference from) the paper's 0\.558",
        md,
    )
    # A smoke search's paper trial (the paper's settings at smoke sizes) is tagged by the runner
    # (rule 1) and scored on the test split like the best.
    paper_trial = ours["ours, paper settings"]["source"].split("(run ")[1].split(")")[0]
    assert "test/paper_f1" in c.get_run(paper_trial).data.metrics

    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 20_000
    assert not list(out.parent.glob("*.tmp*")), "atomic writes leave no temporary files"


def test_store_without_searches_is_one_clear_error(run_module, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the empty store
    proc = run_module("mgc_ray.compare", "--mlflow-uri", uri, "--out", str(tmp_path / "c.md"))
    assert proc.returncode == 2 and "no mgc_ray/<arch>/<dataset> experiment" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "c.md").exists()


# --- the rules that choose rows, on a store written run by run ---------------------
def _metrics(base: float) -> dict:
    return {
        "test/paper_f1": base,
        "test/paper_accuracy": 0.8 + base / 10,
        "test/macro_precision": base,
        "test/macro_recall": base,
        "test/macro_f1": base,
        "test/top1_accuracy": base,
    }


class Store:
    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        from mgc_ray.search import tracking

        self.c, self.uri, self.tracking = MlflowClient(tracking_uri=uri), uri, tracking
        self.t = 1_700_000_000_000

    def experiment(self, arch: str, dataset: str) -> str:
        exp = self.tracking.experiment_id(self.c, f"mgc_ray/{arch}/{dataset}", self.uri)
        self.tracking.ensure_paper_run(self.c, exp, arch)
        return exp

    def search(self, exp: str, name: str, *, paper_only=False, status="FINISHED", best=None, tags=None):
        self.t += 1000
        run = self.c.create_run(
            exp,
            run_name=name,
            start_time=self.t,
            tags={"mgc.source": "search", **({"mgc.best_trial": best} if best else {}), **(tags or {})},
        )
        self.tracking.log_params(self.c, run.info.run_id, {"paper_only": paper_only})
        self.c.set_terminated(run.info.run_id, status)
        return run.info.run_id

    def trial(self, exp: str, parent: str, trial_id: str, params: dict, val_loss: float, test: float | None):
        self.t += 1000
        run = self.c.create_run(
            exp,
            run_name=trial_id,
            start_time=self.t,
            tags={"mgc.source": "trial", "mgc.trial_id": trial_id, "mlflow.parentRunId": parent},
        )
        rid = run.info.run_id
        self.tracking.log_params(self.c, rid, params)
        self.tracking.log_metrics(self.c, rid, {"best/val_loss": val_loss, **(_metrics(test) if test else {})})
        self.c.set_terminated(rid, "FINISHED")
        return rid


def _paper_params(arch: str) -> dict:
    p = PAPER[arch]
    return {
        "lr": p.lr,
        "weight_decay": p.weight_decay,
        "batch_size": p.batch_size,
        "window": p.window,
        "n_mels": p.n_mels,
        "crop_seconds": p.crop_seconds,
    }


def test_rows_are_chosen_by_the_documented_rules(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'rules.db'}")
    exp = s.experiment("densenet", "fma_small")
    other = {**_paper_params("densenet"), "lr": 3e-4}
    # An older --paper search: its trial is preferred for "paper settings" (it ran every epoch).
    c_ = s.search(exp, "densenet-fma_small-paper-1", paper_only=True, best="p1")
    p1 = s.trial(exp, c_, "p1", _paper_params("densenet"), 1.6, 0.50)
    # Search A: the paper point (params equal the paper's), the best (lowest val loss over all
    # searches) and an unscored trial.
    a = s.search(exp, "densenet-fma_small-A", best="a2")
    s.trial(exp, a, "a1", _paper_params("densenet"), 1.5, 0.40)
    a2 = s.trial(exp, a, "a2", other, 1.2, 0.45)
    s.trial(exp, a, "a3", {**other, "lr": 5e-5}, 1.9, None)
    # Search B: newer, but its best trial's validation loss is worse: not chosen; better test
    # figures must not matter.
    b = s.search(exp, "densenet-fma_small-B", best="b1")
    s.trial(exp, b, "b1", other, 1.4, 0.70)
    # A failed search with the best figures of all: ignored.
    f = s.search(exp, "densenet-fma_small-F", status="FAILED", best="f1")
    s.trial(exp, f, "f1", other, 0.1, 0.99)
    s.experiment("baseline_b", "demo")  # a dataset with only the paper's row
    s.c.create_experiment("someone else's")  # not ours: ignored

    tables = compare.collect(s.uri)
    assert list(tables) == ["demo", "fma_small"]
    assert [r["kind"] for r in tables["demo"]["baseline_b"]] == ["paper Table 1"]
    rows = {r["kind"]: r for r in tables["fma_small"]["densenet"]}
    assert rows["paper Table 1"]["paper_f1"] == 0.574 and rows["paper Table 1"]["macro_precision"] == 0.578
    assert p1 in rows["ours, paper settings"]["source"] and rows["ours, paper settings"]["paper_f1"] == 0.50
    assert a2 in rows["ours, best searched"]["source"] and rows["ours, best searched"]["paper_f1"] == 0.45
    assert rows["ours, best searched"]["delta_paper_f1"] == pytest.approx(0.45 - 0.574)

    files = compare.write(tables, tmp_path / "out" / "comparison.md", s.uri)
    assert [f.name for f in files] == ["comparison.md", "comparison.csv", "comparison.png"]
    md = files[0].read_text()
    assert md.index("## demo") < md.index("## fma_small")
    assert "| DenseNet | ours, best searched | 0.450 |" in md


def test_paper_trial_rules_inside_one_search(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'one.db'}")
    exp = s.experiment("baseline_b", "demo")
    small = {**_paper_params("baseline_b"), "window": 512, "n_mels": 32}  # a smoke search's shrunk point
    # No tag and no trial at the paper's settings (a search that started elsewhere, or an
    # untagged smoke search): nothing is labelled as the paper's, not even the first trial.
    a = s.search(exp, "A", best="a2")
    s.trial(exp, a, "a1", small, 2.0, 0.3)
    s.trial(exp, a, "a2", {**small, "lr": 3e-4}, 1.9, 0.31)
    kids = [r for r in s.c.search_runs([exp]) if r.data.tags.get("mlflow.parentRunId") == a]
    assert compare.paper_trial(s.c.get_run(a), kids, "baseline_b") is None
    # Rule 3: a scored trial whose params are the paper's is the paper trial.
    a3 = s.trial(exp, a, "a3", _paper_params("baseline_b"), 1.95, 0.32)
    kids = [r for r in s.c.search_runs([exp]) if r.data.tags.get("mlflow.parentRunId") == a]
    assert compare.paper_trial(s.c.get_run(a), kids, "baseline_b").info.run_id == a3
    # Rule 1: the search's own tag wins.
    b = s.search(exp, "B", best="b1", tags={"mgc.paper_trial": "b2"})
    s.trial(exp, b, "b1", small, 1.0, 0.3)
    b2 = s.trial(exp, b, "b2", {**small, "lr": 3e-4}, 1.1, 0.2)
    kids = [r for r in s.c.search_runs([exp]) if r.data.tags.get("mlflow.parentRunId") == b]
    assert compare.paper_trial(s.c.get_run(b), kids, "baseline_b").info.run_id == b2
    # The first trial not scored on the test split: no paper-settings row from this search.
    c_ = s.search(exp, "C", best="c2")
    s.trial(exp, c_, "c1", small, 2.0, None)
    s.trial(exp, c_, "c2", {**small, "lr": 3e-4}, 1.0, 0.3)
    kids = [r for r in s.c.search_runs([exp]) if r.data.tags.get("mlflow.parentRunId") == c_]
    assert compare.paper_trial(s.c.get_run(c_), kids, "baseline_b") is None


def test_out_must_be_markdown(tmp_path):
    with pytest.raises(UserError, match=r"\.md"):
        compare.main(["--out", str(tmp_path / "c.txt")])
