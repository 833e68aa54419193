"""What the cache's self-check costs: SHA-256 (and the alternatives) over shard-sized files,
and `cache.verify_shards` over a real prepared cache, against one training epoch.

    python -m benchmarks.integrity [--mib 1024] [--cache CACHE]

Writes results/benchmarks/integrity_cpu.json and .md. The files are hashed from the page
cache (just written), so the figures are the hashing cost itself; a cold read is bounded by
the disk's own speed, which training reads at too. The machine is shared: the 1-min load
average at start and end is recorded beside the figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "benchmarks"
SHARD_BYTES = 85 * 10**6  # a 64-track shard at FMA size (config.TRACKS_PER_SHARD)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _hash_file(name: str):
    def run(path: str) -> None:
        h = hashlib.new(name)
        with open(path, "rb") as f:
            while chunk := f.read(8 * 2**20):
                h.update(chunk)

    return run


def _crc32(path: str) -> None:
    c = 0
    with open(path, "rb") as f:
        while chunk := f.read(8 * 2**20):
            c = zlib.crc32(chunk, c)


def main(argv=None) -> int:
    import argparse

    from mgc_ray.data.cache import read_manifest, verify_shards
    from mgc_ray.files import file_sha256

    p = argparse.ArgumentParser(prog="python -m benchmarks.integrity", description=__doc__.split("\n")[0])
    p.add_argument("--mib", type=int, default=1024, help="bytes of shard-sized files to hash (MiB)")
    p.add_argument("--cache", help="a prepared cache to time verify_shards on")
    args = p.parse_args(argv)
    out: dict = {
        "name": "integrity",
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(), "load_start": _load()},
    }
    with tempfile.TemporaryDirectory() as d:
        n = max(1, args.mib * 2**20 // SHARD_BYTES)
        paths = []
        for i in range(n):
            paths.append(os.path.join(d, f"s{i}.bin"))
            with open(paths[-1], "wb") as f:
                f.write(os.urandom(SHARD_BYTES))
        size = n * SHARD_BYTES
        algos = {
            "sha256": _hash_file("sha256"),
            "blake2b": _hash_file("blake2b"),
            "md5": _hash_file("md5"),
            "crc32 (not a hash: misses crafted changes)": _crc32,
        }
        rates = {}
        for name, fn in algos.items():
            start = time.perf_counter()
            for path in paths:
                fn(path)
            rates[name] = round(size / (time.perf_counter() - start) / 1e6)
        out["one_thread_mb_per_s"] = rates
        # verify_shards' way: threads over shards
        from concurrent.futures import ThreadPoolExecutor

        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(file_sha256, paths))
        out["threads_sha256_mb_per_s"] = round(size / (time.perf_counter() - start) / 1e6)
        out["bytes_hashed"] = size
    if args.cache:
        m = read_manifest(args.cache)
        nbytes, _, seconds = verify_shards(m)
        out["verify_shards"] = {
            "cache": args.cache,
            "bytes": nbytes,
            "seconds": round(seconds, 3),
            "mb_per_s": round(nbytes / seconds / 1e6),
        }
    scale = RESULTS / "scale_cpu.json"
    if scale.is_file():
        s = json.loads(scale.read_text())
        cache_bytes, epoch_s = s["prepare"]["cache_bytes"], s["epoch"]["seconds"]
        check_s = cache_bytes / (out["threads_sha256_mb_per_s"] * 1e6)
        out["against_an_epoch"] = {
            "cache_bytes": cache_bytes,
            "epoch_seconds": round(epoch_s),
            "check_seconds": round(check_s, 1),
            "share": round(check_s / epoch_s, 4),
        }
    out["machine"]["load_end"] = _load()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "integrity_cpu.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [
        "# Cache self-check: what hashing the shards costs",
        "",
        f"Machine: {out['machine']['cpu']}, {out['machine']['cores']} cores, shared with other jobs "
        f"(1-min load {out['machine']['load_start']} at start, {out['machine']['load_end']} at end: above the "
        "core count the figures are lower bounds on throughput). Files hashed from the page cache "
        f"({size / 1e6:.0f} MB in {SHARD_BYTES / 1e6:.0f} MB shard-sized files).",
        "",
        "| hash | MB/s (one thread) |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v} |" for k, v in rates.items()]
    lines += [
        "",
        f"SHA-256 with threads over shards (as `cache.verify_shards`): {out['threads_sha256_mb_per_s']} MB/s.",
    ]
    if "verify_shards" in out:
        v = out["verify_shards"]
        lines.append(f"`verify_shards` on {v['cache']}: {v['bytes'] / 1e6:.1f} MB in {v['seconds']} s.")
    if "against_an_epoch" in out:
        a = out["against_an_epoch"]
        lines.append(
            f"Against the scale benchmark (scale_cpu.json): its {a['cache_bytes'] / 1e9:.1f} GB cache checks "
            f"in ~{a['check_seconds']} s at that rate, {100 * a['share']:.2f} % of its one "
            f"{a['epoch_seconds']} s DenseNet CPU epoch, once per search (not per epoch)."
        )
    (RESULTS / "integrity_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
