"""Ray at the edge: starting or joining Ray, the dashboard's port, the cluster's resources
and its shared storage. The one home of `ray.init` for every command (tests and
benchmarks use it too), so every Ray this project starts keeps usage statistics
off and never joins a cluster someone else left running by accident.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from mgc_ray.errors import UserError

DASHBOARD_PORT = 8265  # Ray's default; the next free one when another search or `ray start` holds it
DASHBOARD_PORTS_TRIED = 100
# Searches started at the same instant see the same free port and race for it: the loser's
# ray.init fails to bind, shuts its Ray down and starts again on another port, this many times.
RAY_START_ATTEMPTS = 8
_BIND_ERRORS = ("already occupied", "address already in use", "failed to bind")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class TrialResources:
    """What each trial holds, and how many run at once.

    A trial reserves two bundles of one placement group on one node (`bundles`): its trainable's
    CPUs and GPU share, and the CPUs of its own Ray Data reads, where `data.pipeline.trial_reads`
    runs them. No other trial, nor a trial Ray retries after a node is lost, can take those.
    """

    cpus: float
    gpus: float
    max_concurrent: int
    data_cpus: float = 1.0  # the reads bundle (0: none, Ray Data anywhere in the cluster: searches before it)

    def bundles(self) -> list[dict[str, float]]:
        """The trial's placement group: [the trainable's, its Ray Data reads'] (READS_BUNDLE is the second)."""
        trainable = {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}
        return [trainable] + ([{"CPU": self.data_cpus}] if self.data_cpus else [])


READS_BUNDLE = 1  # a trial's Ray Data reads run in this bundle of its placement group (see TrialResources)


def init(
    address: str | None = None,
    *,
    dashboard: bool = False,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int | None = None,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    log_to_driver: bool = True,
    logging_level: str | int = "INFO",
    **kwargs,
):
    """Join the cluster at `address`, or start a Ray of this process's own (address None).

    Ray reports usage statistics to usage-stats.ray.io by default: nothing leaves the machine
    unless the user asks (RAY_USAGE_STATS_ENABLED=1). Token authentication stays as ray.init
    sets it (on, since Ray 2.52). A local Ray is started with address="local": without it
    ray.init joins whatever cluster `ray start` (or a test) last left running here, flags ignored.

    Args:
        address: a cluster to join, already resolved (`config.ray_address`); None: a local Ray.
        dashboard, dashboard_host, dashboard_port: a local Ray's dashboard.
        num_cpus, object_store_memory: a local Ray's size (None: Ray's defaults).
        log_to_driver, logging_level, kwargs: passed to ray.init.

    Returns:
        ray.init's context.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ctx = _join(address, log_to_driver=log_to_driver, logging_level=logging_level, **kwargs)
    else:
        extra = {"dashboard_port": dashboard_port} if dashboard and dashboard_port else {}
        ctx = ray.init(
            address="local",
            include_dashboard=dashboard,
            dashboard_host=dashboard_host,
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            log_to_driver=log_to_driver,
            logging_level=logging_level,
            **extra,
            **kwargs,
        )
    if log_to_driver:
        _quiet_worker_exits()
    return ctx


# Joining a cluster: every way it can fail is one line naming the address and the fix.
# A head answers a TCP connect in milliseconds, even through a VPN or an ssh tunnel; without this
# probe ray.init keeps retrying an address where nothing answers for over 10 minutes (measured
# with Ray 2.60 on a closed port and on a web server's port: still waiting after 10 min).
JOIN_PROBE_S = 10.0
# ray.init's attempts to reach the GCS, one a second, when joining: Ray's 20 are sized for a head
# that is itself still starting; a running head answers the first, and a token it refuses is
# refused on every attempt, so 5 tell in ~5 s what 20 tell in 20.
JOIN_GCS_ATTEMPTS = 5
_GCS_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"  # ray._private.node reads it when connecting
# An HTTP/2 client's first bytes (the connection preface and an empty SETTINGS frame): Ray's GCS
# (gRPC) answers with a SETTINGS frame; a web server (the dashboard's port 8265) or anything else does not.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4  # the frame type byte (the 4th) of a SETTINGS frame
_AUTH_TEXTS = ("InvalidAuthToken", "Unauthenticated")


def _join(address: str, **kwargs):
    """ray.init(address) after `probe_address`; its errors as one line each (`join_error`)."""
    import ray

    try:
        probe_address(address)
        ours = _GCS_WAIT_ENV not in os.environ  # the user's own value wins
        if ours:
            os.environ[_GCS_WAIT_ENV] = str(JOIN_GCS_ATTEMPTS)
        try:
            return ray.init(address=address, **kwargs)
        finally:
            if ours:
                os.environ.pop(_GCS_WAIT_ENV, None)  # for this join only
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError or its own
        error = join_error(exc, address)
        if error is None:
            raise
        ray.shutdown()  # a driver half connected (a version mismatch is found after connecting)
        raise error from None


def probe_address(address: str) -> None:
    """Refuse, within JOIN_PROBE_S, an address where no Ray head answers: a name that does not
    resolve, nothing listening, no answer, or a server that is not a gRPC server (Ray's GCS).

    Raises:
        UserError: one line naming the address and what to check.
        ConnectionError: `--address auto` and no Ray running on this machine (Ray's own check).
    """
    from ray._private.services import canonicalize_bootstrap_address

    target = canonicalize_bootstrap_address(address)  # what ray.init dials ("auto" and localhost resolved)
    if target is None or "://" in address:
        return
    host, _, port = target.rpartition(":")
    fix = "check the address (`ray start --head` printed it; `ray status` on the head) and that this machine reaches it"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=JOIN_PROBE_S) as s:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return  # a TLS GCS does not answer a plain preface
            s.sendall(_H2_PREFACE)
            reply = s.recv(16)
    except socket.gaierror as exc:
        raise UserError(f"--address {address}: the host {host} is unknown ({exc.strerror}): {fix}") from None
    except ConnectionRefusedError:
        raise UserError(f"--address {address}: nothing listens at {target} (connection refused): {fix}") from None
    except (TimeoutError, socket.timeout):
        raise UserError(f"--address {address}: no answer from {target} within {JOIN_PROBE_S:g} s: {fix}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"--address {address}: cannot reach {target} ({exc}): {fix}") from None
    if len(reply) < 4 or reply[3] != _H2_SETTINGS:
        raise UserError(
            f"--address {address}: {target} answers, but it is not a Ray cluster's GCS (the dashboard's "
            "port 8265 is not it): give the head's GCS address, HEAD_IP:6379 unless `ray start --head "
            "--port` chose another"
        )


def join_error(exc: BaseException, address: str) -> UserError | None:
    """The one line for a failure to join the cluster at `address`; None: not a joining error."""
    import re

    from ray.exceptions import AuthenticationError

    text = "\n".join(str(e) for e in _chain(exc))
    token_fix = (
        "set RAY_AUTH_TOKEN to the head's token (`ray get-auth-token` there), or copy the head's "
        "~/.ray/auth_token to this machine (or point RAY_AUTH_TOKEN_PATH at the copy)"
    )
    if isinstance(exc, AuthenticationError):
        return UserError(f"the Ray cluster at {address} wants Ray's token and this shell has none: {token_fix}")
    if any(t in text for t in _AUTH_TEXTS):
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            return UserError(
                f"the Ray cluster at {address} wants Ray's token: set RAY_AUTH_MODE=token here too, "
                f"as on its nodes, and {token_fix}"
            )
        return UserError(f"the Ray cluster at {address} refused this shell's token (not the cluster's): {token_fix}")
    if "Version mismatch" in text:
        found = re.findall(r"Ray: (\S+)\s+Python: (\S+)", text)
        if len(found) >= 2:
            (ray_c, py_c), (ray_d, py_d) = found[:2]
            return UserError(
                f"the Ray cluster at {address} runs Ray {ray_c} on Python {py_c}, this command Ray {ray_d} "
                f"on Python {py_d}: run it from an environment with ray=={ray_c} on Python {py_c} (as on the "
                "cluster's nodes), or start the cluster from this one"
            )
    if "Could not find any running Ray instance" in text:
        return UserError(
            f"--address {address}: no Ray cluster runs on this machine: start one (`ray start --head`), "
            "or give the head's address HEAD_IP:6379"
        )
    if isinstance(exc, ConnectionError):
        return UserError(
            f"cannot join the Ray cluster at {address} ({str(exc).splitlines()[0][:200]}): check the "
            "address (`ray status` on the head) and that this machine reaches it"
        )
    return None


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


PREFETCH_HEADER = "Error in prefetcher thread."  # Ray Data's batch prefetcher, in a trial's worker


def without_exit_tracebacks(lines: list[str]) -> list[str]:
    """A worker's log lines without the tracebacks of a worker being stopped, noise in a search
    that went well:
    - those that end in SystemExit: Ray stops idle and finished workers with SIGTERM, which it
      turns into SystemExit; one caught inside a garbage-collector callback prints
      `Exception ignored in: ...` and a traceback;
    - Ray Data's prefetcher thread's `OSError: Broken pipe`: the thread still waits on the
      raylet while the trial's worker is stopped (ASHA's cut, a budget's or Ctrl+C).
    Every other traceback is kept whole."""
    out: list[str] = []
    block: list[str] | None = None
    for line in lines:
        if block is None:
            if line.startswith(("Exception ignored in", "Traceback (most recent call last)", PREFETCH_HEADER)):
                block = [line]
            else:
                out.append(line)
            continue
        block.append(line)
        if (
            line
            and not line[0].isspace()
            and not line.startswith(("Traceback (most recent call last)", PREFETCH_HEADER))
        ):
            shutdown = line.startswith("SystemExit") or (block[0] == PREFETCH_HEADER and line == "OSError: Broken pipe")
            if not shutdown:  # the closing exception line: keep any other error
                out.extend(block)
            block = None
    return out + (block or [])


RAYLET_TAIL = "Last 20 lines of the Raylet logs:"  # Ray 2.60's node-death message, before the tail it quotes


def node_error_lines(lines: list[str], seen: set[str]) -> list[str]:
    """Ray's error messages for the driver (`pid` "raylet") in one line each, and each once.

    A node that dies makes each of its agents publish "Raylet is terminated ..." with the
    last 20 lines of its raylet's log, and the GCS "The node ... has been marked dead" with
    a list of causes: the first line says what happened, the rest is in the node's Ray logs.
    `seen`: the lines already printed (the caller's, kept across calls)."""
    out = []
    for text in map(str, lines):
        head, tail, _ = text.partition(RAYLET_TAIL)
        line = (head.strip().splitlines() or [""])[0]
        if tail:
            line += " (its last log lines: raylet.out in that node's Ray log folder)"
        if line and line not in seen:
            seen.add(line)
            out.append(line)
    return out


def _quiet_worker_exits() -> None:
    """Filter what Ray forwards from workers to this process's output through `without_exit_tracebacks`,
    and Ray's error messages for the driver through `node_error_lines`.
    Ray 2.60 has no public hook: its dispatcher's "ray_print_logs" handler is wrapped, and the
    `print_to_stdstream` its error listener calls (if absent, nothing changes)."""
    import ray._private.worker as ray_worker
    from ray._private.ray_logging import (
        global_worker_stdstream_dispatcher as dispatcher,
    )

    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is not None and not getattr(printer, "mgc_quiet", False):
        seen: set[str] = set()

        def print_errors(data, ignore_prefix, printer=printer):
            if data.get("pid") == "raylet":
                data = {**data, "lines": node_error_lines(list(data.get("lines", [])), seen)}
                if not data["lines"]:
                    return
            printer(data, ignore_prefix)

        print_errors.mgc_quiet = True
        ray_worker.print_to_stdstream = print_errors

    for name, handler in list(getattr(dispatcher, "handlers", [])):
        if name == "ray_print_logs" and not getattr(handler, "mgc_quiet", False):

            def quiet(data, handler=handler):
                lines = without_exit_tracebacks(list(data.get("lines", [])))
                if lines:
                    handler({**data, "lines": lines})

            quiet.mgc_quiet = True
            dispatcher.remove_handler(name)
            dispatcher.add_handler(name, quiet)


def is_uri(path: str) -> bool:
    """s3://, gs://, ...: storage Ray Tune reaches through pyarrow, from every node."""
    return "://" in path


def _sigterm_as_sigint(signum, frame) -> None:
    """Schedulers (SLURM, Kubernetes) stop jobs with SIGTERM: treat it as Ctrl+C, so Tune saves its
    state and the runs end KILLED, ready for --resume (Python's default would end at once)."""
    signal.raise_signal(signal.SIGINT)


def start_for_search(
    address: str | None,
    dashboard_host: str = "127.0.0.1",
    dashboard: bool = True,
    object_store_memory: int | None = None,
) -> None:
    """Join `address`, or start a local Ray with its dashboard on a free port from DASHBOARD_PORT;
    print where the dashboard is, and let SIGTERM stop the search as Ctrl+C does.

    Args:
        address: a cluster to join (already resolved by `config.ray_address`), or None.
        dashboard_host: where a local dashboard listens (127.0.0.1 unless the user asks).
        dashboard: start the dashboard (local Ray only).
        object_store_memory: a local Ray's object store in bytes (tune --object-store-gb; None: Ray's default).
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        print(
            "warning: RAY_AUTH_MODE=disabled turns off Ray's token authentication: anyone who reaches the "
            "cluster's ports can run code on it; unset it to keep the token",
            file=sys.stderr,
        )
    if address:
        init(address)
        signal.signal(signal.SIGTERM, _sigterm_as_sigint)  # after ray.init, which sets its own
        print(f"mgc_ray: joined the Ray cluster at {address}", flush=True)
        return
    if dashboard and dashboard_host not in LOCAL_HOSTS:
        print(
            f"warning: the Ray dashboard will listen on {dashboard_host}: it has no authentication "
            "of its own beyond Ray's token; keep the port behind a firewall",
            file=sys.stderr,
        )
    ctx = _init_local(dashboard, dashboard_host, object_store_memory)
    signal.signal(signal.SIGTERM, _sigterm_as_sigint)  # after ray.init, which sets its own
    if ctx.dashboard_url:
        print(f"mgc_ray: Ray dashboard at http://{ctx.dashboard_url} (token: `ray get-auth-token`)", flush=True)


def _init_local(dashboard: bool, host: str, object_store_memory: int | None = None):
    """A local Ray with its dashboard on a free port; a port another search took between the check
    and Ray's bind (or any other port Ray's processes lost the same way) means: shut down, try again
    on another port (spread at random, so that racing searches stop meeting). So does a raylet that
    missed Ray's fixed 30-s start-up wait on a machine busy with other searches."""
    import logging
    import random

    import ray

    services = logging.getLogger("ray._private.services")  # "Failed to start the dashboard" + its log's tail
    level = services.level
    first = DASHBOARD_PORT
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        port = free_port(host, first) if dashboard else None
        if attempt < RAY_START_ATTEMPTS:
            services.setLevel(logging.CRITICAL)  # a lost race is retried: its error log is noise
        try:
            return init(
                None,
                dashboard=dashboard,
                dashboard_host=host,
                dashboard_port=port,
                object_store_memory=object_store_memory,
            )
        except Exception as exc:  # noqa: BLE001 - Ray raises ValueError, RuntimeError or Exception for a lost bind
            why = next(
                (ln.strip() for ln in reversed(str(exc).splitlines()) if any(e in ln.lower() for e in _BIND_ERRORS)),
                None,
            )
            slow = "timed out during startup" in str(exc)  # Ray waits 30 s for its raylet: a busy machine
            if (why is None and not slow) or attempt == RAY_START_ATTEMPTS:
                raise
            ray.shutdown()
            if why is not None:
                why = why[why.find("[Errno") :] if "[Errno" in why else why[-160:]
                print(
                    f"mgc_ray: another search took port {port} at the same moment ({why.rstrip(')')}); "
                    "starting Ray again on another port",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                print(
                    "mgc_ray: Ray's processes did not start within Ray's 30 s (a busy machine); starting Ray again",
                    file=sys.stderr,
                    flush=True,
                )
            first = (port or first) + 1 + random.randrange(DASHBOARD_PORTS_TRIED // 4)
        finally:
            services.setLevel(level)


def free_port(host: str, first: int) -> int:
    """`first`, or the next port `host` can bind (a busy dashboard port made ray.init fail)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in range(first, first + DASHBOARD_PORTS_TRIED):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue  # in use (the host itself was checked before Ray started)
            return port
    raise UserError(
        f"no free port for the Ray dashboard on {host} in {first}-{first + DASHBOARD_PORTS_TRIED - 1}: "
        "stop an old search or `ray stop`, or pass --no-dashboard"
    )


# Activation memory one training example saves for backward (GiB) under bf16 autocast, the trial's
# precision on a GPU, at the default search space's largest input (its smallest window, most mels,
# 15-s crops): `python -m benchmarks.activation_memory` (results/benchmarks/activation_memory_cpu.md)
# counts the saved tensors with saved-tensor hooks under torch's CPU autocast, which keeps 0.51 of
# float32's bytes for DenseNet (0.349 -> 0.177 GiB). CUDA's autocast lists differ from the CPU's in
# places, so each figure is the measured one plus 10 %, rounded up; benchmarks/gpu_check.py measures
# the real peak on a GPU. Sized from float32, an H200 took 4 DenseNet trials at batch 64; now 8.
ACTIVATION_GIB = {
    "densenet": 0.2,
    "fusion": 0.2,
    "baseline_a_2d": 0.0006,
    "baseline_b": 0.0007,
    "baseline_a_1d": 0.0011,
}
FIXED_GIB = 1.5  # weights, gradients and Adam's moments (< 0.15 GiB for every arch), cuDNN workspaces
SHARE_STEPS = 8  # shares are multiples of 1/8 of a GPU: at most 8 trials on one
DATA_CPU_PART = 4  # a quarter of a GPU node's cores go to its trials' Ray Data reads (at least one each)
MEMORY_PROBE_S = 120  # the probe of a GPU node's memory waits this long for a free slot


def trial_memory_gib(arch: str, max_batch: int) -> float:
    """What one trial of `arch` needs on a GPU at its space's largest batch (see ACTIVATION_GIB)."""
    return ACTIVATION_GIB.get(arch, max(ACTIVATION_GIB.values())) * max_batch + FIXED_GIB


def default_gpu_share(need_gib: float, gpu_gib: float | None) -> float:
    """The share of a GPU a trial needing `need_gib` takes by default: the smallest multiple of
    1/SHARE_STEPS whose memory cap (`device.memory_fraction`) holds it; a whole GPU when the GPU's
    memory is unknown."""
    from mgc_ray.trial.device import GPU_HEADROOM

    if not gpu_gib:
        return 1.0
    steps = math.ceil(need_gib / (gpu_gib * GPU_HEADROOM) * SHARE_STEPS)
    return min(1.0, max(1, steps) / SHARE_STEPS)


def plan_resources(
    nodes: list[dict],
    gpus_per_trial: float | None,
    cpus_per_trial: float | None,
    max_concurrent: int | None,
    need_gib: float | None = None,
    gpu_gib: float | None = None,
    where: str = "the Ray cluster",
) -> TrialResources:
    """Per-trial resources from the alive nodes (`ray.nodes()` records) and the flags (None: default);
    `where` names the cluster in a refusal.

    Each trial reserves its trainable's CPUs and, beside them on the same node, the CPUs of its own
    Ray Data reads (`TrialResources.bundles`). Defaults: on GPU nodes several trials share each GPU
    (`default_gpu_share` of `need_gib` on a GPU of `gpu_gib`); a quarter of a node's cores go to
    Ray Data, split among the trials its GPUs hold (at least one CPU each), and each trial's
    trainable takes an equal part of the rest. On CPU nodes a trial takes one CPU and one for its
    reads (a shard read takes a whole CPU: `data.pipeline.READ_TASK_CPUS`). More than one GPU per
    trial is refused: a trial trains on one GPU.
    """
    node_gpus = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
    node_cpus = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    total_gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
    if gpus_per_trial is not None and gpus_per_trial > 1:
        raise UserError(
            f"--gpus-per-trial {gpus_per_trial:g}: a trial trains on one GPU (no data parallelism), "
            "so the others would idle: ask for 1, or a fraction to share a GPU"
        )
    if gpus_per_trial is not None:
        gpus = gpus_per_trial
    else:
        gpus = default_gpu_share(need_gib or 0.0, gpu_gib) if node_gpus else 0.0
    if gpus > node_gpus:
        raise UserError(
            f"--gpus-per-trial {gpus:g} is more than any node has ({node_gpus:g} GPUs): "
            "ask for at most that, or a fraction to share a GPU"
        )
    per_node = max(1, int(node_gpus / gpus + 1e-9)) if gpus else 1  # trials one GPU node holds
    # Each trial's reads: its part of the quarter of the node's cores; one read at a time on a CPU node.
    data_cpus = float(max(1, int(node_cpus) // DATA_CPU_PART // per_node)) if gpus else 1.0
    if cpus_per_trial:
        cpus = cpus_per_trial
    elif gpus:
        cpus = float(max(1, int(node_cpus - per_node * data_cpus) // per_node))
    else:
        cpus = 1.0
    if cpus + data_cpus > node_cpus:
        trial = f"--cpus-per-trial {cpus:g}" if cpus_per_trial else f"a trial's {cpus:g} CPU(s)"
        lower = f", or ask for at most --cpus-per-trial {node_cpus - data_cpus:g}" if node_cpus - data_cpus >= 1 else ""
        raise UserError(
            f"{where} has no CPU free for Ray Data beside a trial: {trial} and the {data_cpus:g} CPU each trial "
            f"reserves for its Ray Data reads do not fit on the largest node ({node_cpus:g} CPUs): add a node "
            f"with at least {math.ceil(cpus + data_cpus)} CPUs (ray start --num-cpus){lower}"
        )
    # Both bundles sit on one node (STRICT_PACK): a node holds as many trials as (trainable + reads) fit.
    # After a node is lost, a retried trial waits for a node with room for both, never takes another's reads.
    by_cpu = max(1, sum(int(n["Resources"].get("CPU", 0) // (cpus + data_cpus)) for n in nodes))
    by_gpu = int(total_gpus / gpus + 1e-9) if gpus else by_cpu
    return TrialResources(cpus, gpus, max_concurrent or max(1, min(by_cpu, by_gpu)), data_cpus)


def gpu_memory_gib() -> float | None:
    """A GPU node's memory (GiB), from a tiny task on one of its GPUs; None when it cannot tell."""
    import ray

    @ray.remote(num_gpus=0.001, num_cpus=0, max_retries=0)
    def probe() -> float | None:
        import torch

        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_properties(0).total_memory / 2**30

    try:
        return ray.get(probe.remote(), timeout=MEMORY_PROBE_S)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError):
        return None


def resources(
    gpus_per_trial: float | None,
    cpus_per_trial: float | None,
    max_concurrent: int | None,
    arch: str | None = None,
    max_batch: int | None = None,
    address: str | None = None,
) -> TrialResources:
    """(cpus per trial, gpus per trial, max concurrent) from the cluster and the flags (None: default);
    `arch` and `max_batch` (the search space's largest batch) size the default GPU share; `address`:
    the cluster joined (None: a local Ray)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    need = gpu = None
    if gpus_per_trial is None and any(n["Resources"].get("GPU", 0) for n in nodes) and arch:
        need, gpu = trial_memory_gib(arch, max_batch or 1), gpu_memory_gib()
    where = f"the Ray cluster at {address}" if address else "this machine's Ray"
    return plan_resources(nodes, gpus_per_trial, cpus_per_trial, max_concurrent, need, gpu, where)


def check_cluster(storage: str, cache: str, fma_root: str | None, shared_storage: bool) -> None:
    """On a cluster of several nodes, refuse storage only this machine can see.

    A URI --storage-path is reachable from every node; a local folder (and the cache,
    and the FMA root while preparing) only if it sits on a filesystem every node mounts
    at the same path, which --shared-storage declares and this checks: each node looks
    for a file the driver has just written there.
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    local = ([] if is_uri(storage) else [f"--storage-path {storage}"]) + [f"the cache {cache}"]
    if fma_root:
        local.append(f"--fma-root {fma_root}")
    if not shared_storage:
        raise UserError(
            f"this Ray cluster has {len(nodes)} nodes but {', '.join(local)} may exist on this machine "
            "only, and trials or tasks on other nodes must reach them: put them on a filesystem every "
            "node mounts at the same path and add --shared-storage (--storage-path may instead be "
            "a URI such as s3://bucket/path)"
        )
    from mgc_ray.data.cache import MANIFEST

    token = f".mgc-shared-probe-{uuid.uuid4().hex[:12]}"
    writable = [] if is_uri(storage) else [storage]
    if fma_root:  # to be prepared: every node writes shards into it
        os.makedirs(cache, exist_ok=True)
        writable.append(cache)
    probes = [os.path.join(d, token) for d in writable]
    for path in probes:
        Path(path).write_text("mgc_ray: a node checks that it sees this file; deleted at once\n")
    wanted = probes + [
        os.path.join(fma_root, "fma_metadata", "tracks.csv") if fma_root else os.path.join(cache, MANIFEST)
    ]
    try:
        missing = _missing_on_nodes(nodes, wanted)
    finally:
        for path in probes:
            Path(path).unlink(missing_ok=True)
    for node, paths in missing.items():
        if paths:
            shown = os.path.dirname(paths[0]) if os.path.basename(paths[0]) == token else paths[0]
            raise UserError(
                f"--shared-storage: node {node} does not see {shown}: mount the same filesystem at the "
                "same path on every node (or use a URI --storage-path for Tune's files)"
            )
    print(f"mgc_ray: {len(nodes)} nodes see the shared storage", flush=True)


def _missing_on_nodes(nodes: list[dict], paths: list[str]) -> dict[str, list[str]]:
    """{node address: the paths it cannot see}, one zero-CPU task pinned to each node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def missing(wanted: list[str]) -> list[str]:
        return [p for p in wanted if not os.path.exists(p)]

    refs = {
        n["NodeManagerAddress"] + " " + n["NodeID"][:8]: missing.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(paths)
        for n in nodes
    }
    return {node: ray.get(ref, timeout=300) for node, ref in refs.items()}
