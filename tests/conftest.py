# ---- data fixtures: FMA samples, demo dataset, Ray (owner: fma/demo/prepare) ----
# Shared by tests/test_fma.py, test_demo.py and test_prepare.py; add other blocks below, not inside.
import os as _os

import pytest as _pytest

FMA_SAMPLES = "/work/shared/fma_samples"  # real FMA files (SPEC section 4)
TINY_DEMO = dict(tracks_per_genre=4, seconds=4.0, seed=0)  # 32 tracks, ~1 s to write


@_pytest.fixture(scope="session")
def fma_samples() -> str:
    """The real FMA files checked in beside the spec (skip where this checkout lacks them)."""
    if not _os.path.isdir(FMA_SAMPLES):
        _pytest.skip(f"{FMA_SAMPLES} is not here")
    return FMA_SAMPLES


@_pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> str:
    """One tiny demo dataset per session (TINY_DEMO), in FMA's layout. Treat it as read-only."""
    from mgc_ray.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("demo") / "fma", **TINY_DEMO)


@_pytest.fixture(scope="module")
def ray_local():
    """A local Ray (2 CPUs, no dashboard) for one test module; prepare() reuses it.

    Yields:
        The cluster's GCS address (for CLIs run with --address).
    """
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
# ---- end of data fixtures ----
