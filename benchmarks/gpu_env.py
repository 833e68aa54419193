"""The GPU check's first part: what this node's Python can import and what its GPU is, checked in a subprocess.

Torch-free at import (so `benchmarks.gpu_check` can report a node whose torch or numpy is broken): each
check runs in a child Python and prints one JSON line when it ends; a child that crashes (a segfault
from a binary built against another numpy, say) loses only the check it was in: the checks left run
in a fresh child, and the crash is that check's error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The child's code: one function per check, run in the order given on its command line.
SCRIPT = r"""
import importlib, json, os, shutil, sys, time

def mod(name):
    m = importlib.import_module(name)
    return {"version": getattr(m, "__version__", None), "from": os.path.dirname(getattr(m, "__file__", None) or "")}

def c_numba():
    import numpy as np, numba
    f = numba.njit(lambda a: (a * a).sum())
    return {**mod("numba"), "llvmlite": mod("llvmlite")["version"], "njit": float(f(np.arange(4.0)))}

def c_pyarrow():
    import numpy as np, pyarrow as pa, pyarrow.parquet  # noqa: F401
    back = pa.array(np.arange(3, dtype=np.int16)).to_numpy(zero_copy_only=False)
    return {**mod("pyarrow"), "numpy_round_trip": back.tolist()}

def c_torch():
    import torch
    out = {**mod("torch"), "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out["devices"] = torch.cuda.device_count() if out["cuda_available"] else 0
    return out

def c_cuda():
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    p = torch.cuda.get_device_properties(0)
    a = torch.randn(512, 512, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(4, 22050, device="cuda")
    spec = torch.fft.rfft(x * torch.hann_window(22050, device="cuda"))  # cuFFT, float32 as the front end
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info(0)
    return {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(total / 2**30, 1),
            "free_gib": round(free / 2**30, 1), "multiprocessors": p.multi_processor_count,
            "bf16": torch.cuda.is_bf16_supported(), "bf16_matmul": float((a @ a).float().abs().mean()) > 0,
            "fft": bool(torch.isfinite(spec.abs()).all())}

def c_librosa():
    import numpy as np, librosa
    y = (0.1 * np.random.default_rng(0).standard_normal(22050)).astype(np.float32)
    s = librosa.feature.melspectrogram(y=y, sr=22050, n_fft=1976, hop_length=988, n_mels=224)
    return {**mod("librosa"), "mel_shape": list(s.shape)}

def c_ray():
    out = mod("ray")
    import ray.data, ray.tune  # noqa: F401
    return out

def c_soundfile():
    import soundfile
    return {**mod("soundfile"), "libsndfile": soundfile.__libsndfile_version__}

def c_shm():
    u = shutil.disk_usage("/dev/shm")
    return {"total_gib": round(u.total / 2**30, 1), "free_gib": round(u.free / 2**30, 1)}

def c_host():
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    work = shutil.disk_usage(sys.argv[1])
    return {"python": sys.version.split()[0], "executable": sys.executable, "cpus": os.cpu_count(),
            "cpus_available": len(os.sched_getaffinity(0)), "memory_gib": round(mem, 1),
            "work_disk_free_gib": round(work.free / 2**30, 1), "pythonpath": os.environ.get("PYTHONPATH", "")}

CHECKS = {"host": c_host, "numpy": lambda: mod("numpy"), "numba": c_numba, "pyarrow": c_pyarrow,
          "torch": c_torch, "cuda": c_cuda, "torchaudio": lambda: mod("torchaudio"), "scipy": lambda: mod("scipy"),
          "pandas": lambda: mod("pandas"), "librosa": c_librosa, "soundfile": c_soundfile, "ray": c_ray,
          "optuna": lambda: mod("optuna"), "mlflow": lambda: mod("mlflow"), "mgc_ray": lambda: mod("mgc_ray"),
          "shm": c_shm}

for name in sys.argv[2:]:
    t0 = time.perf_counter()
    try:
        rec = {"check": name, "ok": True, "value": CHECKS[name]()}
    except BaseException as e:
        lines = str(e).strip().splitlines()
        rec = {"check": name, "ok": False, "error": f"{type(e).__name__}: {lines[0][:300] if lines else ''}"}
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    print("CHECK " + json.dumps(rec, default=str), flush=True)
"""
# In this order: what the rest of the check stands on first (numba and pyarrow against this numpy).
CHECKS = (
    "host",
    "numpy",
    "numba",
    "pyarrow",
    "torch",
    "cuda",
    "torchaudio",
    "scipy",
    "pandas",
    "librosa",
    "soundfile",
    "ray",
    "optuna",
    "mlflow",
    "mgc_ray",
    "shm",
)
# A check whose failure is no problem where it ran: no CUDA in a CPU run.
EXPECTED_ON_CPU = ("cuda",)


def run_checks(work: Path, seconds: float, out: dict, progress=None) -> None:
    """Run every check in child Pythons within `seconds`; fills out["checks"] (one dict per check, in
    order) and out["problems"] (one line per failed check), also when stopped from outside (the child's
    finished checks are read in a `finally`); calls `progress()` after each child."""
    checks = out.setdefault("checks", [])
    end = time.perf_counter() + seconds
    left = list(CHECKS)
    while left and time.perf_counter() < end:
        cmd = [sys.executable, "-c", SCRIPT, str(work), *left]
        with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
            p = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True)
            code = None
            try:
                code = p.wait(timeout=max(1.0, end - time.perf_counter()))
            except subprocess.TimeoutExpired:
                pass
            finally:
                if code is None:
                    p.kill()
                    p.wait()
                stdout.seek(0)
                stderr.seek(0)
                done = [json.loads(ln[6:]) for ln in stdout.read().splitlines() if ln.startswith("CHECK ")]
                checks += done
                left = left[len(done) :]
                if left:  # the child died or ran out of time in left[0]: that check's error; the rest go on
                    last = (stderr.read().strip().splitlines() or [""])[-1][:300]
                    why = f"the check's Python ended with exit code {code}" if code is not None else "out of time"
                    error = f"{why}: {last}" if code is not None and last else why
                    checks.append({"check": left.pop(0), "ok": False, "error": error, "seconds": None})
                out["problems"] = [f"{c['check']}: {c['error']}" for c in checks if not c["ok"]]
        if progress is not None:
            progress()
    checks += [{"check": c, "ok": False, "error": "not run: out of time", "seconds": None} for c in left]
    out["problems"] = [f"{c['check']}: {c['error']}" for c in checks if not c["ok"]]


def check_value(out: dict, name: str) -> dict | None:
    """One check's value from run_checks' figures (None if it failed or did not run)."""
    for c in out.get("checks", []):
        if c["check"] == name and c["ok"]:
            return c["value"]
    return None
