"""A fresh clone carries everything its tests read: cloned into an empty folder, with nothing
beside it (no data folder, no environment variable naming one), the suite collects in full.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _collect(where: Path, home: Path) -> subprocess.CompletedProcess:
    """`pytest --collect-only -q` in `where`, importing the package from there, as in a fresh clone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MGC_", "PYTEST_"))}
    env.update(PYTHONPATH=str(where), HOME=str(home))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:xdist",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
        ],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _ids(proc: subprocess.CompletedProcess) -> set[str]:
    return {ln.strip() for ln in proc.stdout.splitlines() if "::" in ln}


@pytest.mark.slow
def test_a_fresh_clone_collects_every_test(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.fail(f"{ROOT} is not a git checkout: this test clones it")
    empty = tmp_path / "empty"
    empty.mkdir()
    clone = empty / "repo"
    cloned = subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], capture_output=True, text=True)
    assert cloned.returncode == 0, cloned.stderr
    assert sorted(p.name for p in empty.iterdir()) == ["repo"], "nothing beside the clone"
    there = _collect(clone, tmp_path / "home")
    assert there.returncode == 0, there.stdout[-3000:] + there.stderr[-3000:]
    found = _ids(there)
    # The checkout's own collection, limited to the test files the clone has (a test file not yet
    # committed is in the checkout only).
    here = _collect(ROOT, tmp_path / "home")
    assert here.returncode == 0, here.stdout[-3000:] + here.stderr[-3000:]
    expected = {i for i in _ids(here) if (clone / i.split("::")[0]).is_file()}
    assert len(expected) > 100, f"the checkout collected only {len(expected)} tests"
    assert found == expected, (
        f"missing in the clone: {sorted(expected - found)[:10]}; extra: {sorted(found - expected)[:10]}"
    )
    assert (clone / "tests" / "data" / "fma_samples" / "fma_small" / "000" / "000002.mp3").stat().st_size == 960_738
