#!/usr/bin/env bash
# Build a wheelhouse: wheels of conductor (with its API extra) and of every dependency, so that
# nodes without a package index can install with `deploy/install.sh --wheelhouse DIR`
# (pip install --no-index --find-links DIR). `make wheelhouse` runs it.
#
#   deploy/wheelhouse.sh [DIR]      DIR defaults to ./wheelhouse
#   deploy/wheelhouse.sh --check    only check the Python that would build them; print its path and version
#
# The wheels fit nodes with the same Python version and platform as the interpreter that builds
# them ($PYTHON, default: the checkout's .venv, else python3); the script prints which that is.
# That Python needs pip and the version pyproject.toml requires, nothing else: the Ansible role
# runs --check first, so a controller that lacks it fails at once, saying what to install.
# The project is built from a clean copy of its files, so the checkout itself is left untouched.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-wheelhouse}
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=$(command -v python3 || echo python3); fi
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

required=$(sed -n 's/^requires-python *= *">=\([0-9.]*\)".*/\1/p' "$ROOT/pyproject.toml")
problem=
if ! version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); then
    problem="does not run"
elif ! "$PYTHON" -c "import sys; sys.exit(sys.version_info[:2] < tuple(map(int, '${required:-3}'.split('.'))))"; then
    problem="is Python $version; conductor needs $required or later"
elif ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    problem="has no pip (Debian: apt-get install python3-pip)"
fi
if [[ -n $problem ]]; then
    cat >&2 <<EOF
wheelhouse: cannot build wheels with $PYTHON: it $problem.
Set PYTHON (with Ansible: conductor_wheelhouse_python) to a Python $required or later with pip, of the
same minor version as the nodes' Python (deploy/bootstrap.sh makes the checkout's .venv, the default),
or build the wheelhouse elsewhere and use it as it is (conductor_wheelhouse_build=false conductor_wheelhouse=DIR).
EOF
    exit 2
fi
if [[ $OUT == --check ]]; then
    echo "$PYTHON"
    echo "$version"
    exit 0
fi

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
