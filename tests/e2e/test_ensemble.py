"""The best trials as one model: the search's ensemble (`tune --ensemble K`), scored in the search,
by `evaluate --search NAME`, and answering `predict --search NAME` (the `smoke_search` fixture: 2
trials, so its ensemble is both)."""

import json
import os

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from mgc_ray.evaluate import main as evaluate_main
from mgc_ray.metrics import METRIC_NAMES
from mgc_ray.predict import main as predict_main

REAL_CLIP = "fma_small/000/000002.mp3"


def _members(smoke_search) -> list[dict]:
    run = MlflowClient(tracking_uri=smoke_search.uri).get_run(smoke_search.parent_run_id)
    return json.loads(run.data.tags["mgc.ensemble"])


def test_search_scores_its_top_trials_as_one_model(smoke_search):
    c = MlflowClient(tracking_uri=smoke_search.uri)
    parent = c.get_run(smoke_search.parent_run_id)
    members = _members(smoke_search)
    assert len(members) == 2, "the default ensemble of 3 holds every trial of a 2-trial search"
    assert members[0]["checkpoint"] == smoke_search.checkpoint, "the best trial comes first"
    assert members[0]["val_loss"] <= members[1]["val_loss"]
    assert len({m["checkpoint"] for m in members}) == 2
    for m in members:
        assert os.path.isfile(os.path.join(m["checkpoint"], "model.pt"))
        assert "test/paper_f1" in c.get_run(m["run_id"]).data.metrics, "each member's own test figures"
    metrics = parent.data.metrics
    for k in METRIC_NAMES:
        low, high = metrics[f"ensemble_test_ci95/{k}/low"], metrics[f"ensemble_test_ci95/{k}/high"]
        assert low <= metrics[f"ensemble_test/{k}"] <= high
    summary = (smoke_search.results / "summary.md").read_text()
    assert "ours, ensemble of the top 2" in summary
    assert "minus the best trial alone, paired on the same test tracks" in summary
    test = json.loads((smoke_search.results / "test_metrics.json").read_text())
    assert [m["trial"] for m in test["ensemble"]["members"]] == [m["trial"] for m in members]
    assert test["ensemble"]["crop"]["paper_f1"] == pytest.approx(metrics["ensemble_test/paper_f1"])


# ray_local: evaluate reuses a Ray that is already up
def test_evaluate_search_scores_the_ensemble_as_the_search_did(smoke_search, ray_local, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["--search", smoke_search.name, "--mlflow-uri", smoke_search.uri, "--out", str(out)]
    assert evaluate_main(args) == 0
    assert "the ensemble of 2 models" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["checkpoints"] == [x["checkpoint"] for x in _members(smoke_search)]
    logged = MlflowClient(tracking_uri=smoke_search.uri).get_run(smoke_search.parent_run_id).data.metrics
    for k in METRIC_NAMES:
        assert m["crop"][k] == pytest.approx(logged[f"ensemble_test/{k}"], abs=1e-6)
        assert m["track"][k] == pytest.approx(logged[f"ensemble_test_track/{k}"], abs=1e-6)
    assert "ensemble (mean probabilities) of 2 checkpoints" in (out / "per_class.md").read_text()
    again = MlflowClient(tracking_uri=smoke_search.uri).get_run(smoke_search.parent_run_id).data.metrics
    assert again["evaluate_ensemble/test/paper_f1"] == pytest.approx(m["crop"]["paper_f1"])


def test_predict_search_answers_with_the_mean_of_its_members(smoke_search, fma_samples, capsys):
    clip = os.path.join(fma_samples, REAL_CLIP)
    assert predict_main([clip, "--search", smoke_search.name, "--mlflow-uri", smoke_search.uri, "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    members = _members(smoke_search)
    assert doc["checkpoints"] == [m["checkpoint"] for m in members] and doc["run_id"] == smoke_search.parent_run_id
    assert "ensemble" in captured.err
    alone = []
    for m in members:
        assert predict_main([clip, "--checkpoint", m["checkpoint"], "--json"]) == 0
        alone.append(json.loads(capsys.readouterr().out)["files"][0]["probabilities"])
    got = doc["files"][0]["probabilities"]
    for genre, p in got.items():
        assert p == pytest.approx(np.mean([a[genre] for a in alone]), abs=1e-6)
    assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)
    # the search's run id names it as well as its name does
    assert predict_main([clip, "--search", smoke_search.parent_run_id, "--mlflow-uri", smoke_search.uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"][0]["probabilities"] == pytest.approx(got)


def test_unknown_search_is_one_clear_error(smoke_search, fma_samples):
    """One line each (`run_cli` prints a UserError as `error: ...` and exits 2)."""
    from mgc_ray.errors import UserError

    clip = os.path.join(fma_samples, REAL_CLIP)
    with pytest.raises(UserError, match="no search named or with run id 'no-such-search'") as err:
        predict_main([clip, "--search", "no-such-search", "--mlflow-uri", smoke_search.uri])
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(UserError, match="is not a search run"):
        predict_main([clip, "--search", smoke_search.best_run_id, "--mlflow-uri", smoke_search.uri])
    with pytest.raises(UserError, match="no search named"):
        evaluate_main(["--search", "no-such-search", "--mlflow-uri", smoke_search.uri])
