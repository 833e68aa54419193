"""Search spaces: every arch has one, it holds the paper's settings, bad files are refused."""

import csv
from pathlib import Path

import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution

from mgc_ray.config import PAPER, RECIPE_OFF, is_paper_point
from mgc_ray.errors import UserError
from mgc_ray.search import study
from mgc_ray.search.space import (
    Choice,
    LogUniform,
    SearchSpace,
    Uniform,
    batch_sizes,
    entry_from_dict,
    largest_batch,
    load_space,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("arch", sorted(PAPER))
def test_space_holds_the_paper_settings(arch):
    space = load_space(arch)
    preset = PAPER[arch]
    point = space.start
    assert space.starts_at_paper and space.paper_point() == preset.point()
    assert (point["lr"], point["weight_decay"], point["batch_size"]) == (
        preset.lr,
        preset.weight_decay,
        preset.batch_size,
    )
    assert (point["window"], point["n_mels"], point["crop_seconds"]) == (preset.window, preset.n_mels, 10.0)
    # the searched hyperparameters of the issue: lr (log), batch size, window, crop length, weight decay
    assert isinstance(space.space["lr"], LogUniform)
    assert 10.0 in space.space["crop_seconds"].values
    assert preset.batch_size in space.space["batch_size"].values
    if arch != "baseline_a_1d":  # the 1D branch has no STFT
        assert preset.window in space.space["window"].values
    # the recipe options: searched, off (0.0) at the paper's settings, which stay the paper trial
    assert is_paper_point(arch, space.start) and space.is_paper(space.start)
    for name in RECIPE_OFF:
        entry = space.space[name]
        assert isinstance(entry, Choice) and point[name] == 0.0 and 0.0 in entry.values and len(entry.values) > 1
    assert not is_paper_point(arch, {**space.start, "mixup": 0.2})
    first = Path(space.path).read_text().splitlines()[0]
    assert first == f"# python -m mgc_ray.tune --arch {arch}"


def _write(tmp_path, body):
    p = tmp_path / "space.yaml"
    p.write_text(
        "paper: {lr: 1.0e-4, weight_decay: 1.0e-4, batch_size: 32, window: 1976, n_mels: 224, "
        "crop_seconds: 10.0}\n" + body
    )
    return p


@pytest.mark.parametrize(
    "body, needle",
    [
        ("space: {}\n", "empty"),
        ("space:\n  batch_size: {type: choice, values: [16, 64]}\n", "must include the paper's"),
        ("space:\n  lr: {type: loguniform, low: -1.0, high: 1.0e-3}\n", "0 < low < high"),
        ("space:\n  lr: {type: normal}\n", "has type"),
        ("space:\n  dropout: {type: uniform, low: 0, high: 1}\n", "not searchable"),
        (
            "space:\n  spec_mask: {type: choice, values: [0.0, -0.1]}\n",
            r"space.spec_mask: spec_mask must be in \[0, 0.5\)",
        ),
        ("space:\n  spec_mask: {type: uniform, low: 0.0, high: 0.5}\n", r"spec_mask must be in \[0, 0.5\)"),
        ("space:\n  mixup: {type: uniform, low: -0.2, high: 0.4}\n", r"mixup must be >= 0"),
        ("space:\n  label_smoothing: {type: choice, values: [0.0, 1.0]}\n", r"label_smoothing must be in \[0, 1\)"),
        (
            "start: {label_smoothing: -0.1}\nspace:\n  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}\n",
            "start: label_smoothing must be in",
        ),
        ("space:\n  lr: {type: uniform, low: tiny, high: 1.0e-3}\n", "lr needs numbers for low and high"),
        ("space:\n  batch_size: {type: choice, values: 32}\n", "batch_size's values must be a list"),
    ],
)
def test_bad_space_is_refused_with_the_reason(tmp_path, body, needle):
    with pytest.raises(UserError, match=needle) as e:
        load_space("densenet", _write(tmp_path, body))
    assert "\n" not in str(e.value), "one line"


@pytest.mark.parametrize("arch", sorted(PAPER))
def test_entries_are_typed_once_and_write_back_as_the_file_holds_them(arch):
    space = load_space(arch)
    block = yaml.safe_load(Path(space.path).read_text())["space"]
    assert list(space.space) == list(block)
    for name, entry in space.space.items():
        assert entry.to_dict() == block[name] and entry_from_dict(name, entry.to_dict()) == entry


def test_entries_give_the_optuna_distributions_and_batch_sizes_the_search_asks_for():
    space = load_space("densenet")
    dists = study.distributions([space], False)
    # exactly what studies recorded before the entries were typed (a warm start or --resume compares them)
    assert dists["lr"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert dists["batch_size"] == CategoricalDistribution([16, 32, 64])
    assert Uniform(0, 1).distribution() == FloatDistribution(0.0, 1.0, log=False)
    assert batch_sizes(space, False) == [16, 32, 64] and largest_batch(space, False) == 64
    assert batch_sizes(space, True) == [32], "--paper draws only the first trial's"
    assert Choice([16, 32]).values == (16, 32) and Choice((16,)).contains(16) and not LogUniform(1, 2).contains(3)
    with pytest.raises(ValueError, match="0 < low < high"):
        LogUniform(0.0, 1.0)
    with pytest.raises(TypeError, match="not typed .*: lr;"):
        SearchSpace("densenet", space.start, {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}, "code")


def test_paper_table_csv_matches_the_presets():
    with open(ROOT / "results" / "paper_table1.csv") as f:
        rows = {r["arch"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(PAPER)
    for arch, preset in PAPER.items():
        assert rows[arch]["label"] == preset.label
        for k, v in preset.table1.items():
            assert float(rows[arch][k]) == v


def test_paper_identities_in_table1():
    # the paper's F1 is the harmonic mean of macro P and R: 0.578 and 0.571 give 0.574
    t = PAPER["densenet"].table1
    p, r = t["macro_precision"], t["macro_recall"]
    assert round(2 * p * r / (p + r), 3) == t["paper_f1"]
