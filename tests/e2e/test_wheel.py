"""An installed wheel works outside the checkout: it carries the search spaces.

The wheel is built from this checkout and installed (without dependencies) into a fresh
virtual environment; the environment borrows this one's installed dependencies through a
path file, and nothing of the checkout (no editable install, no PYTHONPATH) is visible to
it. Then the main command runs from a folder outside the checkout, as on a worker node or
after `pip install .`.
"""

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)


@pytest.mark.slow
def test_installed_wheel_runs_a_smoke_search_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)]
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("mgc_ray-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # this environment's dependencies, read as a plain path: its .pth files (the editable
    # install of the checkout among them) are not processed there
    (site / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    inst = _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], env=clean_env)
    assert inst.returncode == 0, inst.stderr[-3000:]

    away = tmp_path / "elsewhere"
    away.mkdir()
    where = _run(
        [str(py), "-c", "import mgc_ray, mgc_ray.search.space as s; print(mgc_ray.__file__); print(s.space_dir())"],
        cwd=away,
        env=clean_env,
    )
    pkg, spaces = where.stdout.split()
    assert Path(pkg).is_relative_to(site) and Path(spaces).is_relative_to(site), where.stdout
    assert (Path(spaces) / "baseline_a_2d.yaml").is_file()

    env = {**clean_env, "MGC_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    proc = _run(
        [
            str(py),
            "-m",
            "mgc_ray.tune",
            "--arch",
            "baseline_a_2d",
            "--smoke",
            "--num-samples",  # one trial of one epoch: the check is on the installed package, not the search
            "1",
            "--max-epochs",
            "1",
            "--no-dashboard",
            "--mlflow-uri",
            f"sqlite:///{away / 'mlflow.db'}",
        ],
        cwd=away,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no search space" not in proc.stderr
    assert "paper Table 1 (2D Baseline A)" in proc.stdout, "the comparison table is printed"
    assert list((away / "results" / "demo-smoke").glob("baseline_a_2d-*/summary.md"))
