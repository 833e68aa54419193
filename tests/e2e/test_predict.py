"""`python -m mgc_ray.predict` on a model trained in the session, and the checkpoint's guards."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from mgc_ray import __version__
from mgc_ray.errors import UserError
from mgc_ray.models import checkpoint
from mgc_ray.predict import main as predict_main

REAL_CLIP = "fma_small/000/000002.mp3"  # under fma_samples: Hip-Hop, 44.1 kHz stereo, 29.98 s


def _signal(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """A few tones and some noise: (N,) float32 in [-0.5, 0.5]."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (220, 440, 1250)) + 0.05 * rng.standard_normal(len(t))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def audio(tmp_path_factory, fma_samples):
    """The real FMA clip plus files written here: 5-s stereo 44.1 kHz, 3-min mono 16 kHz flac,
    0.5-s wav (shorter than a crop), and a broken mp3."""
    d = tmp_path_factory.mktemp("audio")
    files = {"real": os.path.join(fma_samples, REAL_CLIP)}
    stereo = np.stack([_signal(5, 44_100), _signal(5, 44_100, seed=1)], axis=1)
    sf.write(d / "stereo_5s.wav", stereo, 44_100)
    files["stereo"] = str(d / "stereo_5s.wav")
    sf.write(d / "long_3min.flac", _signal(180, 16_000), 16_000)
    files["long"] = str(d / "long_3min.flac")
    sf.write(d / "short.wav", _signal(0.5, 22_050), 22_050)
    files["short"] = str(d / "short.wav")
    (d / "broken.mp3").write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 40)
    files["broken"] = str(d / "broken.mp3")
    return files


def _windows(seconds: float, crop_seconds: float) -> int:
    return 1 if seconds <= crop_seconds else 1 + math.ceil(round((seconds - crop_seconds) / crop_seconds, 6))


def test_any_file_is_answered_and_a_broken_one_does_not_stop_the_others(smoke_search, run_module, audio):
    order = [audio["real"], audio["broken"], audio["stereo"], audio["long"], audio["short"]]
    proc = run_module(
        "mgc_ray.predict",
        *order,
        "--run-id",
        smoke_search.best_run_id,
        "--mlflow-uri",
        smoke_search.uri,
        "--json",
        "--top",
        "3",
    )
    assert proc.returncode == 2, "a file that cannot be read makes the exit status 2"
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and audio["broken"] in errors[0] and "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    payload = checkpoint.load_payload(smoke_search.checkpoint)
    crop = payload.model_config.crop_seconds
    assert doc["arch"] == "baseline_a_2d" and doc["genres"] == list(payload.label_names)
    assert doc["checkpoint"] == smoke_search.checkpoint and doc["run_id"] == smoke_search.best_run_id
    by_file = {f["file"]: f for f in doc["files"]}
    assert [f["file"] for f in doc["files"]] == order, "answers come in the order asked"
    assert "error" in by_file[audio["broken"]]
    for key, seconds in (("real", 29.98), ("stereo", 5.0), ("long", 180.0), ("short", 0.5)):
        f = by_file[audio[key]]
        assert "error" not in f
        assert f["seconds"] == pytest.approx(seconds, abs=0.05)
        assert f["windows"] == _windows(f["seconds"], crop), "windows cover the whole file; a short one is padded"
        probs = f["probabilities"]
        assert set(probs) == set(doc["genres"]) and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert len(f["top"]) == 3 and f["genre"] == f["top"][0]["genre"]
        tops = [t["probability"] for t in f["top"]]
        assert tops == sorted(tops, reverse=True) and tops[0] == pytest.approx(max(probs.values()))


def test_text_output_and_stereo_44k_equals_mono_22k(smoke_search, audio, tmp_path, capsys):
    """The same music at another rate and channel count gets the same answer."""
    from scipy.signal import resample_poly

    mono22 = _signal(5, 22_050)
    sf.write(tmp_path / "mono22.wav", mono22, 22_050, subtype="FLOAT")
    up = resample_poly(mono22, 2, 1).astype(np.float32)
    sf.write(tmp_path / "stereo44.wav", np.stack([up, up], axis=1), 44_100, subtype="FLOAT")
    assert (
        predict_main(
            [
                str(tmp_path / "mono22.wav"),
                str(tmp_path / "stereo44.wav"),
                "--checkpoint",
                smoke_search.checkpoint,
                "--json",
                "--top",
                "8",
            ]
        )
        == 0
    )
    a, b = json.loads(capsys.readouterr().out)["files"]
    for g, p in a["probabilities"].items():
        assert b["probabilities"][g] == pytest.approx(p, abs=2e-3)

    assert predict_main([audio["real"], "--checkpoint", smoke_search.checkpoint, "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(audio["real"]) and "windows" in lines[0]
    assert len(lines) == 3 and lines[1].strip().startswith("1.") and lines[2].strip().startswith("2.")


@pytest.mark.parametrize(
    "args, match",
    [
        (["--top", "0"], r"--top must be >= 1"),
        (["--run-id", "0123456789abcdef", "--mlflow-uri", "{uri}"], r"no run '0123456789abcdef'"),
    ],
)
def test_bad_flags_are_one_clear_error(smoke_search, audio, args, match):
    args = [a.format(uri=smoke_search.uri) for a in args]
    if "--run-id" not in args:
        args += ["--checkpoint", smoke_search.checkpoint]
    with pytest.raises(UserError, match=match):
        predict_main([audio["stereo"], *args])


# --- checkpoints carry what is needed to use them, and refuse what they cannot serve ---
def _resaved(src: str, dst, **changes) -> str:
    payload = torch.load(f"{src}/model.pt", map_location="cpu", weights_only=False)
    payload.update(changes)
    dst.mkdir(parents=True, exist_ok=True)
    torch.save(payload, dst / "model.pt")
    checkpoint.seal(dst)  # sealed as this version writes it: the change above is the only difference
    return str(dst)


def test_checkpoint_holds_everything_predict_needs(smoke_search):
    payload = checkpoint.load_payload(smoke_search.checkpoint)
    cfg = dataclasses.asdict(payload.model_config)
    assert {"arch", "sample_rate", "window", "n_mels", "crop_seconds", "wave_mean", "wave_std"} <= set(cfg)
    assert len(payload.label_names) == cfg["n_classes"] == 8 and payload.version == __version__


@pytest.mark.parametrize("version", ["0.0.9", "1.1.0", "9.0", None])
def test_checkpoint_from_another_major_minor_version_is_refused(smoke_search, tmp_path, version, run_module, audio):
    d = _resaved(smoke_search.checkpoint, tmp_path / "old", version=version)
    with pytest.raises(UserError, match=r"written by mgc_ray .*this is mgc_ray .*same major.minor"):
        checkpoint.load_model(d)
    if version == "0.0.9":  # as a user meets it: one line, exit 2
        proc = run_module("mgc_ray.predict", audio["stereo"], "--checkpoint", d)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
        assert "mgc_ray 0.0.9" in proc.stderr and "Traceback" not in proc.stderr


def test_checkpoint_from_another_patch_version_loads(smoke_search, tmp_path):
    major, minor, *_ = __version__.split(".")
    d = _resaved(smoke_search.checkpoint, tmp_path / "patch", version=f"{major}.{minor}.99")
    model, payload = checkpoint.load_model(d, expect_arch="baseline_a_2d")
    assert payload.version.endswith(".99") and not model.training


def test_checkpoint_of_another_arch_than_asked_is_refused(smoke_search):
    with pytest.raises(UserError, match=r"holds a 'baseline_a_2d' model, not 'densenet'"):
        checkpoint.load_model(smoke_search.checkpoint, expect_arch="densenet")


def test_run_whose_checkpoint_is_of_another_arch_is_refused(smoke_search, tmp_path, audio):
    """predict --run-id passes the run's mgc.arch: a tag and a checkpoint that disagree are caught."""
    from mlflow.tracking import MlflowClient

    src = tmp_path / "store.db"
    src.write_bytes((smoke_search.workdir / "mlflow.db").read_bytes())
    uri = f"sqlite:///{src}"
    c = MlflowClient(tracking_uri=uri)
    c.set_tag(smoke_search.best_run_id, "mgc.arch", "densenet")
    with pytest.raises(UserError, match=r"not 'densenet'"):
        predict_main([audio["stereo"], "--run-id", smoke_search.best_run_id, "--mlflow-uri", uri])


def test_foreign_file_is_refused(tmp_path):
    torch.save({"weights": 1}, tmp_path / "model.pt")
    with pytest.raises(UserError, match=r"format"):
        checkpoint.load_model(tmp_path)
