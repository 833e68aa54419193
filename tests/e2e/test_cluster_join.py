"""Every way of failing to join a Ray cluster is one line naming the address and the fix, exit 2,
within seconds, and the search leaves nothing behind: no token, a wrong token, the token without
RAY_AUTH_MODE=token, a wrong address (nothing listening, a web server's port, an unknown host), a
driver of another Ray version than the cluster's, and a cluster with no CPU free for Ray Data.

One real cluster for the module: a head with token authentication (RAY_AUTH_MODE=token, as the
cluster recipe in docs/cluster.md starts it) and 1 CPU, started by a helper process so that its
token settings stay out of this test process. The version mismatch is made the way Ray itself
sees one: the head's record of its Ray version in the GCS (the cluster metadata `ray start`
writes, which every joining driver compares with its own) says another version."""

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# The helper: starts the cluster, prints its address, then obeys lines on stdin
# ("ray_version X": the head's recorded Ray version becomes X, "ok" back); stdin closed: shut down.
HELPER = r"""
import json, sys
import ray._common.usage.usage_constants as usage_constant
import ray._common.usage.usage_lib as usage_lib
import ray._private.ray_constants as ray_constants
from ray.cluster_utils import Cluster

c = Cluster(initialize_head=True, connect=False,
            head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": 100 * 2**20})
gcs = c.head_node.get_gcs_client()
meta = usage_lib.get_cluster_metadata(gcs)
print("ADDRESS", c.address, flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "ray_version":
        gcs.internal_kv_put(usage_constant.CLUSTER_METADATA_KEY, json.dumps({**meta, "ray_version": arg}).encode(),
                            True, ray_constants.KV_NAMESPACE_CLUSTER)
        print("ok", flush=True)
c.shutdown()
"""
# Each refusal comes within this, the command's own start-up included (up to a minute on the loaded
# 2-core CI machine; the join itself takes ~5 s at most). Without the address probe Ray waited over
# 10 minutes on a closed port and on a web server's port.
JOIN_S = 240


class Cluster:
    def __init__(self, proc: subprocess.Popen, address: str, token: Path):
        self.proc, self.address, self.token = proc, address, token

    def say(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("token_cluster")
    token = base / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_AUTH_TOKEN", None)
    for attempt in range(1, HELPER_STARTS + 1):
        proc, address, log = _start_helper(base, env, attempt)
        if address or "timed out during startup" not in log.read_text() or attempt == HELPER_STARTS:
            break
    try:
        assert address, f"the helper started no cluster: {log.read_text()[-3000:]}"
        yield Cluster(proc, address, token)
    finally:
        proc.stdin.close()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()


# Ray waits a fixed 30 s for a new node's raylet; on the loaded CI machine a head sometimes misses it
# (as cluster._init_local knows): the helper, whose Ray processes go with it, is started again.
HELPER_STARTS = 3


def _start_helper(base: Path, env: dict, attempt: int) -> tuple[subprocess.Popen, str | None, Path]:
    log = base / f"helper-{attempt}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", HELPER],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    line = "-"
    while line and not line.startswith("ADDRESS "):
        line = proc.stdout.readline()
    if not line:
        proc.wait(60)
    return proc, (line.split()[1] if line else None), log


def _env(home: Path, **auth: str) -> dict:
    """A shell of the user's: no token anywhere unless given (its own HOME: no ~/.ray/auth_token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    return {**env, "HOME": str(home), "MGC_HOME": str(home / "mgc"), **auth}


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _join(work: Path, address: str, env: dict, fma_root: str) -> tuple[subprocess.CompletedProcess, float]:
    """A smoke search of the session's tiny demo dataset (its cache goes under MGC_HOME) joining `address`."""
    argv = [
        sys.executable,
        "-m",
        "mgc_ray.tune",
        "--arch",
        "baseline_a_2d",
        "--smoke",
        "--fma-root",
        fma_root,
        "--address",
        address,
        "--mlflow-uri",
        f"sqlite:///{work / 'mlflow.db'}",
        "--results-dir",
        str(work / "results"),
        "--storage-path",
        str(work / "ray"),
    ]
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, timeout=600)
    return proc, time.monotonic() - start


def _refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, f"rc {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def work(tmp_path):
    """The user's folder, with what an earlier search left there: it must come through untouched."""
    w = tmp_path / "work"
    (w / "results" / "earlier").mkdir(parents=True)
    (w / "results" / "earlier" / "summary.md").write_text("earlier\n")
    (w / "ray").mkdir()
    return w


def _unchanged(work: Path, before: dict) -> None:
    assert _snapshot(work) == before, "an earlier run's files are untouched"
    assert sorted(p.name for p in (work / "ray").iterdir()) == [], "no Tune folder is left behind"
    assert not (work / "mlflow.db").exists() and not (work / "optuna.db").exists(), "no run, no study"


def test_token_problems_are_one_line_each(token_cluster, work, tmp_path, demo_root, faults):
    """The issue's case (a shell without the token) and its neighbours; the cluster's own token
    joins (and is then refused for the 1-CPU node, the next check)."""
    before = _snapshot(work)
    home = tmp_path / "home"
    cases = [
        ("no token (RAY_AUTH_MODE=token, no token anywhere)", {"RAY_AUTH_MODE": "token"}, "this shell has none"),
        ("a wrong token", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, "refused this shell's token"),
        (
            "the token without RAY_AUTH_MODE=token",
            {"RAY_AUTH_TOKEN_PATH": str(token_cluster.token)},
            "set RAY_AUTH_MODE=token here too",
        ),
    ]
    for what, auth, needle in cases:
        proc, took = _join(work, token_cluster.address, _env(home, **auth), demo_root)
        line = _refused(proc, needle, token_cluster.address, "RAY_AUTH_TOKEN", "~/.ray/auth_token")
        assert took < JOIN_S, f"{what}: {took:.0f} s"
        _unchanged(work, before)
        print(f"{what}: {took:.1f} s: {line}")
    for what, _, _ in cases:
        faults.record(f"join a token cluster with {what}", 1, "exit 2, one line naming the address and the fix")

    # The cluster's own token joins; its one CPU leaves none for Ray Data beside a 1-CPU trial.
    proc, took = _join(
        work,
        token_cluster.address,
        _env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_cluster.token)),
        demo_root,
    )
    assert "joined the Ray cluster at" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    _refused(proc, f"the Ray cluster at {token_cluster.address} has no CPU free for Ray Data", "at least 2 CPUs")
    _unchanged(work, before)
    faults.record("a cluster whose nodes have no CPU free for Ray Data", 1, "exit 2, one line: add a node with 2 CPUs")


def test_a_driver_of_another_ray_version_is_told_which_to_install(token_cluster, work, tmp_path, demo_root, faults):
    import ray

    before = _snapshot(work)
    token_cluster.say("ray_version 2.59.0")
    try:
        env = _env(tmp_path / "home", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_cluster.token))
        proc, took = _join(work, token_cluster.address, env, demo_root)
    finally:
        token_cluster.say(f"ray_version {ray.__version__}")
    _refused(proc, "runs Ray 2.59.0", f"this command Ray {ray.__version__}", "ray==2.59.0")
    assert took < JOIN_S
    _unchanged(work, before)
    faults.record("a driver of another Ray version than the cluster's", 1, "exit 2, one line: the version to install")


class _Page(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_wrong_address_is_refused_within_seconds(work, tmp_path, demo_root, faults):
    """No cluster needed: nothing listening, a web server (what the dashboard's port 8265 is), an
    unknown host. Without the probe ray.init waited over 10 minutes on the first two."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # free once the socket closes
    web = HTTPServer(("0.0.0.0", 0), _Page)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    before = _snapshot(work)
    cases = [
        ("nothing listening", f"127.0.0.1:{closed}", "connection refused"),
        ("a web server's port", f"127.0.0.1:{web.server_address[1]}", "not a Ray cluster's GCS"),
        ("an unknown host", "no-such-host.invalid:6379", "is unknown"),
    ]
    try:
        for what, address, needle in cases:
            proc, took = _join(work, address, _env(tmp_path / "home"), demo_root)
            line = _refused(proc, needle, f"--address {address}")
            assert took < JOIN_S, f"{what}: {took:.0f} s"
            _unchanged(work, before)
            print(f"{what}: {took:.1f} s: {line}")
    finally:
        web.shutdown()
    for what, _, _ in cases:
        faults.record(f"--address of {what}", 1, "exit 2 within seconds, one line naming the address")
