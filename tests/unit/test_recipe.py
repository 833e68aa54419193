"""The training-recipe options (mgc_ray.trial.recipe), on the CPU without Ray: the masks zero exactly
the spans they name and only in training, mixup and label smoothing give the losses they are
defined by, and with all three off a trial trains exactly as before, drawing nothing more."""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mgc_ray.config import PAPER, RECIPE_OFF, TrainConfig, epoch_seed
from mgc_ray.models import build_model
from mgc_ray.models.frontend import Masks
from mgc_ray.trial.augment import Augment
from mgc_ray.trial.loop import make_optimizer, predict_logits, train_epoch
from mgc_ray.trial.recipe import Recipe

SR = 8000
TINY = dict(sample_rate=SR, window=256, n_mels=16, crop_seconds=0.5, n_classes=4)
N = int(SR * TINY["crop_seconds"])
# (4, B) fractions: time start, time width, freq start, freq width; widths of 0 mask nothing
FRACTIONS = np.array([[0.1, 0.5, 0.0], [0.2, 0.0, 0.3], [0.25, 0.0, 0.6], [0.25, 0.1, 0.0]], dtype=np.float32)


def _masks() -> Masks:
    return Masks(*torch.from_numpy(FRACTIONS).unbind(0))


def _span(start: np.float32, width: np.float32, length: int) -> np.ndarray:
    """The positions a mask covers, computed on the host in float32 as the device does."""
    lo = np.floor(start * np.float32(length))
    hi = lo + np.floor(width * np.float32(length))
    pos = np.arange(length)
    return (pos >= lo) & (pos < hi)


def _check_masked(out: torch.Tensor, ref: torch.Tensor, freq: bool) -> None:
    """`out` is `ref` with each example's time span (and mel band if `freq`) at 0, nothing else changed.

    Args:
        out, ref: (B, 1, n_mels, T) or (B, 1, N16) front-end outputs with and without the masks.
    """
    out, ref = out[:, 0].numpy(), ref[:, 0].numpy()
    for b in range(out.shape[0]):
        hide = _span(FRACTIONS[0, b], FRACTIONS[1, b], out.shape[-1])  # (T,)
        assert hide.sum() == int(np.floor(FRACTIONS[1, b] * out.shape[-1])), "the width drawn, in positions"
        if out.ndim == 3:
            bands = _span(FRACTIONS[2, b], FRACTIONS[3, b], out.shape[1]) if freq else np.zeros(out.shape[1], bool)
            hide = hide[None, :] | bands[:, None]  # (n_mels, T)
        assert (out[b][hide] == 0).all(), f"example {b}: the masked values are 0"
        assert (ref[b][hide] != 0).all(), f"example {b}: the mask hid real values"
        np.testing.assert_array_equal(out[b][~hide], ref[b][~hide])
    assert (out != ref).any()


@pytest.mark.parametrize("arch", ["baseline_a_2d", "baseline_b", "densenet"])
def test_spectrogram_masks_zero_one_time_span_and_one_mel_band(arch):
    fe = build_model(arch, **TINY).frontend
    wave = 0.3 * torch.randn(3, N, generator=torch.Generator().manual_seed(0))
    _check_masked(fe(wave, _masks()), fe(wave), freq=True)


def test_a_waveform_front_end_masks_time_only():
    fe = build_model("baseline_a_1d", **TINY).frontend
    wave = 0.3 * torch.randn(3, N, generator=torch.Generator().manual_seed(0))
    out = fe(wave, _masks())  # (B, 1, N16)
    assert out.shape == (3, 1, 2 * N), "8 kHz resampled to 16 kHz"
    _check_masked(out, fe(wave), freq=False)


def test_fusion_hides_the_same_time_from_both_branches_and_a_band_from_the_2d_one():
    model = build_model("fusion", **TINY)
    seen: dict[str, list] = {"wave": [], "spec": []}
    model.wave_net.frontend.register_forward_hook(lambda m, a, out: seen["wave"].append(out))
    model.spec_net.frontend.register_forward_hook(lambda m, a, out: seen["spec"].append(out))
    wave = 0.3 * torch.randn(3, N, generator=torch.Generator().manual_seed(0))
    model(wave, masks=_masks())
    model(wave)
    _check_masked(seen["wave"][0], seen["wave"][1], freq=False)
    _check_masked(seen["spec"][0], seen["spec"][1], freq=True)


def test_masks_and_mixup_only_in_training():
    """What the front end receives: masks and mixed waveforms in train_epoch, the batch itself and
    no masks in evaluation (predict_logits: validation, test and predict all use it)."""
    torch.manual_seed(0)
    model = build_model("baseline_a_2d", **TINY)
    calls: list[tuple] = []
    model.frontend.register_forward_pre_hook(lambda m, args: calls.append(args))
    g = torch.Generator().manual_seed(1)
    batches = [(0.3 * torch.randn(4, N, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(2)]
    recipe = Recipe(spec_mask=0.2, mixup=0.4, label_smoothing=0.1)
    train_epoch(
        model, batches, torch.optim.SGD(model.parameters(), lr=0.0), recipe=recipe, generator=np.random.default_rng(0)
    )
    assert len(calls) == 2 and all(isinstance(a[1], Masks) for a in calls)
    assert all(not torch.equal(a[0], w) for a, (w, _) in zip(calls, batches)), "mixup mixed the waveforms"
    calls.clear()
    predict_logits(model, batches)
    assert len(calls) == 2 and all(a[1] is None for a in calls)
    assert all(torch.equal(a[0], w) for a, (w, _) in zip(calls, batches))


def _paper_epochs(arch: str, recipe):
    """Two epochs as the trial runs them (Augment, the epoch's numpy generator); losses, generators' next draw."""
    torch.manual_seed(0)
    model = build_model(arch, **TINY)
    opt = make_optimizer(model, TrainConfig(arch=arch))
    aug = Augment()
    g = torch.Generator().manual_seed(1)
    batches = [
        (0.3 * torch.randn(4, aug.input_len(N), generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(3)
    ]
    out = []
    for epoch in range(2):
        rng = np.random.default_rng(epoch_seed(0, epoch))
        r = train_epoch(model, batches, opt, augment=functools.partial(aug, out_len=N), generator=rng, recipe=recipe)
        out.append((r["loss"], rng.random()))
    return out, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("arch", ["baseline_a_2d", "baseline_a_1d"])
def test_all_off_trains_exactly_as_without_the_recipe(arch):
    """The paper's recipe: the same losses and weights bit for bit, and the same generator stream after
    (nothing drawn); label smoothing alone draws nothing either, masks do."""
    paper = Recipe.of(PAPER[arch].train_config())
    assert paper == Recipe() and (paper.spec_mask, paper.mixup, paper.label_smoothing) == tuple(RECIPE_OFF.values())
    before, w0 = _paper_epochs(arch, None)
    after, w1 = _paper_epochs(arch, paper)
    assert before == after
    assert all(torch.equal(a, b) for a, b in zip(w0, w1))
    smoothed, _ = _paper_epochs(arch, Recipe(label_smoothing=0.1))
    assert [d for _, d in smoothed] == [d for _, d in before] and smoothed[0][0] != before[0][0]
    masked, _ = _paper_epochs(arch, Recipe(spec_mask=0.1))
    assert [d for _, d in masked] != [d for _, d in before]


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(64, 4)

    def forward(self, wave):
        return self.fc(wave)  # (B, 4)


def _one_step_loss(recipe: Recipe, wave, label, seed: int) -> float:
    """train_epoch's loss on one batch, the weights unchanged (lr 0)."""
    model = _Linear()
    return train_epoch(
        model,
        [(wave, label)],
        torch.optim.SGD(model.parameters(), lr=0.0),
        recipe=recipe,
        generator=np.random.default_rng(seed),
    )["loss"]


def test_mixup_loss_is_the_lam_weighted_pair_of_cross_entropies():
    g = torch.Generator().manual_seed(2)
    wave, label = torch.randn(8, 64, generator=g), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    recipe = Recipe(mixup=0.4)
    drawn = recipe.draw(8, torch.device("cpu"), np.random.default_rng(5))  # what train_epoch draws with seed 5
    assert 0 < drawn.lam < 1 and sorted(drawn.partner.tolist()) == list(range(8)) and drawn.masks is None
    mixed = drawn.lam * wave + (1 - drawn.lam) * wave[drawn.partner]
    with torch.no_grad():
        logits = _Linear()(mixed)
    pair = drawn.lam * F.cross_entropy(logits, label) + (1 - drawn.lam) * F.cross_entropy(logits, label[drawn.partner])
    targets = drawn.lam * F.one_hot(label, 4) + (1 - drawn.lam) * F.one_hot(label[drawn.partner], 4)
    assert float(pair) == pytest.approx(float(F.cross_entropy(logits, targets.float())), rel=1e-6)
    loss = _one_step_loss(recipe, wave, label, seed=5)
    assert loss == pytest.approx(float(pair), rel=1e-6)
    with torch.no_grad():
        assert loss != pytest.approx(float(F.cross_entropy(_Linear()(wave), label)), rel=1e-3)


def test_label_smoothing_is_torchs():
    """torch's definition: (1 - eps) x the cross-entropy + eps x the mean over classes of -log p."""
    g = torch.Generator().manual_seed(3)
    wave, label = torch.randn(8, 64, generator=g), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    with torch.no_grad():
        logp = F.log_softmax(_Linear()(wave), dim=1)  # (B, 4)
    eps = 0.1
    defined = ((1 - eps) * -logp.gather(1, label[:, None])[:, 0] + eps * -logp.mean(dim=1)).mean()
    assert _one_step_loss(Recipe(label_smoothing=eps), wave, label, seed=0) == pytest.approx(float(defined), rel=1e-6)
    assert _one_step_loss(Recipe(), wave, label, seed=0) == pytest.approx(float(F.nll_loss(logp, label)), rel=1e-6)


@pytest.mark.parametrize(
    "bad, needle",
    [
        (dict(spec_mask=-0.1), "spec_mask"),
        (dict(spec_mask=0.5), "spec_mask"),
        (dict(mixup=-1.0), "mixup"),
        (dict(label_smoothing=1.0), "label_smoothing"),
    ],
)
def test_out_of_bounds_options_are_refused(bad, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig(arch="densenet", **bad)
    with pytest.raises(ValueError, match=needle):
        Recipe(**bad)
