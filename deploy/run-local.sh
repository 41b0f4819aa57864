#!/usr/bin/env bash
# A local conductor node from ./app.properties, for trying it out: `make run`, `make stop`.
#
#   start   Redis (when REDIS_URL points at a local port where nothing answers: a redis-server
#           with an append-only file under run/redis), then supervisord with the rendered
#           conductor.conf, then four demonstration jobs with a live view.
#   reload  render again after app.properties changed and `supervisorctl update`: only the
#           workers that were added or removed start or stop.
#   status  supervisorctl status.
#   stop    stop the workers (each finishes its job first), supervisord and the Redis it started.
#   clean   stop, then remove what `start` made for this checkout: run/, supervisord.conf and, when
#           it exists, the copy under /var/lib/conductor-local/<checkout> (that checkout's only).
#
# Everything lives in run/. Started by root, the services run as an unprivileged user (created
# when missing), because workers refuse to run jobs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=$ROOT/run
BIN=$ROOT/.venv/bin
PREFIX=$ROOT/.venv
CONFIG=${CONDUCTOR_CONFIG:-$ROOT/app.properties}
if [[ $(id -u) -eq 0 ]]; then
    export SERVICE_USER=${SERVICE_USER:-conductor}
else
    export SERVICE_USER=$(id -un)
fi

# Whether other users are kept out of the checkout: some directory on its path lets nobody else through.
private_checkout() {
    local directory=$ROOT
    while :; do
        (( 8#$(stat -c %a "$directory") & 1 )) || return 0
        [[ $directory == / ]] && return 1
        directory=$(dirname "$directory")
    done
}

# Started by root from a checkout the service user cannot enter (a clone in root's 0700 home, the
# commonest first run), the node runs from a copy the service user can read: the package in a
# virtual environment of its own and the node's files, under /var/lib/conductor-local/<checkout>.
# Root keeps using the checkout's own .venv for the commands it runs itself.
# The copy's place is named after the checkout's path, so each checkout has its own and `clean`
# removes this one's only.
COPY=/var/lib/conductor-local/$(printf '%s' "$ROOT" | sha1sum | cut -c1-12)
LOCAL=""
if [[ $(id -u) -eq 0 ]] && private_checkout; then
    LOCAL=$COPY
    RUN=$LOCAL/run
    PREFIX=$LOCAL/venv
fi

# The copy: the package installed from the checkout (again at each start, so edits are taken up);
# prepare_node writes the node's app.properties beside it.
install_copy() {
    echo "run-local: $ROOT is closed to $SERVICE_USER; running the node from a copy in $LOCAL" >&2
    install -d -m 0755 /var/lib/conductor-local "$LOCAL"
    [[ -x $PREFIX/bin/python ]] || /usr/bin/python3 -m venv "$PREFIX"
    "$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check "$ROOT[api]"
}

# Local overrides of paths that default to system locations; the environment outranks the file.
export JOB_ROOT=$RUN/jobs
export LOG_FILE=$RUN/log/workers.log
export INSTALL_PREFIX=$PREFIX

setting() { "$BIN/conductor" check --config "$CONFIG" | sed -n "s/^$1=//p"; }
ctl() { "$BIN/supervisorctl" -c "$RUN/supervisord.conf" "$@"; }

# Stop the node whose files are in run directory $1 (workers finish their jobs first), if it runs.
stop_node() {
    local run=$1 pid
    local ctl=("$BIN/supervisorctl" -c "$run/supervisord.conf")
    if [[ -f $run/supervisor/supervisord.pid ]] && "${ctl[@]}" pid >/dev/null 2>&1; then
        echo "run-local: stopping the workers (each finishes its current job first), Redis and supervisord"
        "${ctl[@]}" shutdown >/dev/null
        pid=$(cat "$run/supervisor/supervisord.pid" 2>/dev/null || true)
        while [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
}

# The node is `conductor apply` in supervisord mode on a node of its own (run/): the service
# user, the directories, the programs, this supervisord. Its check mode runs first: when the
# service user cannot reach the checkout (a clone in a 0700 home), it stops there, having created
# and started nothing, and says what to do.
apply() { "$BIN/conductor" apply --mode supervisord --local "$RUN" --config "$CONFIG" "$@"; }
running() { [[ -S $RUN/supervisor/supervisor.sock ]] && ctl pid >/dev/null 2>&1; }

# The node's own app.properties (0640 root:SERVICE_USER, in the node directory) from the one the
# user edits: with the password of the Redis this node starts and, run by root, JOB_USER=conductor-job
# unless app.properties names one (conductor/localrun.py says why). Sets CONFIG to it and REDIS to
# what Redis needs: "start PORT" (a program of this supervisord) or "use" (one that answers already).
NODE_DIR=${LOCAL:-$RUN}
SOURCE_CONFIG=$CONFIG
REDIS=use
prepare_node() {
    REDIS=$("$BIN/python" -m conductor.localrun prepare --config "$SOURCE_CONFIG" --node "$NODE_DIR" --run "$RUN" \
        --service-user "$SERVICE_USER")
    CONFIG=$NODE_DIR/app.properties
}

# The local Redis when prepare_node says so: a program of this supervisord (first by priority),
# running as the service user; everything, the password included, in its configuration file,
# none of it on its command line. Prints the [program:redis] section.
redis_program() {
    [[ $REDIS == start* ]] || return 0
    cat <<EOF

[program:redis]
command=$(command -v redis-server) $NODE_DIR/redis.conf
priority=1
$([[ $(id -u) -eq 0 ]] && echo "user=$SERVICE_USER")
autorestart=true
stdout_logfile=$RUN/log/redis.log
redirect_stderr=true
EOF
}

write_supervisord_conf() {
    mkdir -p "$RUN"/{supervisor,conf.d}
    chmod 0755 "$RUN"
    local redis
    redis=$(redis_program)
    cat > "$RUN/supervisord.conf" <<EOF
; The local run's own supervisord (deploy/run-local.sh); the programs come from conductor.conf.
[unix_http_server]
file=$RUN/supervisor/supervisor.sock
chmod=0700

[supervisord]
logfile=$RUN/log/supervisord.log
pidfile=$RUN/supervisor/supervisord.pid
childlogdir=$RUN/log
directory=$RUN

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://$RUN/supervisor/supervisor.sock
$redis

[include]
files = $RUN/conf.d/*.conf
EOF
    # `supervisorctl status` typed in the checkout finds this config.
    ln -sfn "$RUN/supervisord.conf" "$ROOT/supervisord.conf"
}

demo() {
    local ids=() api auth=() token
    api="http://$(setting API_HOST):$(setting API_PORT)"
    # `conductor check` masks the token; read it where it is set (environment, then the file).
    token=${API_TOKEN:-$(sed -n 's/^API_TOKEN=//p' "$CONFIG")}
    # The header goes to curl in a file only root can read: on curl's command line it would show in `ps`.
    if [[ -n $token ]]; then
        (umask 077 && printf 'Authorization: Bearer %s\n' "$token" > "$RUN/api-auth-header")
        auth=(-H "@$RUN/api-auth-header")
    fi
    if [[ $(setting API_ENABLED) == true ]]; then
        wait_for_api "$api"
        echo "run-local: submitting four demonstration jobs through $api (4 CPUs, 8G, 10 s each)"
        for i in 1 2 3 4; do
            ids+=("$(curl -sS -X POST "$api/api/v1/jobs/submit" -H "Content-Type: application/json" \
                "${auth[@]}" \
                -d '{"job": {"account": "test", "name": "concurrent-job-'$i'", "partition": "compute-high-mem",
                             "ntasks_per_node": 1, "cpus_per_task": 4, "memory_per_node": "8G"},
                     "script": "#!/bin/bash\necho \"Job '$i' is running\"\nsleep 10"}' |
                "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["job_id"])')")
        done
    else
        echo "run-local: submitting four demonstration jobs (4 CPUs, 8G, 10 s each)"
        for i in 1 2 3 4; do
            ids+=("$(printf '#!/bin/bash\necho "Job %s is running"\nsleep 10\n' "$i" |
                "$BIN/conductor" submit --config "$CONFIG" --account test --name "concurrent-job-$i" \
                    --partition compute-high-mem --ntasks-per-node 1 --cpus-per-task 4 --mem 8G -)")
        done
    fi
    "$BIN/conductor" watch --config "$CONFIG" "${ids[@]}"
}

wait_for_api() {
    for _ in $(seq 150); do
        curl -sf "$1/healthz" >/dev/null 2>&1 && return
        sleep 0.2
    done
    echo "run-local: the API at $1 does not answer; see $RUN/log/" >&2
    exit 1
}

case ${1:-start} in
start)
    "$BIN/conductor" check --config "$CONFIG" >/dev/null
    [[ -z $LOCAL ]] || install_copy
    prepare_node
    apply --check >/dev/null  # the preflight: nothing is created or started when it fails
    running || write_supervisord_conf
    apply
    "$BIN/conductor" verify --local "$RUN" --config "$CONFIG" --timeout 30 || {
        echo "run-local: see $RUN/log/" >&2
        exit 1
    }
    ctl status
    demo
    echo
    echo "The node keeps running: supervisorctl status | .venv/bin/conductor jobs --config $CONFIG | make stop to stop it."
    ;;
reload)
    [[ -z $LOCAL ]] || install_copy
    prepare_node
    apply
    "$BIN/conductor" verify --local "$RUN" --config "$CONFIG" --timeout 30
    ctl status
    ;;
status)
    ctl status
    ;;
stop)
    stop_node "$RUN"
    ;;
clean)
    # Both places, whichever this checkout used: it may have been closed or opened since `start`.
    stop_node "$ROOT/run"
    [[ ! -d $COPY ]] || stop_node "$COPY/run"
    rm -rf "$ROOT/run" "$ROOT/supervisord.conf"
    if [[ -d $COPY ]]; then
        if [[ $(id -u) -ne 0 ]]; then
            echo "run-local: $COPY (this checkout's copy) is root's: run \`make clean\` as root to remove it" >&2
            exit 1
        fi
        echo "run-local: removing this checkout's copy $COPY"
        rm -rf "$COPY"
    fi
    ;;
*)
    echo "usage: $0 start|reload|status|stop|clean" >&2
    exit 2
    ;;
esac
