"""The learning check: through the whole search path (demo mp3s -> cache -> Ray Data ->
trial), a 2D model learns the demo generator's data far above chance (0.125). It is written
first at `python -m mgc_ray.demo`'s own size (16 tracks x 8 genres x 15 s, what this check was
set for), where the tune command looks for its demo; that command's own is smaller, to fit
its 5-minute budget."""

import os
import subprocess
import sys

import pytest

# One trial of 2D Baseline A at the paper's input sizes (513 x 128) and a learning rate that suits 100 training tracks (the paper's
# 1e-4 with batch 32 takes ~4 optimiser steps per epoch here: too few for a short budget).
SPACE = """\
# python -m mgc_ray.tune --arch baseline_a_2d --space <this file> --num-samples 1 --max-epochs 10
start: {lr: 1.0e-3, weight_decay: 1.0e-4, batch_size: 32, window: 3472, n_mels: 513, crop_seconds: 10.0}
space:
  lr: {type: choice, values: [1.0e-3]}
"""
MAX_EPOCHS = 10


@pytest.mark.slow
def test_a_2d_model_learns_the_demo_data(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MGC_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    demo = subprocess.run(
        [sys.executable, "-m", "mgc_ray.demo", "--tracks-per-genre", "16", "--seconds", "15"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    cmd = [
        sys.executable,
        "-m",
        "mgc_ray.tune",
        "--arch",
        "baseline_a_2d",
        "--space",
        str(space),
        "--num-samples",
        "1",
        "--max-epochs",
        str(MAX_EPOCHS),
        "--no-dashboard",
        "--mlflow-uri",
        uri,
        "--results-dir",
        str(tmp_path / "results"),
        "--storage-path",
        str(tmp_path / "ray"),
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("mgc_ray/baseline_a_2d/demo")
    trials = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("mgc.source") == "trial"]
    assert len(trials) == 1
    f1 = [m.value for m in c.get_metric_history(trials[0].info.run_id, "val/macro_f1")]
    assert len(f1) == MAX_EPOCHS
    assert max(f1) >= 0.6, f"validation macro F1 per epoch: {f1}"
