"""GPU discipline, checked on a CPU: no host sync in a training step, the device Ray assigned
(simulated GPU ids), memory shares and their errors, and the defaults that fill a GPU node."""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mgc_ray.cluster import default_gpu_share, plan_resources, trial_memory_gib
from mgc_ray.config import TrainConfig
from mgc_ray.errors import UserError
from mgc_ray.models import build_model
from mgc_ray.trial.augment import Augment
from mgc_ray.trial.device import (
    GPU_HEADROOM,
    DeviceError,
    GpuBusyError,
    GpuMemoryError,
    choose_device,
    memory_fraction,
    oom_error,
)
from mgc_ray.trial.loop import make_optimizer, train_epoch
from mgc_ray.trial.recipe import Recipe

SR = 8000
TINY = dict(sample_rate=SR, window=256, n_mels=16, crop_seconds=0.5, n_classes=4)
RECIPE_ON = Recipe(spec_mask=0.2, mixup=0.4, label_smoothing=0.1)


class _HostReads(TorchDispatchMode):
    """Counts ops that read a tensor's value on the host (`.item()`, `float()`, `bool()` all
    dispatch `aten._local_scalar_dense`) or that wait for the device to size their output."""

    SYNCING = ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "item")

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in self.SYNCING:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _count_host_reads():
    """Host reads of tensors: Python-level conversions (tolist, cpu, numpy, item, float, bool,
    int) and dispatched scalar reads; yields the list of what was read."""
    seen: list[str] = []
    names = ("tolist", "cpu", "numpy", "item", "__float__", "__bool__", "__int__", "__index__")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def wrap(n):
        orig = saved[n]

        def counted(self, *a, **k):
            seen.append(n)
            return orig(self, *a, **k)

        return counted

    for n in names:
        setattr(torch.Tensor, n, wrap(n))
    mode = _HostReads()
    try:
        with mode:
            yield seen
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)
        seen.extend(f"aten.{op}" for op in mode.ops)


@pytest.mark.parametrize(
    "arch,method,recipe",
    [
        ("baseline_a_2d", "sinc", None),
        ("baseline_a_1d", "sinc", None),
        ("baseline_a_2d", "linear", None),
        ("baseline_a_2d", "sinc", RECIPE_ON),
        ("baseline_a_1d", "sinc", RECIPE_ON),
        ("fusion", "sinc", RECIPE_ON),
    ],
)
def test_a_training_epoch_reads_the_device_once(arch, method, recipe):
    """Augment (every example stretched and noised, a window cut to the crop as the trial does) + model +
    Adam, and with the recipe options on (masks, mixup, label smoothing): the epoch's loss is the one read."""
    torch.manual_seed(0)
    model = build_model(arch, **TINY)
    opt = make_optimizer(model, TrainConfig(arch=arch))
    n = int(SR * TINY["crop_seconds"])
    stretch = Augment(noise_p=1.0, stretch_p=1.0, stretch_method=method)
    batches = [(0.3 * torch.randn(4, stretch.input_len(n)), torch.randint(0, 4, (4,))) for _ in range(3)]
    aug = functools.partial(stretch, out_len=n)  # as trainable.py: Ray Data's window, cut to the crop
    train_epoch(model, batches[:1], opt, augment=aug, generator=np.random.default_rng(0), recipe=recipe)  # warm-up
    for epoch in range(2):
        with _count_host_reads() as reads:
            r = train_epoch(model, batches, opt, augment=aug, generator=np.random.default_rng(epoch), recipe=recipe)
        assert np.isfinite(r["loss"]) and r["samples"] == 12
        # float(total): __float__ dispatches one _local_scalar_dense
        assert reads == ["__float__", "aten._local_scalar_dense"], reads


def test_augment_sinc_matches_torchaudio_per_example():
    import torchaudio

    x = 0.3 * torch.randn(6, 4000)
    params = Augment(noise_p=0.0, stretch_p=1.0).sample_params(6, np.random.default_rng(1))
    out = Augment(noise_p=0.0).apply(x, params)
    for i, r in enumerate(params["rate"]):
        ref = torchaudio.functional.resample(x[i : i + 1], int(round(r * 100)), 100)[:, :4000]
        ref = torch.nn.functional.pad(ref, (0, 4000 - ref.shape[1]))
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-4, rtol=0)


def test_the_1d_branch_gets_the_papers_noise_level():
    """White noise through the 1D front end's 22,050 -> 16,000 Hz resampling keeps 0.82 of its std;
    the trial's Augment for a 1D model makes up for it, a 2D or fusion model's does not."""
    from mgc_ray.trial.trainable import augment_for

    one_d = build_model("baseline_a_1d", sample_rate=22_050, crop_seconds=2.0)
    aug = augment_for(one_d)
    assert 0.80 < 1 / aug.noise_gain < 0.84
    noise = torch.randn(4, 44_100)
    through = [m for m in one_d.modules() if type(m).__name__ == "Resample"][0](noise)
    assert abs(float(through.std() / noise.std()) * aug.noise_gain - 1) < 0.02
    assert augment_for(build_model("baseline_a_2d", **TINY)).noise_gain == 1.0


def test_the_1d_front_end_runs_in_float32_under_autocast():
    model = build_model("baseline_a_1d", sample_rate=22_050, crop_seconds=1.0)
    fe = [m for m in model.modules() if type(m).__name__ == "WaveformFrontEnd"][0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fe(torch.randn(2, 22_050)).dtype == torch.float32


# --- the device Ray assigned (simulated ids) ------------------------------------
def test_a_trial_without_gpus_trains_on_the_cpu_whatever_torch_sees():
    assert choose_device([], cuda_available=True, cuda_count=8, visible=None) == "cpu"


def test_a_gpu_trial_trains_on_exactly_its_gpu():
    assert choose_device(["3"], True, 1, visible="3") == "cuda:0"  # Ray narrowed CUDA_VISIBLE_DEVICES
    assert choose_device(["3"], True, 8, visible="1,3") == "cuda:1"
    assert choose_device(["3"], True, 8, visible=None) == "cuda:3"  # nothing narrowed it


def test_a_gpu_trial_without_cuda_fails_with_one_line():
    with pytest.raises(DeviceError, match=r"GPU 0 but torch sees no CUDA device.*--gpus-per-trial 0") as e:
        choose_device(["0"], cuda_available=False, cuda_count=0, visible="0")
    assert "\n" not in str(e.value)
    with pytest.raises(DeviceError, match="trains on one"):
        choose_device(["0", "1"], True, 2, visible="0,1")
    with pytest.raises(DeviceError, match="hides it"):
        choose_device(["2"], True, 1, visible="0")


def test_a_shared_gpu_caps_each_trial_at_its_share():
    assert memory_fraction(0.0) is None and memory_fraction(1.0) is None
    assert memory_fraction(0.25) == pytest.approx(0.25 * GPU_HEADROOM)
    gib = 2**30
    own = oom_error(64, 0.25, cap_bytes=30 * gib, reserved_bytes=29 * gib)
    assert isinstance(own, GpuMemoryError) and "\n" not in str(own)
    assert "batch size 64" in str(own) and "0.25 of a GPU" in str(own) and "--gpus-per-trial 0.5" in str(own)
    busy = oom_error(64, 0.25, cap_bytes=30 * gib, reserved_bytes=2 * gib)
    assert isinstance(busy, GpuBusyError) and "full with other work" in str(busy)
    assert isinstance(oom_error(32, 1.0, None, 70 * gib), GpuMemoryError)


# --- defaults that fill a GPU node ------------------------------------------------
def _node(cpus: float, gpus: float = 0) -> dict:
    return {"Alive": True, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


def test_densenet_trials_share_a_gpu_by_default():
    need = trial_memory_gib("densenet", 64)  # the default space's largest batch
    assert default_gpu_share(need, 141.0) == 0.25  # one H200: four trials
    assert default_gpu_share(need, 80.0) == 0.375  # one H100: two
    assert default_gpu_share(trial_memory_gib("baseline_a_2d", 64), 141.0) == 1 / 8  # small models: eight
    assert default_gpu_share(need, None) == 1.0  # memory unknown: a whole GPU
    r = plan_resources([_node(16, 1)], None, None, None, need, 141.0)
    assert (r.gpus, r.cpus, r.max_concurrent) == (0.25, 3.0, 4)  # and 1 core each for its Ray Data reads
    r = plan_resources([_node(64, 8)], None, None, None, need, 141.0)
    assert (r.gpus, r.cpus, r.max_concurrent) == (0.25, 1.0, 32)


def test_cpu_nodes_and_explicit_flags_keep_their_meaning():
    r = plan_resources([_node(16)], None, None, None)
    assert (r.gpus, r.cpus, r.max_concurrent) == (0.0, 1.0, 8)  # each with 1 CPU for its reads
    r = plan_resources([_node(16, 1)], 0.5, 4, None)
    assert (r.gpus, r.cpus, r.max_concurrent) == (0.5, 4, 2)
    r = plan_resources([_node(16, 2)], 0, None, None)  # a CPU search on a GPU node: no GPU for anyone
    assert (r.gpus, r.cpus) == (0.0, 1.0)


def test_more_than_one_gpu_per_trial_is_refused():
    with pytest.raises(UserError, match="trains on one GPU"):
        plan_resources([_node(16, 4)], 2, None, None)


# --- the one GPU check, in its CPU smoke mode ------------------------------------------
@pytest.mark.slow
def test_gpu_check_smoke_writes_a_complete_report(tmp_path, monkeypatch):
    import importlib
    import json
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # the checkout root: `benchmarks`
    monkeypatch.setenv("MGC_HOME", str(tmp_path / "home"))
    gpu_check = importlib.import_module("benchmarks.gpu_check")
    assert gpu_check.main(["--smoke", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]) == 0
    report = json.loads((tmp_path / "out" / "gpu_check_cpu.json").read_text())
    md = (tmp_path / "out" / "gpu_check_cpu.md").read_text()
    assert {r["way"] for r in report["speed"]["rows"] if "samples_per_s" in r} == {"eager", "channels_last"}
    trial = report["trial"]
    assert trial["rc"] == 0, trial["log_tail"]
    assert trial["epochs"] and all(e["device"] == "cpu" for e in trial["epochs"])  # a 0-GPU trial: the CPU
    packs = [r for r in report["packing"]["rows"] if "aggregate_samples_per_s" in r]
    assert [r["trials"] for r in packs] == [1, 2] and all(g["device"] == "cpu" for r in packs for g in r["per_trial"])
    assert report["frontend"]["librosa_clips_per_s_one_core"] > 0
    assert {t["status"] for t in report["targets"]} == {"not measured here"}  # no GPU: no GPU figure claimed
    assert "SMOKE RUN" in md and "no GPU on this machine" in md


def test_gpu_check_synthetic_cache_is_a_valid_cache(tmp_path, monkeypatch):
    """The FMA-sized cache gpu_check trains from passes the same checks a prepared cache does."""
    import importlib
    from pathlib import Path

    import pyarrow.parquet as pq

    from mgc_ray.data.cache import check_cache

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # the checkout root: `benchmarks`
    gpu_check = importlib.import_module("benchmarks.gpu_check")
    cache = gpu_check.synthetic_cache(tmp_path / "cache", tracks=30, seconds=0.5, workers=1)
    m = check_cache(cache, sample_rate=22_050, split_scheme="paper")
    assert dict(m.num_tracks) == {"train": 24, "val": 3, "test": 3} and m.n_classes == 8 and m.wave_std > 0
    table = pq.read_table(m.shard_paths("train")[0])
    assert table.column("num_samples")[0].as_py() == 11_025 and len(table.column("samples")[0]) == 11_025
