"""Sealed checkpoints: every reader checks a checkpoint's files against its seal.json first.

On copies of the session's smoke search (its checkpoints, its Tune folder, its MLflow store):
256 bytes of the weights changed stop `predict` and `evaluate` with one line and nothing
written; a missing or cut file and a damaged seal are named; a trial Tune restores from a
damaged checkpoint continues from its newest intact one or starts again, saying which; the
search's test evaluation scores the best intact checkpoint the trial kept.
"""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mgc_ray.errors import run_cli
from mgc_ray.evaluate import main as evaluate_main
from mgc_ray.models import checkpoint
from mgc_ray.models.checkpoint import MODEL_FILE, SEAL_FILE, STATE_FILE, DamagedCheckpoint

CHANGED = 256  # bytes of the weights file changed, as the user did


def _change(path: Path, n: int = CHANGED) -> None:
    """Add 1 (mod 256) to `n` bytes in the middle of a file: the tensors' data, not the pickle's frame."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2
    data[at : at + n] = bytes((b + 1) % 256 for b in data[at : at + n])
    path.write_bytes(bytes(data))


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _trial_with_two_checkpoints(exp: Path) -> Path:
    trials = [t for t in sorted(exp.glob("train_trial_*")) if len(list(t.glob("checkpoint_*"))) >= 2]
    assert trials, f"the smoke search left no trial with two checkpoints under {exp}"
    return trials[0]


@pytest.fixture
def damaged(smoke_search, tmp_path) -> Path:
    """A copy of the smoke search's best checkpoint with 256 bytes of model.pt changed."""
    d = tmp_path / "ckpt"
    shutil.copytree(smoke_search.checkpoint, d)
    _change(d / MODEL_FILE)
    return d


def test_changed_weights_stop_predict_and_evaluate_with_one_line(
    smoke_search, damaged, run_module, tmp_path, capsys, faults
):
    from mlflow.tracking import MlflowClient

    wav = tmp_path / "tone.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(3 * 22_050) * 0.05).astype(np.float32), 22_050)
    before = _digest(damaged)

    proc = run_module("mgc_ray.predict", str(wav), "--checkpoint", str(damaged), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "", "no genre is printed from damaged weights"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: checkpoint {damaged} is damaged: model.pt's SHA-256 differs"), lines[0]

    # evaluate --run-id, on a copy of the store whose best run points at the damaged copy
    store = tmp_path / "mlflow.db"
    shutil.copyfile(smoke_search.workdir / "mlflow.db", store)
    uri = f"sqlite:///{store}"
    c = MlflowClient(tracking_uri=uri)
    c.set_tag(smoke_search.best_run_id, "mgc.checkpoint", str(damaged))
    run_before = c.get_run(smoke_search.best_run_id).data
    arts_before = [a.path for a in c.list_artifacts(smoke_search.best_run_id)]
    out = tmp_path / "eval"
    capsys.readouterr()
    with pytest.raises(SystemExit) as code:  # the command's own entry (`run_cli`), in this process: no imports again
        run_cli(evaluate_main, ["--run-id", smoke_search.best_run_id, "--mlflow-uri", uri, "--out", str(out)])
    assert code.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint {damaged} is damaged: model.pt's SHA-256"), lines
    assert not out.exists(), "evaluate wrote nothing"
    run_after = c.get_run(smoke_search.best_run_id).data
    assert run_after.metrics == run_before.metrics and run_after.tags == run_before.tags
    assert [a.path for a in c.list_artifacts(smoke_search.best_run_id)] == arts_before
    assert _digest(damaged) == before, "the checkpoint is left as it was"
    faults.record(
        f"{CHANGED} bytes of a checkpoint's model.pt changed, then predict and evaluate --run-id",
        2,
        "exit 2, one line naming the checkpoint; nothing printed or written, the MLflow run unchanged",
    )


def _load_all(d: Path):
    checkpoint.load_model(d)
    return checkpoint.load_train_state(d)


@pytest.mark.parametrize(
    "fault, match",
    [
        ("model.pt deleted", r"model\.pt is missing"),
        ("model.pt cut to half its length", r"model\.pt has [\d,]+ bytes, its seal says \d+"),
        ("train_state.pt deleted", r"train_state\.pt is missing"),
        ("train_state.pt with 256 bytes changed", r"train_state\.pt's SHA-256 differs"),
        ("seal.json deleted", r"seal\.json is missing \(this checkpoint was written with one\)"),
        ("a byte of seal.json changed", r"seal\.json is damaged \(its bytes do not match its checksum\)"),
    ],
)
def test_a_missing_or_cut_file_and_a_damaged_seal_are_named(smoke_search, tmp_path, fault, match, faults):
    d = tmp_path / "ckpt"
    shutil.copytree(smoke_search.checkpoint, d)
    assert _load_all(d) is not None, "the copy reads whole"
    if fault == "model.pt deleted":
        (d / MODEL_FILE).unlink()
    elif fault.startswith("model.pt cut"):
        data = (d / MODEL_FILE).read_bytes()
        (d / MODEL_FILE).write_bytes(data[: len(data) // 2])
    elif fault == "train_state.pt deleted":
        (d / STATE_FILE).unlink()
    elif fault.startswith("train_state.pt with"):
        _change(d / STATE_FILE)
    elif fault == "seal.json deleted":
        (d / SEAL_FILE).unlink()
    else:
        _change(d / SEAL_FILE, 1)
    with pytest.raises(DamagedCheckpoint, match=match) as caught:
        _load_all(d)
    assert str(caught.value).startswith(f"checkpoint {d} is damaged: ") and "\n" not in str(caught.value)
    if fault.startswith("train_state"):  # predict reads model.pt alone: a copy made for serving still serves
        model, _ = checkpoint.load_model(d)
        assert not model.training
    faults.record(f"a checkpoint's {fault}", 1, "one line naming the checkpoint and the file")


def test_a_checkpoint_written_before_seals_loads_with_one_warning(smoke_search, tmp_path, capsys):
    """The deliberate choice for unsealed checkpoints (`checkpoint._unsealed`): accepted, said once."""
    d = tmp_path / "old"
    shutil.copytree(smoke_search.checkpoint, d)
    payload = torch.load(d / MODEL_FILE, map_location="cpu", weights_only=False)
    del payload[checkpoint.SEALED]
    torch.save(payload, d / MODEL_FILE)
    (d / SEAL_FILE).unlink()
    capsys.readouterr()
    model, got = checkpoint.load_model(d, expect_arch="baseline_a_2d")
    assert got.epoch == payload["epoch"] and not model.training
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: checkpoint {d} has no seal.json"), err


@pytest.fixture
def experiment(smoke_search, tmp_path) -> Path:
    """A copy of the smoke search's Tune folder (its trials and their kept checkpoints)."""
    src = Path(smoke_search.checkpoint).parent.parent
    exp = tmp_path / "ray" / src.name
    shutil.copytree(src, exp)
    return exp


def test_a_trial_restored_from_a_damaged_checkpoint_falls_back_or_starts_again(experiment, faults):
    """`resume.restore` on what Tune hands a retried trial (`tune.get_checkpoint()`: the latest)."""
    from ray import tune

    from mgc_ray.trial.resume import restore

    trial = _trial_with_two_checkpoints(experiment)
    first, latest = sorted(trial.glob("checkpoint_*"))[-2:]
    handed = tune.Checkpoint.from_directory(str(latest))

    found, note = restore(handed)
    assert note is None and found.checkpoint.path == str(latest)
    assert found.state["epoch"] == found.payload.epoch  # the trial continues after this epoch

    _change(latest / MODEL_FILE)
    found, note = restore(handed)
    assert found.checkpoint.path == str(first), "the newest intact checkpoint before the damaged one"
    expected = checkpoint.load_payload(first)
    assert found.state["epoch"] == expected.epoch == found.payload.epoch
    assert all(torch.equal(found.payload.state_dict[k], v) for k, v in expected.state_dict.items())
    assert note == (
        f"mgc_ray: checkpoint {latest} is damaged (model.pt's SHA-256 differs from its seal's): "
        f"the trial resumes from {first.name} (epoch {expected.epoch}), its newest intact checkpoint"
    )

    (first / STATE_FILE).unlink()  # no intact checkpoint left
    found, note = restore(handed)
    assert found is None
    assert note.startswith(f"mgc_ray: checkpoint {latest} is damaged (model.pt's SHA-256") and note.endswith(
        "and 1 earlier one(s) too: no intact checkpoint is left, the trial starts again from epoch 0"
    )
    faults.record(
        "the checkpoint Tune restores a trial from damaged (and then its earlier one too)",
        2,
        "the trial continues from its newest intact checkpoint, else starts again at epoch 0; one line says which",
    )


def test_the_test_evaluation_scores_the_best_intact_checkpoint(experiment, capsys, faults):
    """`driver.best_intact` on the Tune results of the copied search (as `finish` gets them)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    from mgc_ray.search.driver import best_intact

    trial = _trial_with_two_checkpoints(experiment)
    result = next(r for r in ResultGrid(ExperimentAnalysis(str(experiment))) if Path(r.path) == trial)
    ranked = sorted(result.best_checkpoints, key=lambda cm: cm[1]["val/loss"])
    best, second = (Path(c.path) for c, _ in ranked[:2])
    assert best.parent == trial

    assert Path(best_intact(result).checkpoint.path) == best
    _change(best / MODEL_FILE)
    capsys.readouterr()
    found = best_intact(result)
    assert Path(found.checkpoint.path) == second
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mgc_ray: checkpoint {best} is damaged (model.pt's SHA-256"), err
    assert err[0].endswith(f"scores the trial's best intact one, {second} (epoch {found.payload.epoch})")

    _change(second / MODEL_FILE)
    with pytest.raises(DamagedCheckpoint, match=r"and the 1 other\(s\) the trial kept too"):
        best_intact(result)
    faults.record(
        "a trial's best checkpoint damaged before the test evaluation (then every one it kept)",
        2,
        "the best intact one is scored, one line says so; none intact: one line naming the best",
    )
