"""Front ends (librosa parity), normalisation, resampling, crops and augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
from conftest import FMA_SAMPLES

from mgc_ray.config import CACHE_SAMPLE_RATE, NOISE_MAX_REL
from mgc_ray.data.pipeline import centre_crop, cover_crops, random_crop
from mgc_ray.models.frontend import (
    AMIN,
    LogMel,
    PerInputZScore,
    Resample,
    WaveZScore,
    n_frames,
    resampled_length,
)
from mgc_ray.trial.augment import Augment

SR = CACHE_SAMPLE_RATE  # 22,050 Hz: where the paper's frame counts work out
TEN_S = 220_500  # a 10-s crop at 22,050 Hz
FMA_CLIP = Path(FMA_SAMPLES) / "fma_small" / "000" / "000002.mp3"


@pytest.fixture(scope="module")
def fma_clip() -> np.ndarray:
    """10 s from the real fma_small clip 000002 (Hip-Hop), decoded with soundfile, mono, 22,050 Hz."""
    assert FMA_CLIP.is_file(), f"{FMA_CLIP} is missing"
    import soundfile as sf

    y, sr = sf.read(str(FMA_CLIP), dtype="float32", always_2d=True)
    y = torchaudio.functional.resample(torch.from_numpy(y.mean(axis=1)), sr, SR).numpy()
    return np.ascontiguousarray(y[5 * SR : 5 * SR + TEN_S])  # from 5 s in: past any fade-in


@pytest.fixture(scope="module")
def synthetic_clip() -> np.ndarray:
    """10 s: a tone, a chirp and a little noise, with a silent first second."""
    rng = np.random.default_rng(0)
    t = np.arange(TEN_S) / SR
    y = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t * (1 + t / 10))
    y = (y + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    y[:SR] = 0.0
    return y


def _librosa_db(y: np.ndarray, window: int, n_mels: int) -> np.ndarray:
    import librosa

    s = librosa.feature.melspectrogram(
        y=y,
        sr=SR,
        n_fft=window,
        hop_length=window // 2,
        win_length=window,
        window="hann",
        center=True,
        power=2.0,
        n_mels=n_mels,
    )
    return librosa.power_to_db(s, ref=np.max)


@pytest.mark.parametrize("clip", ["fma_clip", "synthetic_clip"])
@pytest.mark.parametrize("window,n_mels,frames", [(3472, 513, 128), (1976, 224, 224), (1024, 128, 431)])
def test_logmel_matches_librosa(request, clip, window, n_mels, frames):
    y = request.getfixturevalue(clip)
    ref = _librosa_db(y, window, n_mels)
    out = LogMel(SR, window, n_mels)(torch.from_numpy(y)[None])[0].numpy()
    assert out.shape == ref.shape == (n_mels, frames)
    diff = np.abs(out - ref)
    assert np.median(diff) < 0.05 and diff.max() < 1.0, (np.median(diff), diff.max())  # the spec's bounds
    # measured < 0.01 dB; 0.05 also catches a symmetric Hann window (0.1-0.16 dB), reflect padding (> 14 dB)
    assert diff.max() < 0.05, diff.max()


def test_paper_shapes_for_a_ten_second_clip():
    wave = torch.zeros(2, TEN_S)
    assert LogMel(SR, 3472, 513)(wave).shape == (2, 513, 128)  # baselines
    assert LogMel(SR, 1976, 224)(wave).shape == (2, 224, 224)  # DenseNet, fusion
    assert n_frames(TEN_S, 3472) == 128 and n_frames(TEN_S, 1976) == 224
    assert Resample(SR, 16_000)(wave).shape == (2, 160_000) and resampled_length(TEN_S, SR, 16_000) == 160_000


def test_logmel_reference_is_per_example(fma_clip, synthetic_clip):
    lm = LogMel(SR, 1976, 224)
    batch = torch.from_numpy(np.stack([fma_clip, 0.05 * fma_clip, synthetic_clip, np.zeros_like(fma_clip)]))
    out = lm(batch)
    alone = lm(batch[:1])[0]
    torch.testing.assert_close(out[0], alone)
    torch.testing.assert_close(out[1], alone, atol=1e-3, rtol=0)  # dB relative to each example's own max
    torch.testing.assert_close(out[2], lm(batch[2:3])[0])
    assert (out.amax(dim=(1, 2)) == 0).all() and out.min() >= -80.0
    assert torch.equal(out[3], torch.zeros_like(out[3]))  # silence: 0 dB everywhere, no NaN


def test_logmel_sparse_cpu_product_matches_dense_and_copies(synthetic_clip):
    """On the CPU the mel filterbank is applied as a CSR matrix: same dB as the dense product,
    and a used front end still deep-copies and pickles (a CSR tensor alone cannot be deep-copied)."""
    import copy
    import pickle

    m = LogMel(CACHE_SAMPLE_RATE, 1976, 224)
    wave = torch.from_numpy(synthetic_clip[None, : CACHE_SAMPLE_RATE * 3]).float()  # (1, N)
    out = m(wave)  # (1, 224, T)
    dense = 10 * torch.log10(
        torch.matmul(
            m.mel_fb,
            torch.stft(wave, 1976, 988, window=m.hann, center=True, pad_mode="constant", return_complex=True)
            .abs()
            .square(),
        ).clamp_min(AMIN)
    )  # (1, 224, T)
    dense = (dense - dense.amax()).clamp_min(-m.top_db)
    torch.testing.assert_close(out, dense, atol=1e-3, rtol=0)
    for copied in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        torch.testing.assert_close(copied(wave), out, atol=0, rtol=0)


def test_zscores():
    # seeded: an unseeded draw offset by 7 sometimes left float32 rounding of the mean just over 1e-5
    x = (
        torch.randn(3, 20, 30, generator=torch.Generator().manual_seed(0))
        * torch.tensor([1.0, 5.0, 0.1])[:, None, None]
        + 7
    )
    z = PerInputZScore()(x)
    torch.testing.assert_close(z.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(1, 2), unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    assert torch.equal(PerInputZScore()(torch.full((1, 4, 4), -80.0)), torch.zeros(1, 4, 4))
    torch.testing.assert_close(WaveZScore(0.5, 2.0)(torch.tensor([[0.5, 2.5]])), torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError):
        WaveZScore(0.0, 0.0)


def test_resample_keeps_a_tone_and_drops_nothing_in_band():
    t = torch.arange(SR) / SR
    tone = torch.sin(2 * np.pi * 1000 * t)[None]  # 1 kHz, 1 s
    out = Resample(SR, 16_000)(tone)
    assert out.shape == (1, 16_000)
    spec = torch.fft.rfft(out[0, 1000:-1000] * torch.hann_window(14_000)).abs()
    assert int(spec.argmax()) == 1000 * 14_000 // 16_000  # the 1 kHz bin at 16 kHz
    assert Resample(16_000, 16_000)(tone) is not None and "kernel" not in Resample(SR, 16_000).state_dict()


# --- crops --------------------------------------------------------------------
def test_random_crop_is_a_slice_and_reproducible():
    x = np.arange(1000, dtype=np.int16)
    c = random_crop(x, 300, np.random.default_rng(1))
    assert c.shape == (300,) and c.dtype == np.int16
    assert np.array_equal(c, np.arange(c[0], c[0] + 300))  # contiguous
    assert np.array_equal(c, random_crop(x, 300, np.random.default_rng(1)))
    starts = {int(random_crop(x, 300, np.random.default_rng(s))[0]) for s in range(200)}
    assert min(starts) < 50 and max(starts) > 650  # placed anywhere in [0, 700]
    short = random_crop(np.ones(100, np.float32), 300, np.random.default_rng(0))
    assert short.shape == (300,) and short[:100].all() and not short[100:].any()  # zero-padded at the end
    t = random_crop(torch.arange(10.0), 4, np.random.default_rng(0))
    assert isinstance(t, torch.Tensor) and t.shape == (4,)


def test_centre_crop():
    x = np.arange(10)
    assert centre_crop(x, 4).tolist() == [3, 4, 5, 6]
    assert centre_crop(x, 12).tolist() == list(range(10)) + [0, 0]


def test_cover_crops_cover_the_clip():
    x = np.arange(3 * 100 + 37, dtype=np.int16)
    crops = cover_crops(x, 100)
    assert crops.shape == (4, 100) and crops.dtype == np.int16
    assert crops[0, 0] == 0 and crops[-1, -1] == x[-1]  # last aligned to the end
    assert set(np.unique(crops)) == set(x.tolist())  # every sample covered
    assert cover_crops(np.arange(300), 100).shape == (3, 100)  # 30 s in 10-s crops: 3
    one = cover_crops(np.arange(50), 100)
    assert one.shape == (1, 100) and not one[0, 50:].any()
    assert cover_crops(np.arange(300), 100, hop=50).shape == (5, 100)
    assert cover_crops(torch.arange(250.0), 100).shape == (3, 100)


# --- augmentation ---------------------------------------------------------------
def _waves(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.5 * torch.rand(b, 1, generator=g) + 0.1) * torch.randn(b, n, generator=g).clamp(-3, 3) / 3


@pytest.mark.parametrize("method", ["sinc", "linear"])
def test_augment_shapes_and_reproducible(method):
    x = _waves(6, 5000)
    aug = Augment(stretch_method=method)
    a = aug(x, np.random.default_rng(7))
    b = aug(x, np.random.default_rng(7))
    c = aug(x, np.random.default_rng(8))
    assert a.shape == x.shape and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_rates():
    n_ex, tol = 2000, 4 * np.sqrt(0.25 / 2000)  # 4 binomial standard deviations at p = 0.5
    p = Augment().sample_params(n_ex, np.random.default_rng(0))
    assert abs(p["stretch"].mean() - 0.5) < tol and abs(p["noise"].mean() - 0.5) < tol
    assert abs((p["stretch"] & p["noise"]).mean() - 0.25) < 4 * np.sqrt(0.1875 / n_ex)  # independent
    r = p["rate"][p["stretch"]]
    assert r.min() >= 0.9 and r.max() <= 1.1 and abs(r.mean() - 1.0) < 0.01 and r.std() > 0.05  # ~U(0.9, 1.1)
    x = _waves(n_ex, 400, seed=1)
    changed = lambda out: (out - x).abs().amax(dim=1) > 1e-6  # noqa: E731
    g = np.random.default_rng(1)
    only_noise = Augment(stretch_p=0.0)(x, g)
    only_stretch = Augment(noise_p=0.0, stretch_method="linear")(x, g)
    both = Augment()(x, g)
    assert abs(changed(only_noise).float().mean() - 0.5) < tol
    p_one = 1 / (0.2 * Augment.RATE_STEPS)  # a factor rounding to exactly 1 (1 in 20 on the 1/100 grid) changes nothing
    assert abs(changed(only_stretch).float().mean() - 0.5 * (1 - p_one)) < tol
    assert abs(changed(both).float().mean() - 0.75) < tol


def test_noise_stays_under_three_percent_of_the_max():
    x = _waves(400, 22_050, seed=2)
    aug = Augment(noise_p=1.0, stretch_p=0.0)
    params = aug.sample_params(400, np.random.default_rng(3))
    out = aug.apply(x, params, torch.Generator().manual_seed(4))
    rel = (out - x).std(dim=1) / x.abs().amax(dim=1)  # realised noise std / max|x|
    # sample std of 22,050 Gaussian draws is within 1 % of the true std (~7 sigma)
    assert (rel <= NOISE_MAX_REL * 1.01).all()
    torch.testing.assert_close(rel, torch.from_numpy(params["noise_rel"]), atol=1e-4, rtol=0.01)
    assert rel.max() > 0.9 * NOISE_MAX_REL and rel.min() < 0.1 * NOISE_MAX_REL  # amplitude ~ U(0, 3 %)


@pytest.mark.parametrize("method", ["sinc", "linear"])
@pytest.mark.parametrize("rate", [0.9, 1.1])
def test_stretch_changes_speed_and_keeps_length(method, rate):
    n = SR
    t = torch.arange(n) / SR
    tone = (0.5 * torch.sin(2 * np.pi * 1000 * t))[None]  # 1 kHz
    aug = Augment(noise_p=0.0, stretch_p=1.0, stretch_method=method)
    params = {
        "stretch": np.array([True]),
        "rate": np.array([rate]),
        "noise": np.array([False]),
        "noise_rel": np.zeros(1, dtype=np.float32),
    }
    out = aug.apply(tone, params)
    assert out.shape == (1, n)
    seg = out[0, 1000 : int(n / 1.1) - 1000]  # where both rates still have signal
    spec = torch.fft.rfft(seg * torch.hann_window(seg.numel())).abs()
    peak_hz = int(spec.argmax()) * SR / seg.numel()
    assert abs(peak_hz - 1000 * rate) < 5  # played faster / slower by the factor
    if rate > 1:  # ran past the end: zero-padded at the end
        assert out[0, -int(0.08 * n) :].abs().max() < 0.01
