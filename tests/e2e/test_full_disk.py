"""Full disks: a search whose storage path, cache folder, results folder or MLflow store sits
on a full filesystem is refused in one line naming the folder; one whose storage path fills
midway stops (as Ctrl+C does, before the disk is quite full) in one line naming it, with every
MLflow run ended, and --resume finishes it once there is room. Each test mounts a small tmpfs of its own (and unmounts it); where mounting is
not allowed (not root, no CAP_SYS_ADMIN) they skip."""

import contextlib
import os
import subprocess
import uuid

import pytest

from mgc_ray.files import MIN_FREE_BYTES


@contextlib.contextmanager
def small_fs(parent, mib: int):
    """A tmpfs of `mib` MiB mounted at a fresh folder under `parent`, unmounted after."""
    mnt = parent / f"fs-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode}): needs root or CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


def fill(folder, leave: int = 0) -> str:
    """Write a file into `folder` until its filesystem is full (then give back `leave` bytes)."""
    path = os.path.join(folder, "filler.bin")
    chunk = b"\0" * 2**20
    with open(path, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    if leave:
        with open(path, "r+b") as f:
            f.truncate(max(0, os.path.getsize(path) - leave))
    return path


def _one_error_line(out: str) -> str:
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    return errors[0]


def test_a_full_folder_is_refused_before_anything_starts(tmp_path, smoke_home, run_module, rel, faults):
    with small_fs(tmp_path, 16) as full:
        fill(full, leave=2**20)  # 1 MiB left: below MIN_FREE_BYTES
        base = rel.args(tmp_path, "--smoke", "--no-dashboard")
        cases = {
            "--storage-path": str(full / "ray"),
            "--results-dir": str(full / "results"),
            "--mlflow-uri": f"sqlite:///{full / 'mlflow.db'}",
        }
        for flag, value in cases.items():
            args = list(base)
            args[args.index(flag) + 1] = value
            p = run_module("mgc_ray.tune", *args, env=rel.env(smoke_home), cwd=tmp_path)
            line = _one_error_line(p.stdout + p.stderr)
            assert p.returncode == 2 and str(full) in line and "MiB free" in line, line
        # MGC_HOME on it: the demo and its cache would be written there
        p = run_module("mgc_ray.tune", *base, env=rel.env(full / "home"), cwd=tmp_path)
        line = _one_error_line(p.stdout + p.stderr)
        assert p.returncode == 2 and "the cache folder" in line and str(full) in line, line
        assert not (tmp_path / "mlflow.db").exists(), "refused before any MLflow run was made"
    faults.record(
        "a full --storage-path, --results-dir, MLflow store folder or cache folder (MGC_HOME) at start",
        len(cases) + 1,
        "exit 2, one line naming the folder, before Ray starts; nothing written",
    )


@pytest.mark.slow
def test_storage_that_fills_midway_stops_in_one_line_and_resumes(tmp_path, smoke_home, cli_runs, rel, faults):
    epochs = 8
    # room for the start-up check, then (the filler removed) for the resume's check beside the checkpoints
    with small_fs(tmp_path, 2 * MIN_FREE_BYTES // 2**20 + 32) as disk:
        storage = disk / "ray"
        args = rel.args(
            tmp_path,
            "--smoke",
            "--no-dashboard",
            "--num-samples",
            "2",
            "--max-epochs",
            str(epochs),
            "--grace-period",
            str(epochs),
            "--experiment-name",
            "filling",
        )
        args[args.index("--storage-path") + 1] = str(storage)
        run = cli_runs("mgc_ray.tune", *args, cwd=tmp_path, env=rel.env(smoke_home))
        run.wait_until(lambda: any(rel.trial_results(storage / "filling").values()), 1200, "the first epoch")
        filler = fill(disk, leave=24 * 2**20)  # below LOW_FREE_BYTES: the search stops, with room for Tune's state
        code = run.wait(900)
        out = run.output
        assert code == 2, run.tail()
        line = _one_error_line(out)
        assert "--storage-path" in line and str(storage) in line and "--resume" in line, line
        assert "No space left" not in out, "stopped before the disk was full: no trial failed on it"
        c, parent, children = rel.mlflow_search(tmp_path, name="filling")
        assert parent.info.status != "RUNNING" and not [r for r in children if r.info.status == "RUNNING"]
        assert not run.leftovers(), "the command's local Ray ends with it"

        os.remove(filler)  # room again: --resume finishes the search
        run = cli_runs("mgc_ray.tune", *args, "--resume", cwd=tmp_path, env=rel.env(smoke_home))
        assert run.wait(900) == 0, run.tail()
        c, parent, children = rel.mlflow_search(tmp_path, name="filling")
        assert parent.info.status == "FINISHED"
        assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
        for r in children:
            steps = [m.step for m in c.get_metric_history(r.info.run_id, "val/loss")]
            assert steps == list(range(epochs)), "every epoch logged once, none lost"
        assert (tmp_path / "results" / "demo-smoke" / "filling" / "leaderboard.csv").is_file()
    faults.record(
        "the --storage-path filesystem filled up mid-search",
        1,
        "exit 2, one line naming the folder, no MLflow run left RUNNING; --resume finished every epoch once",
    )
