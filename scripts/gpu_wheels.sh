#!/usr/bin/env bash
# Download, here (where PyPI is reachable), the wheels that aelab needs on a lent GPU machine
# that has torch, torchvision and Lightning but no network, for scripts/gpu_check.sh --wheels:
#
#   bash scripts/gpu_wheels.sh wheels       # then, on the GPU machine:
#   bash scripts/gpu_check.sh --data /path/to/data --out "$OUT" --wheels wheels
#
# DIR gets requirements.txt (aelab's dependencies from pyproject.toml minus torch, torchvision
# and lightning) and a wheel for each package of their dependency tree that the GPU machine
# lacks, for its Python (GPU_PYTHON, default 3.12) on x86-64 Linux:
#
#   1. antlr4-python3-runtime 4.9.3, which omegaconf pins, ships only as source: it is built
#      here into a pure-Python wheel;
#   2. pip resolves requirements.txt for the GPU machine's Python and platform (metadata only,
#      `pip install --dry-run --report`);
#   3. every resolved package that the GPU machine's image does not already hold is fetched with
#      `pip download --no-deps --only-binary=:all:`. The image's packages (GPU_HAS below: numpy,
#      scipy, matplotlib, tensorboard, rich, ... from .library/device/KINDS.md) are left out:
#      with them the folder would be about 100 MiB, over the 64 MiB that travels to the machine.
#
# The folder must stay under ~50 MiB (it is checked); /wheels/ is git-ignored. Set GPU_HAS=""
# to fetch the whole tree (for a machine that has only torch and Lightning), then check the size.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

if (($# != 1)) || [[ $1 == -* ]]; then
    usage >&2
    exit 2
fi
DIR=$1
PY="${PYTHON:-python}"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GPU_PYTHON=${GPU_PYTHON:-3.12}
MAX_MIB=${MAX_MIB:-50}
SDIST_ONLY=(antlr4-python3-runtime==4.9.3)
# Packages of aelab's dependency tree that the GPU machine's image already holds (KINDS.md).
GPU_HAS=${GPU_HAS-"absl-py cloudpickle contourpy cycler fonttools grpcio joblib kiwisolver
markdown markdown-it-py markupsafe matplotlib mdurl numpy packaging pillow protobuf pygments
pyparsing python-dateutil pyyaml rich scipy setuptools six tensorboard tensorboard-data-server
tqdm typing-extensions werkzeug"}
TARGET=(
    --only-binary=:all: --implementation cp --python-version "$GPU_PYTHON"
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
)

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

"$PY" - "$REPO/pyproject.toml" >"$DIR/requirements.txt" <<'EOF'
import re
import sys
import tomllib  # Python 3.11 and later

with open(sys.argv[1], "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
for dep in deps:
    name = re.match(r"[A-Za-z0-9._-]+", dep)[0].lower()
    if name not in {"torch", "torchvision", "lightning"}:
        print(dep)
EOF
echo "requirements ($DIR/requirements.txt): $(tr '\n' ' ' <"$DIR/requirements.txt")"

echo "building wheels of source-only packages: ${SDIST_ONLY[*]}"
"$PY" -m pip wheel --quiet --no-deps -w "$DIR" "${SDIST_ONLY[@]}"

echo "resolving for Python $GPU_PYTHON on x86-64 Linux"
"$PY" -m pip install --quiet --dry-run --ignore-installed --report "$TMP/report.json" \
    --target "$TMP/target" --find-links "$DIR" "${TARGET[@]}" -r "$DIR/requirements.txt"

# The packages to fetch (name==version), after the check that no requirement whose marker
# holds only on the GPU machine's Python (pip evaluates markers for this interpreter) is missing.
"$PY" - "$TMP/report.json" "$GPU_PYTHON" "$GPU_HAS" >"$TMP/fetch.txt" <<'EOF'
import json
import re
import sys

from packaging.requirements import Requirement

report, python, has = sys.argv[1], sys.argv[2], sys.argv[3].split()


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


with open(report) as f:
    resolved = {norm(i["metadata"]["name"]): i for i in json.load(f)["install"]}
env = {"python_version": python, "python_full_version": f"{python}.0"}
missing = []
for name, item in resolved.items():
    for extra in ["", *item.get("requested_extras", [])]:
        for line in item["metadata"].get("requires_dist", []):
            req = Requirement(line)
            needed = req.marker is None or req.marker.evaluate({**env, "extra": extra})
            if needed and norm(req.name) not in resolved and norm(req.name) not in has:
                missing.append(f"{req} (required by {name})")
if missing:
    sys.exit("needed on Python " + python + " but not resolved here: " + "; ".join(missing))
skipped = sorted(n for n in resolved if n in {norm(h) for h in has})
print("already on the GPU machine, left out:", " ".join(skipped), file=sys.stderr)
for name, item in sorted(resolved.items()):
    if name not in skipped:
        print(f"{item['metadata']['name']}=={item['metadata']['version']}")
EOF

echo "downloading $(wc -l <"$TMP/fetch.txt") packages into $DIR"
"$PY" -m pip download --quiet --no-deps --find-links "$DIR" -d "$DIR" "${TARGET[@]}" \
    -r "$TMP/fetch.txt"

ls -l "$DIR"
size_kib=$(du -sk "$DIR" | cut -f1)
wheels=("$DIR"/*.whl)
echo "total: $((size_kib / 1024)) MiB ($size_kib KiB) in ${#wheels[@]} wheels"
if ((size_kib > MAX_MIB * 1024)); then
    echo "error: $DIR is over $MAX_MIB MiB; the GPU machine takes 64 MiB with the repository" >&2
    exit 1
fi
