#!/usr/bin/env bash
# Build a wheelhouse: wheels of conductor (with its API extra) and of every dependency, so that
# nodes without a package index can install with `deploy/install.sh --wheelhouse DIR`
# (pip install --no-index --find-links DIR). `make wheelhouse` runs it.
#
#   deploy/wheelhouse.sh [DIR]      DIR defaults to ./wheelhouse
#
# The wheels fit nodes with the same Python version and platform as the interpreter that builds
# them ($PYTHON, default: the checkout's .venv, else python3); the script prints which that is.
# The project is built from a clean copy of its files, so the checkout itself is left untouched.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-wheelhouse}
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=$(command -v python3); fi
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

# The files of the project only (no .venv, build/ or egg-info of a development install).
SOURCE=$SCRATCH/conductor
mkdir -p "$SOURCE"
tar -C "$ROOT" --exclude=.venv --exclude=.git --exclude=build --exclude=dist --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis --exclude=wheelhouse --exclude=run \
    -cf - pyproject.toml README.md conductor templates | tar -C "$SOURCE" -xf -

# Drop an older conductor wheel first: pip would keep whichever it finds, not the fresh one.
rm -f "$OUT"/conductor-*.whl
"$PYTHON" -m pip wheel --quiet --wheel-dir "$OUT" "${SOURCE}[api]"

tag=$("$PYTHON" -c 'import sys, sysconfig; print(f"CPython {sys.version.split()[0]} on {sysconfig.get_platform()}")')
count=$(find "$OUT" -maxdepth 1 -name '*.whl' | wc -l)
echo "wheelhouse: $count wheels in $OUT (for $tag)"
echo "install on a node with: deploy/install.sh --wheelhouse $OUT --config app.properties"
