"""GPU discipline, checked on a CPU: no host sync in a training step, the GPU's step (bf16
autocast, channels_last) for every arch, a bounded set of shapes under cuDNN's autotuner, the
device Ray assigned (simulated GPU ids), memory shares and their errors, and the defaults that
fill a GPU node."""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from mgc_ray.cluster import default_gpu_share, plan_resources, trial_memory_gib
from mgc_ray.config import TrainConfig
from mgc_ray.errors import UserError
from mgc_ray.models import build_model, list_models
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
from mgc_ray.trial.loop import autocast, compiled, make_optimizer, prepare_model, train_epoch
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


# --- the GPU's step on the CPU: bf16, channels_last, the autotuner's shapes -------


class _ConvShapes(TorchFunctionMode):
    """The (op, input shape, weight shape) of every convolution, split by whether cuDNN's
    autotuner was on when it ran (`torch.backends.cudnn.benchmark`: on a GPU, each new shape
    under it is timed with device syncs)."""

    CONVS = (F.conv1d, F.conv2d)

    def __init__(self):
        super().__init__()
        self.tuned: set = set()
        self.untuned: set = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.CONVS:
            key = (func.__name__, tuple(args[0].shape), tuple(args[1].shape))
            (self.tuned if torch.backends.cudnn.benchmark else self.untuned).add(key)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("arch", ["baseline_a_2d", "baseline_a_1d"])
def test_the_autotuner_sees_the_same_shapes_every_epoch(arch):
    """With the autotuner on (as a CUDA trial runs), epoch 0 brings the model's convolutions'
    shapes and later epochs none: the stretch's per-factor convolutions (a new (k, N) almost every
    batch) run with it off."""
    torch.manual_seed(0)
    model = build_model(arch, **TINY)
    opt = make_optimizer(model, TrainConfig(arch=arch))
    n = int(SR * TINY["crop_seconds"])
    stretch = Augment(noise_p=1.0, stretch_p=1.0)
    batches = [(0.3 * torch.randn(8, stretch.input_len(n)), torch.randint(0, 4, (8,))) for _ in range(4)]
    aug = functools.partial(stretch, out_len=n)  # as the trial: Ray Data's window, cut to the crop
    was = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        new_per_epoch, stretch_shapes = [], set()
        seen: set = set()
        for epoch in range(3):
            with _ConvShapes() as shapes:
                train_epoch(model, batches, opt, augment=aug, generator=np.random.default_rng(epoch))
            new_per_epoch.append(len(shapes.tuned - seen))
            seen |= shapes.tuned
            stretch_shapes |= shapes.untuned
        assert torch.backends.cudnn.benchmark, "the stretch must give the autotuner back as it found it"
    finally:
        torch.backends.cudnn.benchmark = was
    assert new_per_epoch[0] > 0 and new_per_epoch[1:] == [0, 0], new_per_epoch
    assert len(stretch_shapes) > 4, "every batch stretched: its convolutions ran, outside the autotuner"


@pytest.mark.parametrize("arch", list_models())
def test_a_bf16_channels_last_training_step_runs_on_the_cpu(arch):
    """The GPU's step (bf16 autocast, channels_last weights, fused Adam) for every arch, on the CPU:
    the logits come out in bf16, the loss is finite and every trained parameter moves."""
    torch.manual_seed(0)
    model = prepare_model(build_model(arch, **TINY), torch.device("cpu"), channels_last=True)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs if w.dim() == 4)
    opt = make_optimizer(model, TrainConfig(arch=arch))
    n = int(SR * TINY["crop_seconds"])
    wave, label = 0.3 * torch.randn(2, n), torch.randint(0, 4, (2,))
    dtypes = []
    model.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    r = train_epoch(model, [(wave, label)], opt, amp=True)  # one step: DenseNet's takes seconds on 2 cores
    assert dtypes == [torch.bfloat16] and np.isfinite(r["loss"]) and r["samples"] == 2
    frozen = [k for k, v in model.named_parameters() if v.requires_grad and torch.equal(v, before[k])]
    assert not frozen, f"not trained under bf16: {frozen[:5]}"


def test_the_trial_default_is_float32_and_contiguous_on_the_cpu():
    """A CPU trial (amp and channels_last left to the device) keeps float32 and the default layout."""
    model = prepare_model(build_model("baseline_a_2d", **TINY), torch.device("cpu"))
    assert all(p.is_contiguous() for p in model.parameters())
    with autocast(torch.device("cpu")):
        assert model(0.3 * torch.randn(2, int(SR * TINY["crop_seconds"]))).dtype == torch.float32


def test_compile_workers_are_the_trials_cpus(monkeypatch):
    """--compile: inductor's compile workers are the trial's CPUs, not the node's (up to 32 per trial
    process); TORCHINDUCTOR_COMPILE_THREADS, when set, stays the user's."""
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor, "compile_threads", 16)  # the node's cores, as inductor decided
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    model = build_model("baseline_a_2d", **TINY)
    compiled(model, True, threads=2)
    assert inductor.compile_threads == 2
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # Ray's OMP_NUM_THREADS for a 3-CPU trial
    compiled(model, True)
    assert inductor.compile_threads == 3
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "5")
    monkeypatch.setattr(inductor, "compile_threads", 5)  # inductor read it at import
    compiled(model, True, threads=2)
    assert inductor.compile_threads == 5
    assert compiled(model, False) is model


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
    # sized from bf16 activations (cluster.ACTIVATION_GIB): 0.2 GiB x 64 + 1.5 = 14.3 GiB a trial
    assert default_gpu_share(need, 141.0) == 0.125  # one H200: eight trials (four when sized from float32)
    assert default_gpu_share(need, 80.0) == 0.25  # one H100: four
    assert default_gpu_share(need, 24.0) == 0.75  # a 24-GiB card: one
    assert default_gpu_share(trial_memory_gib("baseline_a_2d", 64), 141.0) == 1 / 8  # small models: eight
    assert default_gpu_share(need, None) == 1.0  # memory unknown: a whole GPU
    r = plan_resources([_node(16, 1)], None, None, None, need, 141.0)
    assert (r.gpus, r.cpus, r.max_concurrent) == (0.125, 1.0, 8)  # and 1 core each for its Ray Data reads
    r = plan_resources([_node(64, 8)], None, None, None, need, 141.0)
    assert (r.gpus, r.cpus, r.max_concurrent) == (0.125, 1.0, 32)  # a trainable's CPU and one for its reads each


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
def _gpu_check_modules(monkeypatch):
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # the checkout root: `benchmarks`
    return importlib.import_module("benchmarks.gpu_check"), importlib.import_module("benchmarks.gpu_parts")


@pytest.mark.slow
def test_gpu_check_smoke_keeps_every_figure_when_a_part_fails(tmp_path, monkeypatch, faults):
    """Every part, tiny on the CPU, with the speed part forced to fail after its first row: the report (in
    $OUT, no --out given) holds that row and the part's error line with where it was raised, and every
    other part ran and wrote its figures; the exit code says a part failed."""
    import json

    gpu_check, gpu_parts = _gpu_check_modules(monkeypatch)
    monkeypatch.setenv("MGC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert gpu_check.main(["--smoke", "--work", str(tmp_path / "work"), "--fail-part", "speed"]) == 1
    report = json.loads((tmp_path / "out" / "gpu_check_cpu.json").read_text())
    md = (tmp_path / "out" / "gpu_check_cpu.md").read_text()
    parts = report["parts"]
    assert list(parts) == ["env", "speed", "packing", "trial", "frontend"]
    assert [p["part"] for p in report["plan"]] == list(parts) and all(p["why"] for p in report["plan"])
    speed = parts["speed"]
    assert (speed["status"], speed["error"]) == ("failed", "ForcedFailure: forced by --fail-part speed (a test hook)")
    assert speed["where"].startswith("benchmarks/gpu_check.py:") and speed["where"].endswith(" in progress")
    rows = speed["figures"]["rows"]
    assert [(r["batch"], r["way"]) for r in rows] == [(2, "eager")] and rows[0]["samples_per_s"] > 0
    others = {n: (parts[n]["status"], parts[n].get("error")) for n in parts if n != "speed"}
    assert all(status == "ok" for status, _ in others.values()), others

    env = {c["check"]: c for c in parts["env"]["figures"]["checks"]}
    assert all(env[n]["ok"] for n in ("numpy", "numba", "pyarrow", "torch", "librosa", "ray", "mlflow")), env
    assert env["numba"]["value"]["njit"] == 14.0 and env["pyarrow"]["value"]["numpy_round_trip"] == [0, 1, 2]
    assert env["cuda"] == {**env["cuda"], "ok": False, "error": "RuntimeError: torch sees no CUDA device"}
    packs = parts["packing"]["figures"]["rows"]
    assert [r["trials"] for r in packs] == [1, 2] and all(r["aggregate_samples_per_s"] > 0 for r in packs), packs
    assert all(r["devices"] == ["cpu"] and not r["errors"] for r in packs), packs
    trial = parts["trial"]["figures"]
    assert trial["rc"] == 0, trial["log_tail"]
    assert trial["epochs"] and all(e["device"] == "cpu" for e in trial["epochs"])  # a 0-GPU trial: the CPU
    front = parts["frontend"]["figures"]
    assert front["parity"]["within"] and front["parity"]["max_db"] < 0.05, front["parity"]
    assert front["librosa_clips_per_s_one_core"] > 0
    assert {t["status"] for t in report["targets"]} == {"not measured here"}  # no GPU: no GPU figure claimed
    assert "SMOKE RUN" in md and "no GPU on this machine" in md
    assert "ForcedFailure: forced by --fail-part speed (a test hook)" in md and "**failed**" in md
    # the profile comes after the row the failure stopped: checked on its own
    top = gpu_parts.profile_step(torch.device("cpu"), smoke=True)
    assert top and all(r["ms_per_step"] >= 0 and r["calls"] >= 0 for r in top)
    faults.record(
        "a part of the GPU check raising (--fail-part speed)",
        1,
        "its first figure, its error line and where, every other part's figures",
    )  # noqa: E501


def test_a_gpu_check_part_past_its_budget_is_stopped_with_its_figures(tmp_path, monkeypatch, faults):
    """A part that hangs in a subprocess (one that started a child of its own) is stopped at its budget:
    what it had recorded stays in the saved report, its status says `stopped` and where it was, and the
    subprocess's whole process group is ended."""
    import json
    import time
    from pathlib import Path

    gpu_check, gpu_parts = _gpu_check_modules(monkeypatch)
    saved = []
    run = gpu_check.Run({"parts": {}}, tmp_path, lambda r: saved.append(json.dumps(r.report)))
    ctx = gpu_parts.Context(device=torch.device("cpu"), smoke=True, work=tmp_path, out=tmp_path)
    pids = tmp_path / "pids"

    def hangs(ctx, out):
        out["first"] = 1.0
        ctx.progress()
        # a shell and a grandchild of it, both sleeping a minute
        gpu_parts.run_bounded(["sh", "-c", f"sleep 60 & echo $$ $! > {pids}; wait"], 60, tmp_path / "log")

    t0 = time.perf_counter()
    took = gpu_check.run_part(gpu_check.Part("hangs", 3, 3, "a test"), hangs, ctx, run, 3.0)
    assert took < 20 and time.perf_counter() - t0 < 20
    entry = json.loads(saved[-1])["parts"]["hangs"]
    assert (entry["status"], entry["figures"]) == ("stopped", {"first": 1.0})
    assert entry["error"] == "PartStopped: stopped at its budget (3 s)"
    assert entry["where"].startswith("benchmarks/gpu_parts.py:") and entry["where"].endswith(" in run_bounded")

    def running(pid: int) -> bool:  # a zombie (ended, not yet reaped by init) is not running
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"

    for pid in map(int, pids.read_text().split()):  # the shell and its child
        for _ in range(50):
            if not running(pid):
                break
            time.sleep(0.1)
        assert not running(pid), f"process {pid} of the stopped part still runs"
    faults.record("a GPU check part hanging in a subprocess past its budget", 1, "its figures; the subprocess ended")


@pytest.mark.slow
def test_gpu_check_reports_a_torch_that_does_not_import(tmp_path, faults):
    """A node where torch fails to import in the check's own process still gets a report: the env part
    (which needs neither torch nor numpy in that process) with its figures, and every other part carrying
    the import error and where it came from; exit 1."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys; sys.modules['torch'] = None; from benchmarks import gpu_check; gpu_check.run_cli(gpu_check.main)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(
        [sys.executable, "-c", code, "--out", str(tmp_path)], cwd=root, env=env, capture_output=True, text=True
    )
    assert p.returncode == 1, p.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check_unknown.json").read_text())
    parts = report["parts"]
    assert parts["env"]["status"] == "ok" and {c["check"] for c in parts["env"]["figures"]["checks"]} >= {
        "numpy",
        "numba",
        "pyarrow",
        "torch",
    }
    for name in ("speed", "packing", "trial", "frontend"):
        assert parts[name]["status"] == "failed" and parts[name]["error"].startswith(
            "ModuleNotFoundError: import of torch halted"
        ), parts[name]
        assert parts[name]["where"].startswith("benchmarks/")
    md = (tmp_path / "gpu_check_unknown.md").read_text()
    assert "the check's own imports failed: `ModuleNotFoundError: import of torch halted" in md and "- numba: ok" in md
    faults.record("torch failing to import in the GPU check", 1, "the env part's figures; each other part's error")


def test_gpu_check_synthetic_cache_is_a_valid_cache(tmp_path, monkeypatch):
    """The FMA-sized cache gpu_check trains from passes the same checks a prepared cache does."""
    import pyarrow.parquet as pq

    from mgc_ray.data.cache import check_cache

    _, gpu_parts = _gpu_check_modules(monkeypatch)
    cache = gpu_parts.synthetic_cache(tmp_path / "cache", tracks=30, seconds=0.5, workers=1)
    m = check_cache(cache, sample_rate=22_050, split_scheme="paper")
    assert dict(m.num_tracks) == {"train": 24, "val": 3, "test": 3} and m.n_classes == 8 and m.wave_std > 0
    table = pq.read_table(m.shard_paths("train")[0])
    assert table.column("num_samples")[0].as_py() == 11_025 and len(table.column("samples")[0]) == 11_025
