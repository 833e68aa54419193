"""What each trial reserves (`cluster.plan_resources`): its trainable's CPUs and GPU share and, beside
them on the same node, the CPUs of its own Ray Data reads; and how many such trials the nodes hold."""

import itertools

import pytest

from mgc_ray.cluster import READS_BUNDLE, TrialResources, plan_resources, trial_memory_gib
from mgc_ray.errors import UserError


def _node(cpus: float, gpus: float = 0) -> dict:
    return {"Alive": True, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


def _fit(nodes: list[dict], r: TrialResources) -> int:
    """Trials whose two bundles fit together on one node (STRICT_PACK), node by node."""
    per_trial = sum(b["CPU"] for b in r.bundles())
    return sum(int(n["Resources"].get("CPU", 0) // per_trial) for n in nodes)


def test_a_trial_reserves_a_bundle_for_its_reads_beside_its_own():
    r = plan_resources([_node(16)], None, None, None)
    assert r.bundles() == [{"CPU": 1.0}, {"CPU": 1.0}]  # one to train, one for a shard read at a time
    assert r.bundles()[READS_BUNDLE] == {"CPU": r.data_cpus}
    assert r.max_concurrent == 8, "a 16-CPU node holds 8 trials of 1 + 1 CPUs"
    gpu = plan_resources([_node(16, 1)], 0.25, None, None)
    assert gpu.bundles() == [{"CPU": 3.0, "GPU": 0.25}, {"CPU": 1.0}], "the GPU share stays with the trainable"
    # a search resumed from before trials reserved their reads: one bundle, Ray Data anywhere
    assert TrialResources(1.0, 0.0, 1, data_cpus=0).bundles() == [{"CPU": 1.0}]


def test_the_node_loss_cluster_holds_one_trial_per_node_and_no_spare_cpu():
    """tests/e2e/test_faults_at_scale.py's cluster: a head of 0 CPUs and two nodes of 2, trials of 1 CPU.
    Each node holds exactly one trial and its reads, so a retried trial finds no CPU to take from
    another trial's Ray Data: it waits for a whole node."""
    nodes = [_node(0), _node(2), _node(2)]
    r = plan_resources(nodes, None, 1, None)
    assert (r.cpus, r.data_cpus, r.max_concurrent) == (1, 1.0, 2)
    assert _fit(nodes[:2], r) == 1, "after losing a node, the other holds one trial: the retry waits for it"


def test_what_a_gpu_node_kept_for_ray_data_is_now_each_trials_reads():
    """A quarter of a GPU node's cores go to Ray Data as before, now split into each trial's reads bundle."""
    densenet = trial_memory_gib("densenet", 64)
    r = plan_resources([_node(16, 1)], None, None, None, densenet, 141.0)  # an H200: DenseNet trials of 1/8
    assert (r.gpus, r.cpus, r.data_cpus, r.max_concurrent) == (0.125, 1.0, 1.0, 8)
    r = plan_resources([_node(32, 1)], None, None, None, densenet, 141.0)
    assert (r.cpus, r.data_cpus, r.max_concurrent) == (3.0, 1.0, 8), "8 of 32 cores read: 1 for each trial"
    r = plan_resources([_node(64, 8)], None, None, None, trial_memory_gib("baseline_a_2d", 64), 141.0)
    # 1/8 of a GPU each: 64 trials' worth of GPU, but 1 + 1 CPUs each: 32 fit on 64 cores
    assert (r.gpus, r.cpus, r.data_cpus, r.max_concurrent) == (0.125, 1.0, 1.0, 32)


@pytest.mark.parametrize(
    "nodes, gpus, cpus",
    list(
        itertools.product(
            [[_node(2)] * 2, [_node(0), _node(4), _node(7)], [_node(16, 1)], [_node(64, 8), _node(8)], [_node(24, 2)]],
            [None, 0, 0.25, 0.5, 1],
            [None, 1, 2],
        )
    ),
)
def test_the_trials_at_once_always_fit_with_their_reads(nodes, gpus, cpus):
    if gpus and not any(n["Resources"].get("GPU") for n in nodes):
        gpus = 0
    try:
        r = plan_resources(nodes, gpus, cpus, None)
    except UserError as e:  # only a trainable with its reads bigger than every node is refused
        assert "Ray Data reads do not fit on the largest node" in str(e)
        assert cpus + 1 > max(n["Resources"]["CPU"] for n in nodes)
        return
    assert r.data_cpus >= 1, "a shard read takes a whole CPU"
    assert 1 <= r.max_concurrent <= _fit(nodes, r), "no trial waits for a CPU another trial reserved"
    if r.gpus:
        assert r.max_concurrent <= sum(n["Resources"].get("GPU", 0) for n in nodes) / r.gpus + 1e-9


def test_a_trainable_with_no_room_for_its_reads_is_refused():
    with pytest.raises(
        UserError,
        match=r"--cpus-per-trial 2 and the 1 CPU .* \(2 CPUs\): add a node with at least 3 CPUs \(ray start --num-cpus\), or ask for at most --cpus-per-trial 1$",
    ):
        plan_resources([_node(2), _node(2)], None, 2, None)
