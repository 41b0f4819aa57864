#!/usr/bin/env bash
# A local conductor node from ./app.properties, for trying it out: `make run`, `make stop`.
#
#   start   Redis (when REDIS_URL points at a local port where nothing answers: a redis-server
#           with an append-only file under run/redis), then supervisord with the rendered
#           conductor.conf, then the seed's four demonstration jobs with a live view.
#   reload  render again after app.properties changed and `supervisorctl update`: only the
#           workers that were added or removed start or stop.
#   status  supervisorctl status.
#   stop    stop the workers (each finishes its job first), supervisord and the Redis it started.
#
# Everything lives in run/. Started by root, the services run as an unprivileged user (created
# when missing), because workers refuse to run jobs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=$ROOT/run
BIN=$ROOT/.venv/bin
CONFIG=${CONDUCTOR_CONFIG:-$ROOT/app.properties}

# Local overrides of paths that default to system locations; the environment outranks the file.
export JOB_ROOT=$RUN/jobs
export LOG_FILE=$RUN/log/workers.log
export INSTALL_PREFIX=$ROOT/.venv
if [[ $(id -u) -eq 0 ]]; then
    export SERVICE_USER=${SERVICE_USER:-conductor}
else
    export SERVICE_USER=$(id -un)
fi

setting() { "$BIN/conductor" check --config "$CONFIG" | sed -n "s/^$1=//p"; }
ctl() { "$BIN/supervisorctl" -c "$RUN/supervisord.conf" "$@"; }

prepare_user() {
    if [[ $(id -u) -eq 0 ]] && ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        echo "run-local: creating the unprivileged user $SERVICE_USER for the workers"
        useradd --system --home-dir "$RUN" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
    mkdir -p "$RUN"/{jobs,log,redis,supervisor,conf.d}
    chmod 0755 "$RUN"
    chown -R "$SERVICE_USER" "$RUN"/{jobs,log,redis}
}

start_redis() {
    local url host port
    url=$(setting REDIS_URL)
    if "$BIN/python" - "$url" <<'PY'
import sys
from redis import Redis
try:
    Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
except Exception:
    sys.exit(1)
PY
    then
        echo "run-local: using the Redis that answers at $url"
        return
    fi
    read -r host port < <("$BIN/python" -c 'import sys; from urllib.parse import urlsplit; u=urlsplit(sys.argv[1]); print(u.hostname or "", u.port or 6379)' "$url")
    if [[ $host != 127.0.0.1 && $host != localhost ]]; then
        echo "run-local: Redis at $url does not answer and is not local; start it first" >&2
        exit 1
    fi
    echo "run-local: starting redis-server on port $port (append-only file in run/redis)"
    local as=()
    [[ $(id -u) -eq 0 ]] && as=(runuser -u "$SERVICE_USER" --)
    "${as[@]}" redis-server --port "$port" --bind 127.0.0.1 --dir "$RUN/redis" --appendonly yes \
        --save "" --daemonize yes --pidfile "$RUN/redis/redis.pid" --logfile "$RUN/log/redis.log"
    for _ in $(seq 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "run-local: redis-server did not answer; see run/log/redis.log" >&2
    exit 1
}

write_supervisord_conf() {
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

[include]
files = $RUN/conf.d/*.conf
EOF
    # `supervisorctl status` typed in the checkout finds this config.
    ln -sfn "$RUN/supervisord.conf" "$ROOT/supervisord.conf"
}

render() {
    "$BIN/conductor" render supervisord --config "$CONFIG" --out "$RUN/conf.d"
}

# Job containment: started by root, give each worker a cgroup subtree owned by SERVICE_USER.
prepare_cgroups() {
    [[ $(id -u) -eq 0 ]] || { echo "run-local: not root, so jobs run without containment"; return; }
    "$BIN/conductor" prepare-cgroups --config "$CONFIG" ||
        echo "run-local: jobs run without containment (see above); JOB_CONTAINMENT=required workers will not start"
}

wait_for_workers() {
    local want=$1
    for _ in $(seq 150); do
        [[ $("$BIN/conductor" nodes --json --config "$CONFIG" | "$BIN/python" -c '
import json, sys
name = sys.argv[1]
print(sum(n["workers"] for n in json.load(sys.stdin) if n["name"] == name))' "$(setting NODE_NAME)") -ge $want ]] && return
        sleep 0.2
    done
    echo "run-local: the workers did not register; see run/log/" >&2
    ctl status >&2 || true
    exit 1
}

demo() {
    local ids=() api auth=() token
    api="http://$(setting API_HOST):$(setting API_PORT)"
    # `conductor check` masks the token; read it where it is set (environment, then the file).
    token=${API_TOKEN:-$(sed -n 's/^API_TOKEN=//p' "$CONFIG")}
    [[ -n $token ]] && auth=(-H "Authorization: Bearer $token")
    if [[ $(setting API_ENABLED) == true ]]; then
        wait_for_api "$api"
        echo "run-local: submitting the seed's four demonstration jobs through $api (4 CPUs, 8G, 10 s each)"
        for i in 1 2 3 4; do
            ids+=("$(curl -sS -X POST "$api/api/v1/jobs/submit" -H "Content-Type: application/json" \
                "${auth[@]}" \
                -d '{"job": {"account": "test", "name": "concurrent-job-'$i'", "partition": "compute-high-mem",
                             "ntasks_per_node": 1, "cpus_per_task": 4, "memory_per_node": "8G"},
                     "script": "#!/bin/bash\necho \"Job '$i' is running\"\nsleep 10"}' |
                "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["job_id"])')")
        done
    else
        echo "run-local: submitting the seed's four demonstration jobs (4 CPUs, 8G, 10 s each)"
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
    echo "run-local: the API at $1 does not answer; see run/log/" >&2
    exit 1
}

case ${1:-start} in
start)
    "$BIN/conductor" check --config "$CONFIG" >/dev/null
    prepare_user
    start_redis
    write_supervisord_conf
    prepare_cgroups
    render
    if [[ -S $RUN/supervisor/supervisor.sock ]] && ctl pid >/dev/null 2>&1; then
        ctl update
    else
        "$BIN/supervisord" -c "$RUN/supervisord.conf"
    fi
    wait_for_workers "$(setting WORKER_CONCURRENCY)"
    ctl status
    demo
    echo
    echo "The node keeps running: supervisorctl status | .venv/bin/conductor jobs | make stop to stop it."
    ;;
reload)
    prepare_cgroups
    render
    ctl update
    ctl status
    ;;
status)
    ctl status
    ;;
stop)
    if [[ -f $RUN/supervisor/supervisord.pid ]] && ctl pid >/dev/null 2>&1; then
        echo "run-local: stopping the workers (each finishes its current job first) and supervisord"
        ctl shutdown >/dev/null
        pid=$(cat "$RUN/supervisor/supervisord.pid" 2>/dev/null || true)
        while [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
    if [[ -f $RUN/redis/redis.pid ]]; then
        echo "run-local: stopping the local redis-server"
        kill "$(cat "$RUN/redis/redis.pid")" 2>/dev/null || true
        while [[ -f $RUN/redis/redis.pid ]]; do sleep 0.1; done
    fi
    ;;
*)
    echo "usage: $0 start|reload|status|stop" >&2
    exit 2
    ;;
esac
