"""Figures a search writes at its end (the session's real search) and their edge cases
(one trial, one varying hyperparameter, values outside the space) on stand-in results."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mgc_ray.results import plots, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEARCH_FIGURES = (
    "confusion_matrix.png",
    "per_class_f1.png",
    "learning_curves.png",
    "trial_curves.png",
    "parallel_coordinate.png",
    "param_importances.png",
)
GENRES = ["Electronic", "Experimental", "Folk", "Hip-Hop", "Instrumental", "International", "Pop", "Rock"]


def _is_png(path: Path, min_bytes: int = 10_000) -> bool:
    data = Path(path).read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > min_bytes


def test_a_search_writes_and_logs_every_figure(smoke_search):
    from mlflow.tracking import MlflowClient

    for name in SEARCH_FIGURES:
        assert _is_png(smoke_search.results / name), name
    c = MlflowClient(tracking_uri=smoke_search.uri)
    logged = {a.path for a in c.list_artifacts(smoke_search.parent_run_id)}
    assert set(SEARCH_FIGURES) <= logged, "the runner logs the files write_search_results returns"


# --- stand-ins for Ray Tune's Result objects ----------------------------------
def _result(trial_id: str, config: dict, losses: list[float], max_epochs: int, error=None):
    rows = []
    for e, loss in enumerate(losses):
        rows.append(
            {
                "epoch": e,
                "training_iteration": e + 1,
                "trial_id": trial_id,
                "train/loss": loss + 0.1,
                "val/loss": loss,
                "val/macro_f1": 1 - loss / 3,
                "val/paper_f1": 1 - loss / 3,
                **{f"val/f1/{g}": 0.1 * (i % 5) for i, g in enumerate(GENRES)},
                "best/val_loss": min(losses[: e + 1]),
                "best/epoch": int(np.argmin(losses[: e + 1])),
            }
        )
    df = pd.DataFrame(rows)
    return SimpleNamespace(
        config={"arch": "baseline_b", "max_epochs": max_epochs, **config},
        metrics=rows[-1] if rows else {},
        metrics_dataframe=df,
        error=error,
        path=f"/tmp/trial_{trial_id}",
    )


PAPER_POINT = dict(lr=1e-4, weight_decay=1e-4, batch_size=32, window=3472, n_mels=513, crop_seconds=10.0)


def _rows(result) -> dict:
    from mgc_ray.trial.scoring import Scores

    cm = np.eye(8, dtype=int) * 3 + 1
    crop = {k: 0.5 for k in report.COLUMNS}
    scores = Scores(crop=crop, track=crop, confusion=cm, track_confusion=cm, track_ids=tuple(range(32)))
    return {"best": {"result": result, "scores": scores, "checkpoint": "/tmp/ckpt", "run_id": "r1"}}


def _plan(**kw):
    return SimpleNamespace(
        **{
            "arch": "baseline_b",
            "name": "baseline_b-demo-x",
            "dataset": "demo",
            "num_samples": 4,
            "max_epochs": 4,
            "seed": 0,
            "cache": "/tmp/cache",
            **kw,
        }
    )


# What write_search_results reads of the cache's manifest.
MANIFEST = SimpleNamespace(label_names=tuple(GENRES), data_seed=0, num_tracks={"test": 32}, n_classes=len(GENRES))


def test_search_figures_mark_stopped_trials_and_use_the_search_space(tmp_path, capsys):
    grid = [
        _result("t_paper", PAPER_POINT, [2.0, 1.8, 1.7, 1.6], 4),
        _result("t_best", {**PAPER_POINT, "lr": 3e-4, "batch_size": 64, "window": 2048}, [1.9, 1.5, 1.2, 1.1], 4),
        _result("t_cut1", {**PAPER_POINT, "lr": 2e-5, "batch_size": 16, "window": 4096}, [2.1], 4),
        _result("t_cut2", {**PAPER_POINT, "lr": 6e-4, "weight_decay": 1e-3}, [2.05, 2.0], 4),
        _result("t_fail", {**PAPER_POINT, "lr": 1e-3}, [2.2], 4, error=RuntimeError("boom")),
    ]
    files = report.write_search_results(tmp_path, _plan(), grid, _rows(grid[1]), MANIFEST)
    names = {Path(f).name for f in files}
    assert set(SEARCH_FIGURES) <= names
    for f in files:
        if str(f).endswith(".png"):
            assert _is_png(f), f
    curves = {t["name"]: t for t in report.trial_curves(grid, grid[1], 4)}
    assert curves["t_cut1"]["stopped"] and curves["t_cut2"]["stopped"], "ended before max_epochs: ASHA stopped them"
    assert not curves["t_paper"]["stopped"] and curves["t_best"]["best"] and curves["t_fail"]["failed"]
    assert curves["t_best"]["epochs"] == [1, 2, 3, 4] and curves["t_cut2"]["values"] == pytest.approx(
        [1 - 2.05 / 3, 1 - 2 / 3]
    )
    assert "skipped" not in capsys.readouterr().out

    study, why = report.study_from_grid(
        grid,
        {
            "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
            "batch_size": {"type": "choice", "values": [16, 32, 64]},
        },
    )
    assert why == "" and len(study.trials) == 4, "the failed trial is left out"
    dists = study.trials[0].distributions
    assert set(dists) == {"lr", "weight_decay", "batch_size", "window"}, "only what varies"
    assert dists["lr"].low == 1e-5 and dists["lr"].log, "the search space's range"
    assert list(dists["batch_size"].choices) == [16, 32, 64]
    assert sorted(dists["window"].choices) == [2048, 3472, 4096], "not in the given space: the values seen"
    assert min(t.value for t in study.trials) == pytest.approx(1.1)


def test_one_trial_or_one_varying_param_skips_with_a_line_not_a_crash(tmp_path, capsys):
    one = [_result("only", PAPER_POINT, [2.0, 1.9], 2)]
    files = report.write_search_results(
        tmp_path / "one", _plan(max_epochs=2, num_samples=1), one, _rows(one[0]), MANIFEST
    )
    names = {Path(f).name for f in files}
    assert {"learning_curves.png", "trial_curves.png", "per_class_f1.png"} <= names
    assert not names & {"parallel_coordinate.png", "param_importances.png"}
    out = capsys.readouterr().out
    assert "figures skipped: 1 finished trial(s)" in out and len(out.strip().splitlines()) == 1

    lr_only = [_result("a", PAPER_POINT, [2.0, 1.9], 2), _result("b", {**PAPER_POINT, "lr": 5e-4}, [1.8, 1.7], 2)]
    files = report.write_search_results(tmp_path / "lr", _plan(max_epochs=2), lr_only, _rows(lr_only[1]), MANIFEST)
    names = {Path(f).name for f in files}
    assert "parallel_coordinate.png" in names and "param_importances.png" not in names
    assert "importance figure skipped: only 1 hyperparameter varies" in capsys.readouterr().out


def test_a_figure_that_fails_is_a_line_and_the_rest_are_written(tmp_path, capsys, monkeypatch):
    def broken(*a, **k):
        raise ValueError("no data to draw")

    monkeypatch.setattr(plots, "trial_curves_png", broken)
    grid = [_result("a", PAPER_POINT, [2.0, 1.9], 2), _result("b", {**PAPER_POINT, "lr": 5e-4}, [1.8, 1.7], 2)]
    files = report.write_search_results(tmp_path, _plan(max_epochs=2), grid, _rows(grid[1]), MANIFEST)
    assert "trial curves figure skipped (ValueError: no data to draw)" in capsys.readouterr().out
    assert "learning_curves.png" in {Path(f).name for f in files}


def test_learning_curves_and_comparison_figures_are_valid_pngs(tmp_path):
    history = [
        {"epoch": e, "train/loss": 2 - e / 10, "val/loss": 2 - e / 20, "val/macro_f1": e / 25} for e in range(20)
    ]
    assert _is_png(plots.learning_curves_png(history, tmp_path / "lc.png", "20 epochs"))
    tables = {
        "fma_small": [
            {"arch": a, "kind": k, "paper_f1": 0.5, "paper_accuracy": 0.88}
            for a in ("DenseNet", "Baseline B")
            for k in ("paper Table 1", "ours, best searched")
        ]
    }
    png = plots.comparison_png(tables, [("paper_f1", "F1"), ("paper_accuracy", "accuracy")], tmp_path / "c.png", "t")
    assert _is_png(png)
    assert not list(tmp_path.glob("*.tmp*"))
