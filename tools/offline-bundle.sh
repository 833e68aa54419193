#!/usr/bin/env bash
# Build one compressed archive of the Python packages an air-gapped GPU node lacks, so mgc_ray runs
# there (docs/cluster.md, "Air-gapped GPU clusters"). Run it where a package index is reachable.
#
#   tools/offline-bundle.sh OUT_DIR [--full] [--ship-pyarrow] [REQUIREMENT ...]
#
# What goes in: the requirements (default: the project's pins below), for CPython 3.12 on manylinux
# x86-64, minus every distribution tools/gpu-node-packages.txt lists (the node's image has it), except:
# - SHIP (with --ship-pyarrow), shipped although the node has it; on PYTHONPATH first, it shadows
#   the node's: pyarrow 25.0.1, for a node whose pyarrow Ray Data or mlflow cannot use (mlflow 3.17.2
#   declares pyarrow < 26). Built against numpy 2's ABI, it runs beside any numpy from 1.16 on. It
#   costs 23 MB of xz: with it the archive is about 64 MB, over the project GPU machine's 64 MiB
#   transfer limit with the working tree beside it, so by default the node's own pyarrow is used
#   (the GPU check's env part reports its version and a numpy round trip through it).
# - KEEP, never shipped, the node's own always; the script stops if the archive would hold one:
#   numpy, because the node's torch, scipy, pandas and scikit-learn were built and resolved against
#   it, and a bundled numpy would shadow it under all of them; numba and llvmlite, because numba pins
#   numpy's range (0.68.1: >= 1.22, < 2.6), so a numba is compatible beside the numpy it was installed
#   with, which is the node's pair (nothing here needs a newer numba: librosa 0.11 asks >= 0.51), and
#   llvmlite's one library is 172 MB (about 40 MB in xz), more than the archive's size limit leaves;
#   the torch stack, which must match the node's CUDA.
# Left out, to keep the archive under 60 MB (a 64 MiB transfer limit on the project's GPU machine):
# Ray's Java jars (33 MB), RLlib, DROP (what ray[default] brings for features mgc_ray never uses:
# virtualenv and its distlib and python-discovery for pip runtime environments, 4.2 MB of xz; py-spy
# for the dashboard's stack traces, 1.9 MB), test suites, C/C++ headers and Cython sources, pyarrow's
# Flight and Substrait libraries (unused), and, unless --full, the web UIs of MLflow and of the Ray
# dashboard (their servers still run; their pages do not). Measured on 2026-12-03: 71.3 MB with
# pyarrow shipped and DROP kept; 45.1 MB without (pyarrow, DROP and RLlib out).
#
# On the node, from the project root:
#   mkdir -p /tmp/site && tar -xJf OUT_DIR/site.tar.xz -C /tmp/site
#   export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
#   python -c "import numba, pyarrow, librosa, ray.data, mlflow"    # the GPU check's env part checks more
set -euo pipefail
out=${1:?usage: tools/offline-bundle.sh OUT_DIR [--full] [REQUIREMENT ...]}
shift
full=0
ship=""
while [ $# -gt 0 ]; do
    case "$1" in
        --full) full=1; shift ;;
        --ship-pyarrow) ship="pyarrow"; shift ;;
        *) break ;;
    esac
done
here=$(cd "$(dirname "$0")" && pwd)
reqs=("$@")
[ ${#reqs[@]} -gt 0 ] || reqs=("ray[tune,data,default]==2.60.0" "optuna==5.0.0" "mlflow==3.17.2"
                               "librosa==0.11.0" "soundfile==0.14.0" "pyarrow==25.0.1")
keep="numpy numba llvmlite torch torchvision torchaudio"
drop="virtualenv distlib python-discovery py-spy"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64)
target=(--python-version 3.12 --implementation cp --only-binary=:all: "${platforms[@]}")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out" "$work/all" "$work/keep" "$work/site"
python3 -m pip download -q "${target[@]}" -d "$work/all" "${reqs[@]}"

# Keep the wheels whose distribution the node lacks, and SHIP's; never KEEP's or DROP's.
python3 - "$work/all" "$work/keep" "$here/gpu-node-packages.txt" "$ship" "$keep" "$drop" <<'EOF'
import re, shutil, sys
from pathlib import Path
src, dst, listing = map(Path, sys.argv[1:4])
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
ship, keep, drop = (set(map(norm, a.split())) for a in sys.argv[4:7])
present = {norm(l.strip()) for l in listing.read_text().splitlines() if l.strip() and not l.startswith("#")}
missing = sorted(keep - present)
if missing:
    sys.exit(f"{listing} does not list {', '.join(missing)}: the node must have its own (see KEEP above)")
for wheel in sorted(src.glob("*.whl")):
    name = norm(wheel.name.split("-")[0])
    if name in keep:
        print(f"  = {wheel.name} (the node's own is used)")
    elif name in drop:
        print(f"  - {wheel.name} (unused by mgc_ray)")
    elif name not in present or name in ship:
        shutil.copy(wheel, dst)
        print(f"  + {wheel.name}" + (" (shadows the node's)" if name in present else ""))
EOF

python3 -m pip install -q --no-deps --no-compile --target "$work/site" "${target[@]}" "$work"/keep/*.whl
site=$work/site
rm -rf "$site/ray/jars" "$site/ray/rllib"
find "$site" -mindepth 2 -depth -type d \( -name tests -o -name __pycache__ \) -prune -exec rm -rf {} +
find "$site" -type f \( -name "*.pyx" -o -name "*.pxd" -o -name "*.pxi" \) -delete
rm -rf "$site/pyarrow/include" "$site/pyarrow/src" "$site"/pyarrow/libarrow_flight.so* \
       "$site"/pyarrow/libarrow_python_flight.so* "$site"/pyarrow/_flight*.so \
       "$site"/pyarrow/libarrow_substrait.so* "$site"/pyarrow/_substrait*.so
if [ "$full" = 0 ]; then   # an empty page where each UI was: Ray's dashboard refuses to start without its folder
    for ui in "$site/mlflow/server/js/build" "$site/ray/dashboard/client/build"; do
        rm -rf "$ui" && mkdir -p "$ui/static"
        echo "<p>This page was left out of the offline bundle: tools/offline-bundle.sh --full keeps it.</p>" \
            > "$ui/index.html"
    done
fi
for k in $keep; do   # nothing may shadow the node's own
    if [ -e "$site/$k" ]; then echo "error: the archive would shadow the node's $k" >&2; exit 1; fi
done
tar -C "$site" -cf - . | xz -9 -T0 > "$out/site.tar.xz"
ls -l "$out/site.tar.xz"
