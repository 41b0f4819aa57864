#!/usr/bin/env bash
# Install or update conductor on one node, without Ansible. Run as root; run it again after
# changing the configuration: it converges (same input, no change; a new WORKER_CONCURRENCY
# starts or stops only the instances that were added or removed).
#
#   deploy/install.sh [--mode systemd|supervisord] [--config FILE] [--wheelhouse DIR] [--wait SECONDS]
#
#   --mode        systemd (default): conductor-worker@.service instances and conductor-workers.target
#                 in /etc/systemd/system; supervisord: programs in /etc/supervisor/conf.d/conductor.conf
#   --config      the app.properties to install as /etc/conductor/app.properties (0640 root:SERVICE_USER);
#                 default: the one installed there already
#   --wheelhouse  install from these wheels only, with no package index (`make wheelhouse` builds them);
#                 without it, a wheelhouse is built from this checkout first, which needs a package index
#   --wait        seconds to wait for every worker to run and register in Redis (default 60; 0: do not check)
#
# This script installs the package (a virtual environment at INSTALL_PREFIX, default /opt/conductor);
# everything else is `conductor apply` (user, directories, configuration, units or programs, which
# instances start, stop or restart; running workers finish their current job first) and
# `conductor verify`. conductor runs with an empty environment: the services read nothing but
# /etc/conductor/app.properties, so variables set in this shell must not change what is installed.
set -euo pipefail
umask 022

CONF=/etc/conductor/app.properties
SRC=$(cd "$(dirname "$0")/.." && pwd)
SYSTEM_PYTHON=${PYTHON:-/usr/bin/python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
MODE=systemd CONFIG="" WHEELHOUSE="" WAIT=60

say() { echo "install: $*"; }
die() {
    echo "install: error: $1" >&2
    exit "${2:-1}"
}
usage() { # $1: exit status (0 for --help)
    sed -n '2,/^set -euo/{/^#/!d;s/^# \{0,1\}//;p}' "$0" >&"$((${1:-2} ? 2 : 1))"
    exit "${1:-2}"
}

while (($#)); do
    case $1 in
    --mode | --config | --wheelhouse | --wait) [[ $# -ge 2 ]] || usage; declare "${1#--}=$2"; shift 2 ;;
    --mode=* | --config=* | --wheelhouse=* | --wait=*) arg=${1#--}; declare "${arg%%=*}=${1#*=}"; shift ;;
    -h | --help) usage 0 ;;
    *) echo "install: unknown argument: $1" >&2; usage ;;
    esac
done
MODE=${mode:-$MODE} CONFIG=${config:-$CONFIG} WHEELHOUSE=${wheelhouse:-$WHEELHOUSE} WAIT=${wait:-$WAIT}

case $MODE in systemd | supervisord) ;; *) die "--mode must be systemd or supervisord, not '$MODE'" 2 ;; esac
[[ $WAIT =~ ^[0-9]+$ ]] || die "--wait takes a number of seconds, not '$WAIT'" 2
[[ $(id -u) -eq 0 ]] || die "run as root: this creates a system user, writes /etc and manages services"
CONFIG=${CONFIG:-$CONF}
[[ -f $CONFIG ]] || die "$CONFIG: configuration file not found (pass --config FILE, an app.properties)" 2
CONFIG=$(readlink -f "$CONFIG")
if [[ -n $WHEELHOUSE ]]; then
    [[ -d $WHEELHOUSE ]] || die "--wheelhouse $WHEELHOUSE: no such directory" 2
    WHEELHOUSE=$(readlink -f "$WHEELHOUSE")
    compgen -G "$WHEELHOUSE/conductor-*.whl" >/dev/null || die "$WHEELHOUSE holds no conductor wheel (build one with: make wheelhouse)" 2
fi

# The two settings needed before conductor is installed (conductor's rules: '#' after whitespace
# starts a comment, the last word wins as nowhere else matters); conductor checks them all later.
file_value() {
    awk -v key="$1" '{ sub(/[ \t]#.*$/, ""); sub(/^[ \t]+/, ""); sub(/[ \t\r]+$/, "") }
        /^#/ || !/=/ { next }
        { k = substr($0, 1, index($0, "=") - 1); v = substr($0, index($0, "=") + 1)
          gsub(/[ \t]+$/, "", k); gsub(/^[ \t]+/, "", v); if (toupper(k) == key) found = v }
        END { printf "%s", found }' "$CONFIG"
}
PREFIX=$(file_value INSTALL_PREFIX)
PREFIX=${PREFIX:-/opt/conductor}
[[ $PREFIX == /* ]] || die "$CONFIG: INSTALL_PREFIX must be an absolute path, not '$PREFIX'" 2
EXTRA=""
case $(file_value API_ENABLED | tr '[:upper:]' '[:lower:]') in true | 1 | yes | on | t | y) EXTRA="[api]" ;; esac

# --- the package ----------------------------------------------------------------------------
if [[ -e $PREFIX && ! -f $PREFIX/pyvenv.cfg && -n $(ls -A "$PREFIX") ]]; then
    die "INSTALL_PREFIX=$PREFIX exists and is not a virtual environment; refusing to install into it" 2
fi
if ! "$PREFIX/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    [[ -x $SYSTEM_PYTHON ]] || die "$SYSTEM_PYTHON not found: install python3 and python3-venv (3.11 or later)"
    say "creating the virtual environment $PREFIX ($("$SYSTEM_PYTHON" --version))"
    "$SYSTEM_PYTHON" -m venv --clear "$PREFIX" || die "python3 -m venv failed: is python3-venv installed?"
fi
wheels=$WHEELHOUSE
if [[ -z $wheels ]]; then
    wheels=$(mktemp -d)
    trap 'rm -rf "$wheels"' EXIT
    say "building wheels of this checkout ($SRC) and its dependencies (needs a package index)"
    PYTHON=$PREFIX/bin/python "$SRC/deploy/wheelhouse.sh" "$wheels" >/dev/null
fi
say "installing conductor$EXTRA into $PREFIX (no package index)"
pip=("$PREFIX/bin/python" -m pip install --quiet --no-index --find-links "$wheels")
"${pip[@]}" --upgrade "conductor$EXTRA"
"${pip[@]}" --force-reinstall --no-deps conductor # same version number, maybe other code: the wheel's files

# --- everything else --------------------------------------------------------------------------
conductor() { env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$PREFIX/bin/conductor" "$@"; }
conductor apply --mode "$MODE" --config "$CONFIG"
if ((WAIT > 0)) && ! conductor verify --mode "$MODE" --config "$CONF" --timeout "$WAIT"; then
    die "see: $([[ $MODE == systemd ]] && echo "journalctl -u 'conductor-worker@*' -n 50" ||
        echo "the logs under /var/log/supervisor/") (is Redis at REDIS_URL reachable from this node?)"
fi
