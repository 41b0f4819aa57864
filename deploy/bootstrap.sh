#!/usr/bin/env bash
# Prepare this checkout for `make run` and `make test` on a fresh Debian/Ubuntu machine:
# the Debian packages the node and its tests use (when missing), then a virtual environment
# in .venv with conductor installed in editable mode and its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

# systemd (systemd-analyze), systemd-container and debootstrap: the tests boot real systemd hosts.
PACKAGES=(redis-server redis-tools supervisor python3-venv curl openssl systemd systemd-container debootstrap openssh-client)
missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's package starts a system redis-server and supervisord; conductor's local run and its
# tests start their own, on their own ports, so those are left as they are.

# The system interpreter, so that the unprivileged service user can run the venv too (an
# interpreter under a private home, such as pyenv's in /root, would not be reachable).
PYTHON=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}
if [[ -x .venv/bin/python ]] && ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    rm -rf .venv
fi
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[api,test,bench]'
# Bytecode for the checkout's package, as pip writes it for an installed one: an editable install
# has none, and where PYTHONDONTWRITEBYTECODE is set every worker and command would otherwise
# compile conductor's modules again at each start.
.venv/bin/python -m compileall -q conductor
touch .venv/.installed
