"""A real multi-node Ray cluster on one machine (ray.cluster_utils.Cluster: a head and a worker
node, each with its own raylet and logical CPUs): prepare spreads its shards over both nodes,
the tune CLI joins with --address and its trials land on both nodes, and a cluster with
storage nobody declared shared is refused before any work."""

import json
import subprocess
import sys

import pytest

NODE_CPUS = 3  # logical CPUs per node (more than this box has is fine)
CPUS_PER_TRIAL = 2  # 2 of 3, and 1 reserved for its Ray Data reads: one trial per node


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": NODE_CPUS, "include_dashboard": False, "object_store_memory": 128 * 2**20},
    )
    c.add_node(num_cpus=NODE_CPUS, object_store_memory=128 * 2**20)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def cluster_cache(cluster, demo_root, tmp_path_factory):
    """`python -m mgc_ray.prepare --address` on the cluster: 4 tracks a shard, so ~9 shard tasks."""
    out = tmp_path_factory.mktemp("cluster") / "cache"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mgc_ray.prepare",
            "--fma-root",
            demo_root,
            "--out",
            str(out),
            "--tracks-per-shard",
            "4",
            "--address",
            cluster.address,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _node_ids(cluster) -> set[str]:
    return {n.node_id for n in cluster.list_all_nodes()}


def test_prepare_spreads_its_tasks_over_the_nodes(cluster, cluster_cache):
    sidecars = [json.loads(p.read_text()) for p in (cluster_cache / "shards").glob("*.json")]
    assert len(sidecars) >= 6
    nodes = {s["node_id"] for s in sidecars}
    assert nodes == _node_ids(cluster), "every node decoded some shards"


def test_trials_never_import_mlflow():
    """Only the driver writes to MLflow (tracking.TrialLogger is a Tune callback, run by the driver):
    the trial's code does not even import it, so a sqlite store is fine on any cluster."""
    code = (
        "import sys, mgc_ray.trial.trainable, mgc_ray.data.pipeline; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]


def test_local_storage_on_several_nodes_is_refused_before_any_work(cluster, cluster_cache, tmp_path, rel):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mgc_ray.tune",
            *rel.args(tmp_path, "--cache", str(cluster_cache), "--smoke", "--address", cluster.address),
        ],
        env=rel.env(tmp_path / "home"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: this Ray cluster has 2 nodes") and "--shared-storage" in error
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "ray").iterdir()), "no Tune state written"
    assert not (tmp_path / "mlflow.db").exists(), "nothing logged"


def test_without_address_a_command_never_joins_a_running_cluster(cluster, demo_root, tmp_path, rel):
    """ray.init() with no address joins the cluster last started on the machine (`ray start`, a
    test's); the tune CLI starts a Ray of its own instead (refused here for its GPU flag, right
    after Ray starts: a local Ray of this CPU box, not the 2-node cluster)."""
    env = {k: v for k, v in rel.env(tmp_path / "home").items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mgc_ray.tune",
            *rel.args(tmp_path, "--fma-root", demo_root, "--no-dashboard", "--gpus-per-trial", "1"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "--gpus-per-trial 1 is more than any node has" in proc.stderr, out[-3000:]
    assert "existing Ray cluster" not in out and cluster.address not in out


@pytest.mark.slow
def test_search_spreads_trials_over_the_nodes(cluster, cluster_cache, tmp_path, rel, cli_runs):
    run = cli_runs(
        "mgc_ray.tune",
        *rel.args(
            tmp_path,
            "--cache",
            str(cluster_cache),
            "--smoke",
            "--address",
            cluster.address,
            "--shared-storage",
            "--cpus-per-trial",
            str(CPUS_PER_TRIAL),
        ),
        cwd=tmp_path,
        env=rel.env(tmp_path / "home"),
    )
    assert run.wait(600) == 0, run.tail()
    out = run.output
    assert "2 nodes see the shared storage" in out
    assert "2 at once, 2 CPU + 0 GPU each" in out

    exp = rel.experiment_dir(tmp_path)
    results = rel.trial_results(exp)
    assert len(results) == 2 and all(results.values())
    ran_on = {r["node_id"] for rows in results.values() for r in rows}
    assert ran_on == _node_ids(cluster), "one trial per node: each node ran one"

    c, parent, children = rel.mlflow_search(tmp_path, dataset=f"cache-{cluster_cache.name}")
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    tagged = {n for r in children for n in r.data.tags["mgc.node_ids"].split(",")}
    assert tagged == ran_on, "MLflow names the node each trial ran on"
    for r in children:
        assert c.get_metric_history(r.info.run_id, "val/loss"), "the driver logged every trial's epochs"
    board = next((tmp_path / "results").glob("*/*/leaderboard.csv")).read_text().strip().splitlines()
    assert len(board) == 1 + 2
