#!/usr/bin/env bash
# Install or update conductor on one node, without Ansible. Run as root; run it again after
# changing the configuration: it converges (same input, no change; a new WORKER_CONCURRENCY
# starts or stops only the instances that were added or removed).
#
#   deploy/install.sh [--mode systemd|supervisord] [--config FILE] [--wheelhouse DIR]
#                     [--no-block] [--wait SECONDS]
#
#   --mode        systemd (default): conductor-worker@.service instances and conductor-workers.target
#                 in /etc/systemd/system; supervisord: programs in /etc/supervisor/conf.d/conductor.conf
#   --config      the app.properties to install as /etc/conductor/app.properties (0640 root:SERVICE_USER);
#                 default: the one installed there already
#   --wheelhouse  install from these wheels only, with no package index (`make wheelhouse` builds them);
#                 without it, a wheelhouse is built from this checkout first, which needs a package index
#   --no-block    (systemd) do not wait for stopping or restarting workers to finish their current jobs
#   --wait        seconds to wait for every worker to register in Redis (default 60; 0: do not check)
#
# What it does: a virtual environment at INSTALL_PREFIX (default /opt/conductor) with conductor in
# it; the system user SERVICE_USER and JOB_ROOT (plus LOG_FILE's directory) owned by it; the
# configuration; the rendered service files; then, for systemd: daemon-reload, stop and disable
# surplus instances above WORKER_CONCURRENCY, restart running workers only when their unit, their
# configuration (other than WORKER_CONCURRENCY) or the installed code changed, enable and start
# conductor-workers.target (and conductor-api.service when API_ENABLED). Running workers are only
# ever stopped warmly: each finishes its current job first (up to WORKER_STOP_TIMEOUT).
#
# The services read nothing but /etc/conductor/app.properties; so that what is installed is what
# they see, conductor runs here with an empty environment (variables such as JOB_ROOT set in this
# shell are ignored).
set -euo pipefail
umask 022

ETC_DIR=/etc/conductor
CONF=$ETC_DIR/app.properties
# What the running services were last (re)started with: hashes only, no secrets.
APPLIED=$ETC_DIR/.installed
UNIT_DIR=/etc/systemd/system
SUPERVISOR_DIR=/etc/supervisor/conf.d
SRC=$(cd "$(dirname "$0")/.." && pwd)
SYSTEM_PYTHON=${PYTHON:-/usr/bin/python3}
CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

MODE=systemd
CONFIG=""
WHEELHOUSE=""
NO_BLOCK=()
WAIT=60

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
    --mode) MODE=${2:-}; shift 2 || usage ;;
    --mode=*) MODE=${1#*=}; shift ;;
    --config) CONFIG=${2:-}; shift 2 || usage ;;
    --config=*) CONFIG=${1#*=}; shift ;;
    --wheelhouse) WHEELHOUSE=${2:-}; shift 2 || usage ;;
    --wheelhouse=*) WHEELHOUSE=${1#*=}; shift ;;
    --no-block) NO_BLOCK=(--no-block); shift ;;
    --wait) WAIT=${2:-}; shift 2 || usage ;;
    --wait=*) WAIT=${1#*=}; shift ;;
    -h | --help) usage 0 ;;
    *) echo "install: unknown argument: $1" >&2; usage ;;
    esac
done

case $MODE in systemd | supervisord) ;; *) die "--mode must be systemd or supervisord, not '$MODE'" 2 ;; esac
[[ $WAIT =~ ^[0-9]+$ ]] || die "--wait takes a number of seconds, not '$WAIT'" 2
[[ $(id -u) -eq 0 ]] || die "run as root: this creates a system user, writes /etc and manages services"
if [[ -z $CONFIG ]]; then
    [[ -f $CONF ]] || die "no configuration installed yet: pass --config FILE (an app.properties)" 2
    CONFIG=$CONF
fi
[[ -f $CONFIG ]] || die "$CONFIG: configuration file not found" 2
CONFIG=$(readlink -f "$CONFIG")
if [[ -n $WHEELHOUSE ]]; then
    [[ -d $WHEELHOUSE ]] || die "--wheelhouse $WHEELHOUSE: no such directory" 2
    WHEELHOUSE=$(readlink -f "$WHEELHOUSE")
    compgen -G "$WHEELHOUSE/conductor-*.whl" >/dev/null || die "$WHEELHOUSE holds no conductor wheel (build one with: make wheelhouse)" 2
fi
if [[ $MODE == systemd && ! -d /run/systemd/system ]]; then
    die "systemd is not running on this machine (PID 1 is $(cat /proc/1/comm)): use --mode supervisord" 2
fi

# The value app.properties gives KEY, by conductor's rules ('#' after whitespace starts a comment).
# Needed for the two settings that matter before conductor itself is installed.
file_value() {
    awk -v key="$1" '
        { sub(/[ \t]#.*$/, ""); sub(/^[ \t]+/, ""); sub(/[ \t\r]+$/, "") }
        /^#/ || !/=/ { next }
        { k = substr($0, 1, index($0, "=") - 1); v = substr($0, index($0, "=") + 1)
          gsub(/[ \t]+$/, "", k); gsub(/^[ \t]+/, "", v)
          if (toupper(k) == key) found = v }
        END { printf "%s", found }' "$CONFIG"
}
# A hash of the configuration as the workers see it, minus WORKER_CONCURRENCY (which they need
# no restart for): part of what decides whether running workers must restart.
config_hash() {
    awk '{ sub(/[ \t]#.*$/, ""); sub(/^[ \t]+/, ""); sub(/[ \t\r]+$/, "") }
         /^#/ || !/=/ { next }
         { k = substr($0, 1, index($0, "=") - 1); v = substr($0, index($0, "=") + 1)
           gsub(/[ \t]+$/, "", k); gsub(/^[ \t]+/, "", v)
           if (toupper(k) != "WORKER_CONCURRENCY") print toupper(k) "=" v }' "$1" | LC_ALL=C sort | sha256sum | cut -d' ' -f1
}
applied() { sed -n "s/^$1 //p" "$APPLIED" 2>/dev/null || true; }
file_hash() { if [[ -f $1 ]]; then sha256sum <"$1" | cut -d' ' -f1; fi; }

PREFIX=$(file_value INSTALL_PREFIX)
PREFIX=${PREFIX:-/opt/conductor}
[[ $PREFIX == /* ]] || die "$CONFIG: INSTALL_PREFIX must be an absolute path, not '$PREFIX'" 2
EXTRA=""
case $(file_value API_ENABLED | tr '[:upper:]' '[:lower:]') in true | 1 | yes | on | t | y) EXTRA="[api]" ;; esac

installed_record() {
    local record
    for record in "$PREFIX"/lib/python3*/site-packages/conductor-*.dist-info/RECORD; do
        [[ -f $record ]] && sha256sum <"$record" | cut -d' ' -f1
    done
    return 0
}

# --- the package ----------------------------------------------------------------------------
install_package() {
    if [[ -e $PREFIX && ! -f $PREFIX/pyvenv.cfg && -n $(ls -A "$PREFIX") ]]; then
        die "INSTALL_PREFIX=$PREFIX exists and is not a virtual environment; refusing to install into it" 2
    fi
    if ! "$PREFIX/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        [[ -x $SYSTEM_PYTHON ]] || die "$SYSTEM_PYTHON not found: install python3 and python3-venv (3.11 or later)"
        say "creating the virtual environment $PREFIX ($("$SYSTEM_PYTHON" --version))"
        "$SYSTEM_PYTHON" -m venv --clear "$PREFIX" || die "python3 -m venv failed: is python3-venv installed?"
    fi
    local wheels=$WHEELHOUSE scratch=""
    if [[ -z $wheels ]]; then
        scratch=$(mktemp -d)
        wheels=$scratch
        say "building wheels of this checkout ($SRC) and its dependencies (needs a package index)"
        PYTHON=$PREFIX/bin/python "$SRC/deploy/wheelhouse.sh" "$wheels" >/dev/null
    fi
    local had_it
    had_it=$(installed_record)
    say "installing conductor$EXTRA into $PREFIX from $([[ -n $WHEELHOUSE ]] && echo "$WHEELHOUSE" || echo 'fresh wheels') (no package index)"
    "$PREFIX/bin/python" -m pip install --quiet --no-index --find-links "$wheels" --upgrade "conductor$EXTRA"
    if [[ -n $had_it ]]; then  # same version number, maybe other code: take the wheel's files
        "$PREFIX/bin/python" -m pip install --quiet --no-index --find-links "$wheels" --force-reinstall --no-deps conductor
    fi
    [[ -z $scratch ]] || rm -rf "$scratch"
}

install_package
CODE=$(installed_record)
CODE_CHANGED=no
[[ $CODE == "$(applied code)" ]] || CODE_CHANGED=yes

CONDUCTOR=$PREFIX/bin/conductor
conductor() { env -i PATH="$CLEAN_PATH" LANG=C.UTF-8 "$CONDUCTOR" "$@"; }

# --- the configuration ----------------------------------------------------------------------
if ! EFFECTIVE=$(conductor check --config "$CONFIG"); then
    die "$CONFIG is not a valid configuration (see above); nothing was changed" 2
fi
setting() { sed -n "s/^$1=//p" <<<"$EFFECTIVE"; }
SERVICE_USER=$(setting SERVICE_USER)
JOB_ROOT=$(setting JOB_ROOT)
LOG_FILE=$(setting LOG_FILE)
NODE_NAME=$(setting NODE_NAME)
CONCURRENCY=$(setting WORKER_CONCURRENCY)
API_ENABLED=$(setting API_ENABLED)
[[ $SERVICE_USER != root ]] || die "$CONFIG: SERVICE_USER=root: services, and so jobs, never run as root" 2

# Directories a misconfiguration must never hand over to the service user.
is_system_dir() {
    case ${1%/} in
    "" | /bin | /boot | /dev | /etc | /home | /lib | /lib64 | /opt | /proc | /root | /run | /sbin | /srv | /sys | /tmp | /usr | /usr/* | /var | /var/lib | /var/log | /var/cache | /var/tmp) return 0 ;;
    esac
    return 1
}

CONFIG_HASH=$(config_hash "$CONFIG")
CONFIG_CHANGED=no
[[ $CONFIG_HASH == "$(applied config)" ]] || CONFIG_CHANGED=yes

record_applied() { # $1: the file whose change restarts workers (the worker unit, or conductor.conf)
    printf 'mode %s\nconfig %s\ncode %s\nunit %s\n' "$MODE" "$CONFIG_HASH" "$CODE" "$(file_hash "$1")" >"$APPLIED.new"
    chmod 0600 "$APPLIED.new"
    mv -f "$APPLIED.new" "$APPLIED"
}

prepare_node() {
    if ! getent group "$SERVICE_USER" >/dev/null; then
        say "creating the system group $SERVICE_USER"
        groupadd --system "$SERVICE_USER"
    fi
    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        say "creating the system user $SERVICE_USER (no login, no home of its own)"
        useradd --system --gid "$SERVICE_USER" --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "conductor workers" "$SERVICE_USER"
    fi
    is_system_dir "$JOB_ROOT" && die "JOB_ROOT=$JOB_ROOT is a system directory; choose one of its own (e.g. /var/lib/conductor/jobs)" 2
    install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$JOB_ROOT"
    if [[ -n $LOG_FILE ]]; then
        local logs
        logs=$(dirname "$LOG_FILE")
        if [[ ! -d $logs ]]; then
            install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$logs"
        elif ! runuser -u "$SERVICE_USER" -- test -w "$logs"; then
            die "LOG_FILE=$LOG_FILE: $SERVICE_USER cannot write in $logs; use a directory of its own (e.g. /var/log/conductor/)" 2
        fi
    fi
    install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC_DIR"
    if [[ $CONFIG != "$CONF" ]]; then
        install -m 0640 -o root -g "$SERVICE_USER" "$CONFIG" "$CONF.new"
        mv -f "$CONF.new" "$CONF"
        say "installed $CONFIG as $CONF (0640 root:$SERVICE_USER)"
    else
        chown root:"$SERVICE_USER" "$CONF"
        chmod 0640 "$CONF"
    fi
}
prepare_node

# --- waiting for registration ----------------------------------------------------------------
# Every worker 1..N is registered in Redis by the very process the supervisor runs (pid match),
# so a stale record of a killed predecessor does not count.
registered_pids() {
    conductor workers --json --config "$CONF" | "$PREFIX/bin/python" -c '
import json, sys
node, n = sys.argv[1], int(sys.argv[2])
for w in json.load(sys.stdin):
    if w["node"] == node and w["index"] <= n:
        print(w["index"], w["pid"])' "$NODE_NAME" "$CONCURRENCY"
}
wait_registered() { # $1: a command printing "index pid" for each running worker
    ((WAIT > 0)) || return 0
    local deadline=$((SECONDS + WAIT)) expected actual errors
    errors=$(mktemp)
    while :; do
        expected=$("$1" | LC_ALL=C sort)
        actual=$(registered_pids 2>"$errors" | LC_ALL=C sort || true)
        if [[ $(wc -l <<<"$expected") -eq $CONCURRENCY && -n $expected && $expected == "$actual" ]]; then
            say "all $CONCURRENCY workers of node $NODE_NAME are registered"
            rm -f "$errors"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            echo "install: error: after ${WAIT}s, not every worker of $NODE_NAME is registered in Redis" >&2
            echo "  running (index pid): $(tr '\n' ' ' <<<"$expected")" >&2
            echo "  registered:          $(tr '\n' ' ' <<<"$actual")" >&2
            sed 's/^/  /' "$errors" >&2
            rm -f "$errors"
            return 1
        fi
        sleep 0.5
    done
}

# --- systemd ---------------------------------------------------------------------------------
systemd_main_pids() {
    local i pid
    for ((i = 1; i <= CONCURRENCY; i++)); do
        pid=$(systemctl show -p MainPID --value "conductor-worker@$i.service")
        [[ $pid == 0 ]] || echo "$i $pid"
    done
}

remove_supervisord_programs() {
    [[ -f $SUPERVISOR_DIR/conductor.conf ]] || return 0
    say "removing the supervisord programs of an earlier --mode supervisord install"
    rm -f "$SUPERVISOR_DIR/conductor.conf"
    if command -v supervisorctl >/dev/null && supervisorctl pid >/dev/null 2>&1; then
        supervisorctl reread >/dev/null
        supervisorctl update
    fi
}

install_systemd() {
    remove_supervisord_programs
    local rendered line worker_unit_changed=no api_unit_changed=no
    rendered=$(conductor render systemd --config "$CONF" --out "$UNIT_DIR")
    while IFS= read -r line; do say "$line"; done <<<"$rendered"
    [[ $(applied mode) == systemd && $(file_hash "$UNIT_DIR/conductor-worker@.service") == "$(applied unit)" ]] ||
        worker_unit_changed=yes
    grep -q '^wrote .*/conductor-api\.service$' <<<"$rendered" && api_unit_changed=yes
    if [[ $API_ENABLED != true && -f $UNIT_DIR/conductor-api.service ]]; then
        say "API_ENABLED=false: stopping and removing conductor-api.service"
        systemctl disable --now --quiet conductor-api.service || true
        rm -f "$UNIT_DIR/conductor-api.service"
    fi
    systemctl daemon-reload

    # Instances above WORKER_CONCURRENCY: loaded ones (running or not) and enabled ones.
    local unit index surplus=()
    while read -r unit; do
        index=${unit#conductor-worker@}
        index=${index%.service}
        if [[ $index =~ ^[0-9]+$ ]] && ((index > CONCURRENCY)); then surplus+=("$unit"); fi
    done < <({
        systemctl list-units --all --plain --no-legend 'conductor-worker@*.service' | awk '{print $1}'
        find "$UNIT_DIR" -path '*.wants/conductor-worker@*.service' -printf '%f\n'
    } | sort -u)
    if ((${#surplus[@]})); then
        say "WORKER_CONCURRENCY=$CONCURRENCY: stopping and disabling ${surplus[*]} (each finishes its current job first)"
        systemctl disable --quiet "${surplus[@]}"
        systemctl stop "${NO_BLOCK[@]}" "${surplus[@]}"
    fi

    local workers=()
    for ((index = 1; index <= CONCURRENCY; index++)); do workers+=("conductor-worker@$index.service"); done
    local running=()
    for unit in "${workers[@]}"; do
        if systemctl is-active --quiet "$unit"; then running+=("$unit"); fi
    done
    if ((${#running[@]})) && [[ $worker_unit_changed == yes || $CONFIG_CHANGED == yes || $CODE_CHANGED == yes ]]; then
        say "unit, configuration or code changed: restarting ${running[*]} (each finishes its current job first)"
        systemctl restart "${NO_BLOCK[@]}" "${running[@]}"
    fi
    systemctl reset-failed 'conductor-worker@*.service' 2>/dev/null || true
    systemctl enable --quiet conductor-workers.target
    # Starting the target (and each instance) starts what is not running and leaves the rest alone.
    systemctl start conductor-workers.target "${workers[@]}"

    if [[ $API_ENABLED == true ]]; then
        systemctl enable --quiet conductor-api.service
        if [[ $api_unit_changed == yes || $CONFIG_CHANGED == yes || $CODE_CHANGED == yes ]]; then
            systemctl restart conductor-api.service
        else
            systemctl start conductor-api.service
        fi
    fi

    record_applied "$UNIT_DIR/conductor-worker@.service"
    if ! wait_registered systemd_main_pids; then
        systemctl --no-pager --lines=5 status 'conductor-worker@*.service' >&2 || true
        die "see: journalctl -u 'conductor-worker@*' -n 50 (is Redis at REDIS_URL reachable from this node?)"
    fi
    systemctl --no-pager list-units 'conductor-*'
}

# --- supervisord -----------------------------------------------------------------------------
supervisord_pids() {
    supervisorctl status 2>/dev/null | awk '$1 ~ /^conductor-worker-[0-9]+$/ && $2 == "RUNNING" && $3 == "pid" {
        sub(/^conductor-worker-/, "", $1); sub(/,$/, "", $4); print $1, $4 }' |
        awk -v n="$CONCURRENCY" '$1 <= n'
}

remove_systemd_units() {
    [[ -f $UNIT_DIR/conductor-worker@.service || -f $UNIT_DIR/conductor-workers.target ]] || return 0
    say "removing the systemd units of an earlier --mode systemd install (workers finish their jobs first)"
    if [[ -d /run/systemd/system ]]; then
        systemctl disable --quiet conductor-workers.target conductor-api.service 2>/dev/null || true
        find "$UNIT_DIR" -path '*.wants/conductor-worker@*.service' -delete
        rmdir --ignore-fail-on-non-empty "$UNIT_DIR/conductor-workers.target.wants" 2>/dev/null || true
        systemctl stop conductor-workers.target 'conductor-worker@*.service' conductor-api.service 2>/dev/null || true
    fi
    rm -f "$UNIT_DIR/conductor-worker@.service" "$UNIT_DIR/conductor-workers.target" "$UNIT_DIR/conductor-api.service"
    [[ ! -d /run/systemd/system ]] || systemctl daemon-reload
}

install_supervisord() {
    command -v supervisorctl >/dev/null || die "--mode supervisord needs supervisor (Debian: apt-get install supervisor)"
    [[ -d $SUPERVISOR_DIR ]] || die "$SUPERVISOR_DIR does not exist: is supervisor installed as a system service?"
    remove_systemd_units
    if ! supervisorctl pid >/dev/null 2>&1; then
        if [[ -d /run/systemd/system ]]; then
            say "starting supervisord (supervisor.service)"
            systemctl enable --now --quiet supervisor.service
            local deadline=$((SECONDS + 30))
            until supervisorctl pid >/dev/null 2>&1; do
                ((SECONDS < deadline)) || die "supervisord did not answer after 30 s: journalctl -u supervisor"
                sleep 0.2
            done
        else
            die "supervisord is not running: start it first (e.g. service supervisor start)"
        fi
    fi
    # Job containment: a cgroup subtree per worker, owned by SERVICE_USER (systemd mode delegates instead).
    conductor prepare-cgroups --config "$CONF" ||
        say "jobs will run without containment (see above); JOB_CONTAINMENT=required workers will not start"
    local rendered line
    rendered=$(conductor render supervisord --config "$CONF" --out "$SUPERVISOR_DIR")
    while IFS= read -r line; do say "$line"; done <<<"$rendered"
    supervisorctl reread
    # Starts added programs, stops removed ones (warm), restarts those whose section changed.
    supervisorctl update
    if [[ $(applied mode) == supervisord ]] && ! grep -q '^wrote ' <<<"$rendered" &&
        [[ $CONFIG_CHANGED == yes || $CODE_CHANGED == yes ]]; then
        say "configuration or code changed: restarting the workers (warm)"
        local programs=() index
        for ((index = 1; index <= CONCURRENCY; index++)); do programs+=("conductor-worker-$index"); done
        [[ $API_ENABLED != true ]] || programs+=(conductor-api)
        supervisorctl restart "${programs[@]}"
    fi
    record_applied "$SUPERVISOR_DIR/conductor.conf"
    if ! wait_registered supervisord_pids; then
        supervisorctl status >&2 || true
        die "see the worker logs under /var/log/supervisor/ (is Redis at REDIS_URL reachable from this node?)"
    fi
    supervisorctl status
}

case $MODE in
systemd) install_systemd ;;
supervisord) install_supervisord ;;
esac
say "done: $CONCURRENCY workers of node $NODE_NAME ($MODE), configuration $CONF"
