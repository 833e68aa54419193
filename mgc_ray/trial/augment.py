"""The paper's training augmentation: Gaussian noise and time stretch, on the trial's device.

`Augment` runs in the trial on a whole training batch (B, N) after the batch
reached the trial's device: it is cheap tensor work next to a training step.
Its random parameters are drawn on the host with a seeded numpy Generator, so
nothing is read back from the device and the CPU can run ahead of the GPU
(the trial's step has no host sync). Evaluation and prediction never call it.

The stretch convolves each batch's examples per drawn factor, so its input shapes
change from batch to batch (up to 21 factors x any count of examples: hundreds of
shapes in an epoch at batch 32). cuDNN's autotuner, on for the model's fixed shapes
(`trainable.trial_setup`), would time every new shape with device syncs; the stretch
runs with it off (`autotuner_off`), on cuDNN's heuristic choice of algorithm.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import numpy as np
import torch
import torchaudio
from torch import nn

from mgc_ray.config import NOISE_MAX_REL, NOISE_P, STRETCH_P, STRETCH_RANGE
from mgc_ray.models.frontend import apply_sinc_kernel
from mgc_ray.trial.device import to_device


@contextlib.contextmanager
def autotuner_off():
    """cuDNN's autotuner off inside the block, back to what it was after (process-wide flag)."""
    was = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = was


def _pad_end(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad the last axis at its end to `length` (a stretched crop that ran short)."""
    n = x.shape[-1]
    return x if n >= length else torch.nn.functional.pad(x, (0, length - n))


class Augment(nn.Module):
    """The paper's training augmentation on a (B, N) waveform batch, independent per example.

    1. Time stretch with probability `stretch_p`: the crop is resampled by a
       factor r ~ U(0.9, 1.1), quantised to 1/100 (output sample j reads input
       position j * r, so r > 1 plays faster and higher). Given `out_len`, the
       input is a longer window (`input_len(out_len)` samples: enough audio for
       the largest factor) and every example is cut to `out_len` after the
       stretch, so a stretched crop of a long track is audio to its last sample
       (an unstretched one is the window's first `out_len` samples); a track
       shorter than the window arrives zero-padded, as before. Without
       `out_len` the output keeps the input's length and r > 1 runs past its
       end into zeros.
       `stretch_method="sinc"` (default) resamples with torchaudio's
       band-limited windowed-sinc kernel (rate round(100 r) / 100): one
       convolution per distinct factor over the examples that drew it, each
       factor's kernel built once; `"linear"` does the stretched examples in
       one gather by linear interpolation. Measured on 2 CPU cores
       (results/model_table.md): sinc is no slower than the batched gather
       (about 0.1 s each for a batch of 32 x 220,500 samples), and linear interpolation
       attenuates and images the top of the spectrum (2-3 dB median log-mel
       error in the top 20 of 224 bands against sinc, < 0.1 dB below), so sinc
       is the default; "linear" stays for devices where a loop of small
       per-example kernels is slow (not measured on a GPU yet).
    2. Gaussian noise with probability `noise_p`: noise ~ N(0, a^2) with the
       amplitude a (the noise's standard deviation) ~ U(0, noise_max_rel * max|x|),
       max|x| taken per example on the (stretched) waveform. So the noise's std
       stays below 3 % of the example's maximum amplitude, the paper's bound.

    Noise is added after the stretch so the added noise is white with exactly
    that std. `noise_gain` scales it for a network that sees the waveform
    through a low-pass resampler (the 1D branch: 22,050 -> 16,000 Hz keeps
    0.82 of white noise's std, so the trial passes 1 / 0.82 and the noise
    reaches the network at the paper's level). Runs on whatever device `wave`
    is on; the same generator seed gives the same output on the same device.

    Args:
        noise_p: probability of adding noise to an example.
        noise_max_rel: upper bound of the noise std relative to the example's max |x|.
        stretch_p: probability of stretching an example.
        stretch_range: (low, high) of the uniform stretch factor.
        stretch_method: "sinc" (torchaudio's kernel, per distinct factor) or "linear" (batched gather).
        noise_gain: factor on the drawn noise std (1: the paper's level at the cache rate).
    """

    # Stretch factors are multiples of 1/100: the sinc resampler needs a rational rate, and builds one
    # kernel per phase of the reduced ratio. On a 1/1000 grid 937/1000 built a (1000, 1, 951) kernel,
    # > 98 % zeros; 1/100 keeps <= 100 phases and 21 factors on [0.9, 1.1]: 3.3x faster per batch
    # (results/benchmarks/FINDINGS.md, bug 1).
    RATE_STEPS = 100
    # Input samples beyond out_len * max factor: the windowed-sinc kernel reads ~7 input samples
    # past its centre at these ratios (lowpass_filter_width 6 at rolloff 0.99); 64 is ample.
    STRETCH_MARGIN = 64

    def __init__(
        self,
        noise_p: float = NOISE_P,
        noise_max_rel: float = NOISE_MAX_REL,
        stretch_p: float = STRETCH_P,
        stretch_range: Sequence[float] = STRETCH_RANGE,
        stretch_method: str = "sinc",
        noise_gain: float = 1.0,
    ) -> None:
        super().__init__()
        lo, hi = (float(v) for v in stretch_range)
        if not (0 <= noise_p <= 1 and 0 <= stretch_p <= 1 and noise_max_rel >= 0 and 0 < lo <= hi):
            raise ValueError("Augment: probabilities in [0, 1], noise_max_rel >= 0, 0 < stretch low <= high")
        if stretch_method not in ("sinc", "linear"):
            raise ValueError(f"stretch_method must be 'sinc' or 'linear', got {stretch_method!r}")
        self.noise_p, self.noise_max_rel, self.stretch_p = float(noise_p), float(noise_max_rel), float(stretch_p)
        self.stretch_range = (lo, hi)
        self.stretch_method = stretch_method
        self.noise_gain = float(noise_gain)
        self._kernels: dict[tuple, tuple[torch.Tensor, int, int, int]] = {}  # per (factor, device, dtype)
        self._generators: dict[str, torch.Generator] = {}  # the noise's, per device

    def input_len(self, out_len: int) -> int:
        """Samples to hand `forward(..., out_len=out_len)`: enough audio for the largest stretch factor."""
        return int(math.ceil(out_len * max(1.0, self.stretch_range[1]))) + self.STRETCH_MARGIN

    def sample_params(self, batch: int, generator: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Draw each example's augmentation on the host, so applying it reads nothing back from the device.

        Args:
            batch: number of examples.
            generator: numpy Generator for reproducible draws (None: a fresh unseeded one).

        Returns:
            dict of (B,) arrays: `stretch` (bool), `rate` (factor, a multiple of
            1/100; 1 where not stretched), `noise` (bool), `noise_rel` (noise
            std / max|x|, 0 where no noise).
        """
        rng = generator if generator is not None else np.random.default_rng()
        u = rng.random((4, batch))  # (4, B): all draws at once
        lo, hi = self.stretch_range
        stretch = u[0] < self.stretch_p  # (B,)
        noise = u[2] < self.noise_p  # (B,)
        rate = np.round((lo + (hi - lo) * u[1]) * self.RATE_STEPS) / self.RATE_STEPS  # (B,)
        rate = np.where(stretch, rate, 1.0)  # (B,)
        noise_rel = np.where(noise, self.noise_max_rel * u[3], 0.0).astype(np.float32)  # (B,)
        return {"stretch": stretch, "rate": rate, "noise": noise, "noise_rel": noise_rel}

    @staticmethod
    def stretch_linear(wave: torch.Tensor, rate: torch.Tensor, out_len: int | None = None) -> torch.Tensor:
        """Resample each example by its own factor (linear interpolation).

        Args:
            wave: (B, N) float.
            rate: (B,) factors; output sample j = input at position j * rate (zero past the end).
            out_len: output samples (default N).

        Returns:
            (B, out_len) float.
        """
        b, n = wave.shape
        pos = torch.arange(out_len or n, device=wave.device, dtype=torch.float64)[None, :] * rate.double()[:, None]
        i0 = pos.floor().long()  # (B, out_len), float64 keeps j * rate exact at N ~ 2e5
        frac = (pos - i0).to(wave.dtype)  # (B, out_len)
        padded = torch.nn.functional.pad(wave, (0, 2))  # (B, N + 2): zeros past the end
        i0 = i0.clamp_max(n)  # (B, out_len): positions past the end read the zero padding
        x0 = padded.gather(1, i0)  # (B, out_len)
        x1 = padded.gather(1, i0 + 1)  # (B, out_len)
        return x0 + frac * (x1 - x0)  # (B, out_len)

    def _kernel(self, steps: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, int, int, int]:
        """(kernel, width, orig, new) resampling by steps / RATE_STEPS, built once per factor and device."""
        key = (steps, str(device), dtype)
        if key not in self._kernels:
            t = torchaudio.transforms.Resample(steps, self.RATE_STEPS)
            self._kernels[key] = (t.kernel.to(device, dtype), t.width, steps // t.gcd, self.RATE_STEPS // t.gcd)
        return self._kernels[key]

    def stretch_sinc(self, wave: torch.Tensor, rate: np.ndarray, out_len: int | None = None) -> torch.Tensor:
        """Band-limited resampling of each example by its own factor, then cut (or zero-padded) to `out_len`.

        One convolution per distinct factor, over the examples that drew it (at most 21 on the
        1/100 grid), with each factor's kernel built once.

        Args:
            wave: (B, N) float.
            rate: (B,) factors on the host, multiples of 1/RATE_STEPS; 1 leaves an example as is.
            out_len: output samples (default N); only the input the kept outputs read is convolved,
                so a 0.9 stretch of a window made for 1.1 costs no more than a same-length one.

        Returns:
            (B, out_len) float.
        """
        n = out_len or wave.shape[1]
        steps = np.rint(np.asarray(rate) * self.RATE_STEPS).astype(np.int64)  # (B,)
        out = _pad_end(wave[:, :n], n).clone()  # (B, out_len): the unstretched examples' first samples
        with autotuner_off():  # (k, N) changes every batch: see the module doc
            for s in np.unique(steps[steps != self.RATE_STEPS]):
                idx = to_device(np.flatnonzero(steps == s), wave.device)  # (k,)
                kernel, width, orig, new = self._kernel(int(s), wave.device, wave.dtype)
                y = apply_sinc_kernel(wave.index_select(0, idx), kernel, width, orig, new, out_len=n)  # (k, <= N)
                out.index_copy_(0, idx, _pad_end(y, n))  # (B, out_len): cut, or a short track's end zero-padded
        return out

    def apply(
        self,
        wave: torch.Tensor,
        params: dict[str, np.ndarray],
        generator: torch.Generator | None = None,
        out_len: int | None = None,
    ) -> torch.Tensor:
        """Apply drawn params (see `sample_params`) to a (B, N) batch; returns (B, out_len or N) float32.

        Reads nothing back from the device: which examples to stretch is known on the host,
        and the noise is added to every example (std 0 where none was drawn).

        Args:
            generator: torch.Generator on `wave`'s device for the noise (None: torch's global RNG).
            out_len: samples per output example (default N): stretch, then cut each example to it.
        """
        out = wave.float()
        n = out_len or out.shape[1]
        stretch = np.asarray(params["stretch"], dtype=bool)
        if stretch.any() and self.stretch_method == "sinc":
            out = self.stretch_sinc(out, params["rate"], n)  # (B, n)
        elif stretch.any():
            idx = to_device(np.flatnonzero(stretch), out.device)  # (k,)
            rate = to_device(np.asarray(params["rate"], dtype=np.float64)[stretch], out.device)  # (k,)
            stretched = self.stretch_linear(out.index_select(0, idx), rate, n)  # (k, n)
            out = _pad_end(out[:, :n], n).index_copy(0, idx, stretched)  # (B, n)
        else:
            out = _pad_end(out[:, :n], n)  # (B, n)
        if np.asarray(params["noise"], dtype=bool).any():
            rel = to_device(np.asarray(params["noise_rel"], dtype=np.float32) * self.noise_gain, out.device)  # (B,)
            std = rel * out.abs().amax(dim=1)  # (B,)
            noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)  # (B, N)
            out = out + std[:, None] * noise  # (B, N); std is 0 where no noise was drawn
        return out

    def forward(
        self, wave: torch.Tensor, generator: np.random.Generator | None = None, out_len: int | None = None
    ) -> torch.Tensor:
        """Augment a training batch.

        Args:
            wave: (B, N) float waveforms on the trial's device (N = `input_len(out_len)` for stretch
                without trailing silence).
            generator: numpy Generator on the host: it draws the parameters and seeds the
                device's noise (None: unseeded).
            out_len: samples per output example (default N).

        Returns:
            (B, out_len or N) float32 augmented waveforms.
        """
        if wave.dim() != 2:
            raise ValueError(f"Augment expects (B, N) waveforms, got shape {tuple(wave.shape)}")
        rng = generator if generator is not None else np.random.default_rng()
        params = self.sample_params(wave.shape[0], rng)
        noise_gen = self._noise_generator(wave.device)
        noise_gen.manual_seed(int(rng.integers(2**62)))  # no host read: the seed comes from the host
        return self.apply(wave, params, noise_gen, out_len)

    def _noise_generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device)
        return self._generators[key]

    def extra_repr(self) -> str:
        return (
            f"noise_p={self.noise_p}, noise_max_rel={self.noise_max_rel}, stretch_p={self.stretch_p}, "
            f"stretch_range={self.stretch_range}, stretch_method={self.stretch_method!r}, "
            f"noise_gain={self.noise_gain:g}"
        )
