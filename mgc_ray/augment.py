"""The paper's training augmentation: Gaussian noise and time stretch, on the trial's device.

`Augment` runs in the trial on a whole training batch (B, N) after the batch
reached the trial's device: it is cheap tensor work next to a training step, it
needs no numpy, and it is seedable with a `torch.Generator`. Evaluation and
prediction never call it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torchaudio
from torch import nn

from mgc_ray.config import NOISE_MAX_REL, NOISE_P, STRETCH_P, STRETCH_RANGE


def _pad_end(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad the last axis at its end to `length` (a stretched crop that ran short)."""
    n = x.shape[-1]
    return x if n >= length else torch.nn.functional.pad(x, (0, length - n))


class Augment(nn.Module):
    """The paper's training augmentation on a (B, N) waveform batch, independent per example.

    1. Time stretch with probability `stretch_p`: the crop is resampled by a
       factor r ~ U(0.9, 1.1), quantised to 1/100 (output sample j reads input
       position j * r, so r > 1 plays faster and higher). The output keeps the
       crop length: r < 1 drops the end of the stretched crop, r > 1 runs past
       the end and is zero-padded at the end (as short tracks are).
       `stretch_method="sinc"` (default) resamples each stretched example with
       torchaudio's band-limited windowed-sinc resampler (rate round(100 r) /
       100); `"linear"` does the whole batch in one gather by linear
       interpolation. Measured on 2 CPU cores (results/model_table.md): the
       per-example sinc loop is no slower than the batched gather (about 0.1 s
       each for a batch of 32 x 220,500 samples), and linear interpolation
       attenuates and images the top of the spectrum (2-3 dB median log-mel
       error in the top 20 of 224 bands against sinc, < 0.1 dB below), so sinc
       is the default; "linear" stays for devices where a loop of small
       per-example kernels is slow (not measured on a GPU yet).
    2. Gaussian noise with probability `noise_p`: noise ~ N(0, a^2) with the
       amplitude a (the noise's standard deviation) ~ U(0, noise_max_rel * max|x|),
       max|x| taken per example on the (stretched) waveform. So the noise's std
       stays below 3 % of the example's maximum amplitude, the paper's bound.

    Noise is added after the stretch so the added noise is white with exactly
    that std. No numpy: runs on whatever device `wave` is on; the same
    generator seed gives the same output on the same device.

    Args:
        noise_p: probability of adding noise to an example.
        noise_max_rel: upper bound of the noise std relative to the example's max |x|.
        stretch_p: probability of stretching an example.
        stretch_range: (low, high) of the uniform stretch factor.
        stretch_method: "sinc" (torchaudio, per example) or "linear" (batched gather).
    """

    # Stretch factors are multiples of 1/100: the sinc resampler needs a rational rate, and builds one
    # kernel per phase of the reduced ratio. On a 1/1000 grid 937/1000 built a (1000, 1, 951) kernel,
    # > 98 % zeros; 1/100 keeps <= 100 phases and 21 factors on [0.9, 1.1]: 3.3x faster per batch
    # (results/benchmarks/FINDINGS.md, bug 1).
    RATE_STEPS = 100

    def __init__(self, noise_p: float = NOISE_P, noise_max_rel: float = NOISE_MAX_REL,
                 stretch_p: float = STRETCH_P, stretch_range: Sequence[float] = STRETCH_RANGE,
                 stretch_method: str = "sinc") -> None:
        super().__init__()
        lo, hi = (float(v) for v in stretch_range)
        if not (0 <= noise_p <= 1 and 0 <= stretch_p <= 1 and noise_max_rel >= 0 and 0 < lo <= hi):
            raise ValueError("Augment: probabilities in [0, 1], noise_max_rel >= 0, 0 < stretch low <= high")
        if stretch_method not in ("sinc", "linear"):
            raise ValueError(f"stretch_method must be 'sinc' or 'linear', got {stretch_method!r}")
        self.noise_p, self.noise_max_rel, self.stretch_p = float(noise_p), float(noise_max_rel), float(stretch_p)
        self.stretch_range = (lo, hi)
        self.stretch_method = stretch_method

    def sample_params(self, batch: int, device: torch.device | str,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Draw each example's augmentation.

        Args:
            batch: number of examples.
            device: where to draw (the generator's device when one is given).
            generator: torch.Generator for reproducible draws (None: torch's global RNG).

        Returns:
            dict of (B,) tensors: `stretch` (bool), `rate` (factor, a multiple of
            1/100; 1 where not stretched), `noise` (bool), `noise_rel` (noise
            std / max|x|, 0 where no noise).
        """
        if generator is not None:
            device = generator.device
        u = torch.rand(4, batch, generator=generator, device=device, dtype=torch.float64)  # (4, B): all draws at once
        lo, hi = self.stretch_range
        stretch = u[0] < self.stretch_p  # (B,)
        noise = u[2] < self.noise_p  # (B,)
        rate = torch.round((lo + (hi - lo) * u[1]) * self.RATE_STEPS) / self.RATE_STEPS  # (B,)
        rate = torch.where(stretch, rate, torch.ones_like(rate))  # (B,)
        noise_rel = torch.where(noise, self.noise_max_rel * u[3], torch.zeros_like(u[3]))  # (B,)
        return {"stretch": stretch, "rate": rate, "noise": noise, "noise_rel": noise_rel.float()}

    @staticmethod
    def stretch_linear(wave: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        """Resample each example by its own factor (linear interpolation), keeping the length.

        Args:
            wave: (B, N) float.
            rate: (B,) factors; output sample j = input at position j * rate (zero past the end).

        Returns:
            (B, N) float.
        """
        b, n = wave.shape
        pos = torch.arange(n, device=wave.device, dtype=torch.float64)[None, :] * rate.double()[:, None]  # (B, N)
        i0 = pos.floor().long()  # (B, N), float64 keeps j * rate exact at N ~ 2e5
        frac = (pos - i0).to(wave.dtype)  # (B, N)
        padded = torch.nn.functional.pad(wave, (0, 2))  # (B, N + 2): zeros past the end
        i0 = i0.clamp_max(n)  # (B, N): positions past the end read the zero padding
        x0 = padded.gather(1, i0)  # (B, N)
        x1 = padded.gather(1, i0 + 1)  # (B, N)
        return x0 + frac * (x1 - x0)  # (B, N)

    @classmethod
    def stretch_sinc(cls, wave: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        """Band-limited resampling of each example by its own factor, keeping the length.

        Args:
            wave: (B, N) float.
            rate: (B,) factors, multiples of 1/RATE_STEPS; 1 leaves an example as is.

        Returns:
            (B, N) float.
        """
        n = wave.shape[1]
        out = wave.clone()
        for i, r in enumerate(rate.tolist()):
            orig = int(round(r * cls.RATE_STEPS))
            if orig == cls.RATE_STEPS:
                continue
            y = torchaudio.functional.resample(wave[i:i + 1], orig, cls.RATE_STEPS)  # (1, ~N / r)
            y = _pad_end(y[:, :n], n)  # (1, N): cut or zero-pad at the end
            out[i] = y[0]
        return out

    def apply(self, wave: torch.Tensor, params: dict[str, torch.Tensor],
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply drawn params (see `sample_params`) to a (B, N) batch; returns (B, N) float32."""
        out = wave.float()
        if bool(params["stretch"].any()):
            if self.stretch_method == "sinc":
                out = self.stretch_sinc(out, params["rate"])  # (B, N)
            else:
                stretched = self.stretch_linear(out, params["rate"])  # (B, N)
                out = torch.where(params["stretch"][:, None], stretched, out)  # (B, N)
        if bool(params["noise"].any()):
            peak = out.abs().amax(dim=1)  # (B,)
            std = params["noise_rel"] * peak  # (B,)
            noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)  # (B, N)
            out = out + std[:, None] * noise  # (B, N); std is 0 where no noise was drawn
        return out

    def forward(self, wave: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a training batch.

        Args:
            wave: (B, N) float waveforms on the trial's device.
            generator: torch.Generator on the same device (None: global RNG).

        Returns:
            (B, N) float32 augmented waveforms.
        """
        if wave.dim() != 2:
            raise ValueError(f"Augment expects (B, N) waveforms, got shape {tuple(wave.shape)}")
        params = self.sample_params(wave.shape[0], wave.device, generator)
        return self.apply(wave, params, generator)

    def extra_repr(self) -> str:
        return (f"noise_p={self.noise_p}, noise_max_rel={self.noise_max_rel}, stretch_p={self.stretch_p}, "
                f"stretch_range={self.stretch_range}, stretch_method={self.stretch_method!r}")
