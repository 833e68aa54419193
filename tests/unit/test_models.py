"""The registry and every registered model: forward, backward, shapes, rebuild, pretrained weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision

from mgc_ray.config import PAPER, ModelConfig
from mgc_ray.errors import UserError
from mgc_ray.models import FrontEnd, build_model, checkpoint, input_shapes, list_models

PAPER_SAMPLES = 220_500  # 10 s at 22,050 Hz
ALL = ["baseline_a_1d", "baseline_a_2d", "baseline_b", "densenet", "fusion"]
SMALL = [  # (sample_rate, window, n_mels, crop_seconds): sizes the search or the tests may use
    (8_000, 256, 32, 1.0),
    (22_050, 1976, 32, 2.0),
    (16_000, 512, 48, 1.5),
]


def _wave(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.3 * torch.randn(b, n, generator=g)).clamp(-1, 1)


def test_registry():
    assert list_models() == ALL
    with pytest.raises(UserError) as err:
        build_model("resnet50")
    assert "resnet50" in str(err.value) and all(name in str(err.value) for name in ALL)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("sample_rate,window,n_mels,crop_seconds", SMALL)
def test_forward_backward_small(name, sample_rate, window, n_mels, crop_seconds):
    torch.manual_seed(0)
    kw = dict(
        sample_rate=sample_rate, window=window, n_mels=n_mels, crop_seconds=crop_seconds, wave_mean=0.001, wave_std=0.3
    )
    model = build_model(name, **kw)
    assert model.config == ModelConfig(arch=name, **kw)
    wave = _wave(2, int(sample_rate * crop_seconds))
    logits = model(wave)
    assert logits.shape == (2, 8) and torch.isfinite(logits).all()
    logits.logsumexp(dim=1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(wave)
        assert feats.shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(feats), model(wave))


@pytest.mark.parametrize("name", list_models())
def test_paper_input_shapes(name):
    preset = PAPER[name]
    model = build_model(name, window=preset.window, n_mels=preset.n_mels)
    expected = {
        "baseline_a_1d": [(1, 160_000)],
        "baseline_a_2d": [(1, 513, 128)],
        "baseline_b": [(1, 513, 128)],
        "densenet": [(1, 224, 224)],
        "fusion": [(1, 160_000), (1, 224, 224)],
    }[name]
    assert input_shapes(model, PAPER_SAMPLES) == expected
    wave = torch.zeros(1, PAPER_SAMPLES)
    with torch.no_grad():
        real = [tuple(m(wave).shape[1:]) for m in model.modules() if isinstance(m, FrontEnd)]
    assert real == expected


@pytest.mark.parametrize("name", ["baseline_a_2d", "baseline_b", "densenet"])
def test_spectrogram_models_ignore_input_gain(name):
    # dB relative to each example's max, then a per-input z-score: loudness does not matter
    model = build_model(name, sample_rate=8_000, window=256, n_mels=32, crop_seconds=1.0).eval()
    wave = _wave(2, 8_000)
    with torch.no_grad():
        torch.testing.assert_close(model(0.25 * wave), model(wave), atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("name", list_models())
def test_checkpoint_rebuilds_the_same_model(name, tmp_path):
    kw = dict(sample_rate=8_000, window=256, n_mels=32, crop_seconds=1.0, wave_mean=0.01, wave_std=0.2)
    model = build_model(name, **kw).eval()
    checkpoint.save(tmp_path / "ck", model, model.config, [f"g{i}" for i in range(8)])
    again, payload = checkpoint.load_model(tmp_path / "ck", expect_arch=name)
    assert again.config == model.config
    wave = _wave(3, 8_000)
    with torch.no_grad():
        torch.testing.assert_close(again(wave), model(wave))


def test_bad_input_shape_is_a_clear_error():
    model = build_model("baseline_a_2d", sample_rate=8_000, window=256, n_mels=32)
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        model(torch.zeros(2, 1, 8_000))


def _imagenet_state(tmp_path, old_keys: bool = False):
    tv = torchvision.models.densenet121(weights=None)  # random weights, 3-channel stem, 1000 classes
    state = tv.state_dict()
    if old_keys:  # torchvision's published checkpoints: 'norm.1' for 'norm1', no num_batches_tracked
        state = {
            k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
            for k, v in state.items()
            if not k.endswith("num_batches_tracked")
        }
    path = tmp_path / "densenet121_imagenet.pth"
    torch.save(state, path)
    return tv, path


@pytest.mark.parametrize("old_keys", [False, True])
def test_densenet_pretrained_path(tmp_path, old_keys):
    tv, path = _imagenet_state(tmp_path, old_keys)
    model = build_model("densenet", n_mels=32, window=256, sample_rate=8_000, pretrained_path=str(path))
    rgb = tv.features.conv0.weight
    torch.testing.assert_close(model.features.conv0.weight, rgb.sum(dim=1, keepdim=True))
    torch.testing.assert_close(
        model.features.denseblock3.denselayer7.conv2.weight, tv.features.denseblock3.denselayer7.conv2.weight
    )
    torch.testing.assert_close(model.features.norm5.running_var, tv.features.norm5.running_var)
    assert model.head.weight.shape == (8, 1024)  # the ImageNet classifier is skipped
    fusion = build_model("fusion", n_mels=32, window=256, sample_rate=8_000, pretrained_path=str(path))
    torch.testing.assert_close(fusion.spec_net.features.conv0.weight, rgb.sum(dim=1, keepdim=True))


def test_densenet_pretrained_path_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_model("densenet", pretrained_path=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(UserError, match="do not fit"):
        build_model("densenet", pretrained_path=str(wrong))


def test_fusion_branches_have_no_classifier_of_their_own():
    model = build_model("fusion", sample_rate=8_000, window=256, n_mels=32)
    assert model.num_features == model.wave_net.num_features + model.spec_net.num_features == 128 + 1024
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith(("wave_net.head", "spec_net.head")) for n in names)
    assert dataclasses.replace(model.config, arch="densenet") == model.spec_net.config


def test_model_table_benchmark_smoke(tmp_path, monkeypatch):
    import importlib
    import json
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # the checkout root: `benchmarks`
    mod = importlib.import_module("benchmarks.model_table")
    report = mod.main(["--smoke", "--out", str(tmp_path)])
    assert [r["arch"] for r in report["models"]] == ALL
    saved = json.loads((tmp_path / "model_table.json").read_text())
    assert saved["machine"]["cores"] >= 1 and all(r["forward_s"] > 0 for r in saved["models"])
    md = (tmp_path / "model_table.md").read_text()
    assert "SMOKE" in md and "| densenet |" in md and "Machine:" in md
