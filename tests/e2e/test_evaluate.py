"""`python -m mgc_ray.evaluate` on a model trained in the session (the `smoke_search` fixture)."""

import csv
import json

import pytest

from mgc_ray.errors import UserError
from mgc_ray.evaluate import main as evaluate_main
from mgc_ray.files import read_sealed_json, write_sealed_json
from mgc_ray.metrics import METRIC_NAMES
from mgc_ray.models import checkpoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OUT_FILES = ("metrics.json", "confusion_matrix.png", "confusion_matrix_track.png", "per_class.csv", "per_class.md")


def test_run_id_scores_the_test_split_and_logs_to_the_run(smoke_search, run_module, tmp_path):
    out = tmp_path / "eval"
    proc = run_module(
        "mgc_ray.evaluate", "--run-id", smoke_search.best_run_id, "--mlflow-uri", smoke_search.uri, "--out", str(out)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in OUT_FILES:
        assert (out / name).is_file(), name
    for png in ("confusion_matrix.png", "confusion_matrix_track.png"):
        data = (out / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert not list(out.glob("*.tmp*")), "atomic writes leave no temporary files"

    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "test" and m["arch"] == "baseline_a_2d" and m["run_id"] == smoke_search.best_run_id
    assert m["checkpoint"] == smoke_search.checkpoint and m["cache"] == smoke_search.cache
    for level in ("crop", "track"):
        for k in (*METRIC_NAMES, "loss"):
            assert k in m[level]
            assert k in proc.stdout, "every metric is printed"
    # The same model on the same split as the runner's own test evaluation: same figures.
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=smoke_search.uri)
    run = c.get_run(smoke_search.best_run_id)
    for k in METRIC_NAMES:
        assert m["crop"][k] == pytest.approx(run.data.metrics[f"test/{k}"], abs=1e-6)
        assert m["track"][k] == pytest.approx(run.data.metrics[f"test_track/{k}"], abs=1e-6)
    n_test = sum(sum(row) for row in m["confusion"])
    assert n_test == m["tracks"] > 0, "one centred crop per test track at crop level"

    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["genre"] for r in rows] == m["label_names"]
    assert sum(int(r["support"]) for r in rows) == n_test
    for r in rows:
        assert float(r["crop_f1"]) == pytest.approx(m["crop"][f"f1/{r['genre']}"], abs=1e-5)

    artifacts = {a.path for a in c.list_artifacts(smoke_search.best_run_id, "evaluate_test")}
    assert {f"evaluate_test/{name}" for name in OUT_FILES} <= artifacts
    assert run.data.metrics["evaluate/test/paper_f1"] == pytest.approx(m["crop"]["paper_f1"])


# ray_local: evaluate reuses a Ray that is already up (and leaves it up)
def test_checkpoint_and_cache_on_the_validation_split(smoke_search, ray_local, tmp_path, capsys):
    out = tmp_path / "val"
    assert (
        evaluate_main(
            [
                "--checkpoint",
                smoke_search.checkpoint,
                "--cache",
                smoke_search.cache,
                "--split",
                "val",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "val" and m["run_id"] is None
    # The checkpoint kept the epoch of the lowest validation loss; scoring the same centred
    # validation crops again gives that loss back.
    payload = checkpoint.load_payload(smoke_search.checkpoint)
    assert m["crop"]["loss"] == pytest.approx(payload.metrics["val/loss"], rel=1e-4)
    assert "val split" in capsys.readouterr().out


def test_cache_at_another_sample_rate_is_refused(smoke_search, tmp_path):
    import shutil

    cache = tmp_path / "cache16k"
    shutil.copytree(smoke_search.cache, cache)
    manifest = read_sealed_json(cache / "manifest.json")
    manifest["sample_rate"] = 16000
    write_sealed_json(cache / "manifest.json", manifest)
    with pytest.raises(UserError, match=r"16000 Hz audio but checkpoint .* takes 22050 Hz"):
        evaluate_main(["--checkpoint", smoke_search.checkpoint, "--cache", str(cache), "--out", str(tmp_path / "o")])


@pytest.mark.parametrize(
    "args, match",
    [
        (["--checkpoint", "{ckpt}"], r"no cache to score on: give --cache"),
        (["--run-id", "0123456789abcdef"], r"no run '0123456789abcdef'"),
        (["--run-id", "{paper}"], r"paper's Table 1 reference"),
        (["--run-id", "x", "--mlflow-uri", "sqlite:///{tmp}/none.db"], r"no MLflow store"),
        (["--checkpoint", "{tmp}"], r"no checkpoint at"),
    ],
)
def test_bad_input_is_one_clear_error(smoke_search, tmp_path, args, match):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=smoke_search.uri)
    exp = c.get_experiment_by_name("mgc_ray/baseline_a_2d/demo-smoke")
    paper = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("mgc.source") == "paper"][0]
    args = [a.format(ckpt=smoke_search.checkpoint, paper=paper.info.run_id, tmp=tmp_path) for a in args]
    with pytest.raises(UserError, match=match):
        evaluate_main([*args, "--mlflow-uri", smoke_search.uri] if "--mlflow-uri" not in args else args)


def test_cli_error_is_one_line_and_exit_2(smoke_search, run_module, tmp_path):
    proc = run_module(
        "mgc_ray.evaluate", "--checkpoint", smoke_search.checkpoint, "--split", "train", "--cache", smoke_search.cache
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_test_scoring_in_a_ray_task_gives_the_searchs_figures(smoke_search, ray_local):
    """With GPUs per trial the search scores the test split in a Ray task holding a trial's share
    (`driver.SplitScorer`), so a head node without a GPU never scores on its CPU. The task path,
    here with 0 GPUs, gives the figures the search logged for its best trial."""
    from mlflow.tracking import MlflowClient
    from ray.tune import Checkpoint

    from mgc_ray.data.cache import read_manifest
    from mgc_ray.data.pipeline import CacheDatasets
    from mgc_ray.search.driver import SplitScorer, score_on_worker

    ds = CacheDatasets.build(read_manifest(smoke_search.cache), materialise=False).test
    ckpt = Checkpoint.from_directory(smoke_search.checkpoint)
    remote, payload = score_on_worker(ckpt, ds, gpus=0, cpus=1)
    assert payload.model_config.arch == "baseline_a_2d"
    logged = MlflowClient(tracking_uri=smoke_search.uri).get_run(smoke_search.best_run_id).data.metrics
    for k in METRIC_NAMES:
        assert remote.crop[k] == pytest.approx(logged[f"test/{k}"], abs=1e-6)
        assert remote.track[k] == pytest.approx(logged[f"test_track/{k}"], abs=1e-6)
    local, _ = SplitScorer(gpus=0)(ckpt, ds)  # no GPUs: scored here, in the driver, as before
    assert local.track_ids == remote.track_ids and (local.confusion == remote.confusion).all()
