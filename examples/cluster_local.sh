#!/usr/bin/env bash
# Scale out on one machine: a local Redis Cluster (3 masters, each with a replica), a standalone Redis
# for the job queue (arq cannot use a cluster), two proxies and a worker, as you would run them.
#
#   bash examples/cluster_local.sh            # starts everything, checks it, waits for Ctrl-C
#   bash examples/cluster_local.sh --check    # starts everything, checks it, stops
#
# Without PERSONA_UPSTREAM_API_BASE it starts the test suite's fake OpenAI-compatible upstream, so it
# runs without any API key. Ports: BASE_PORT (default 7100) and up; proxies on 8081 and 8082.
set -euo pipefail
cd "$(dirname "$0")/.."
PERSONA="${PERSONA:-.venv/bin/persona}"
PYTHON="${PYTHON:-.venv/bin/python}"
BASE_PORT="${BASE_PORT:-7100}"
MODEL="${MODEL:-fake-model}"
PROXY_PORTS=("${PROXY_1_PORT:-8081}" "${PROXY_2_PORT:-8082}")
WORK="$(mktemp -d -t persona-cluster-XXXX)"
PIDS=()

stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap stop_all EXIT

wait_until() {  # wait_until <seconds> <command...>: retry the command until it succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then echo "timed out: $*" >&2; return 1; fi
    sleep 0.2
  done
}

# --- the cluster: six nodes, then `redis-cli --cluster create` pairs them (one replica each) --------
nodes=()
for i in 0 1 2 3 4 5; do
  port=$((BASE_PORT + i))
  mkdir -p "$WORK/node-$port"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$WORK/node-$port" --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 2000 --cluster-port $((BASE_PORT + 100 + i)) \
    --appendonly yes --save "" --daemonize no --logfile "$WORK/node-$port/redis.log" &
  PIDS+=($!)
  nodes+=("127.0.0.1:$port")
done
for node in "${nodes[@]}"; do wait_until 10 redis-cli -p "${node##*:}" ping; done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
cluster_ok() { redis-cli -p "$BASE_PORT" cluster info | grep -q "cluster_state:ok"; }
wait_until 30 cluster_ok
# every master's replica in sync, so the first write that waits for a replica (WAIT) is confirmed
replicas_online() {
  for node in "${nodes[@]}"; do
    local info; info="$(redis-cli -p "${node##*:}" info replication)"
    grep -q "role:master" <<<"$info" || continue
    grep -q "slave0:.*state=online" <<<"$info" || return 1
  done
}
wait_until 30 replicas_online
echo "cluster: ${nodes[*]}"

# --- the job queue's Redis, beside the cluster -------------------------------------------------------
JOBS_PORT=$((BASE_PORT + 10))
mkdir -p "$WORK/jobs"
redis-server --port "$JOBS_PORT" --bind 127.0.0.1 --dir "$WORK/jobs" --appendonly yes --save "" \
  --daemonize no --logfile "$WORK/jobs/redis.log" &
PIDS+=($!)
wait_until 10 redis-cli -p "$JOBS_PORT" ping

# --- an upstream ------------------------------------------------------------------------------------
if [[ -z "${PERSONA_UPSTREAM_API_BASE:-}" ]]; then
  UPSTREAM_PORT=$((BASE_PORT + 20))
  "$PYTHON" -m tests.support.fake_upstream --port "$UPSTREAM_PORT" >"$WORK/upstream.log" 2>&1 &
  PIDS+=($!)
  export PERSONA_UPSTREAM_API_BASE="http://127.0.0.1:$UPSTREAM_PORT/v1"
  wait_until 15 curl -sf "$PERSONA_UPSTREAM_API_BASE/models"
fi

# --- two proxies and a worker, all on the same settings ---------------------------------------------
export PERSONA_REDIS_URL="redis+cluster://${nodes[0]},${nodes[1]},${nodes[2]}"
export PERSONA_JOBS_REDIS_URL="redis://127.0.0.1:$JOBS_PORT/0"
export PERSONA_REDIS_WAIT_REPLICAS=1          # preference writes and persona saves reach a replica
export PERSONA_API_KEYS="${PERSONA_API_KEYS:-{\"sk-app-demo\": \"demo\"}}"
export PERSONA_ADMIN_KEY="${PERSONA_ADMIN_KEY:-sk-admin-demo-0123456789}"
for port in "${PROXY_PORTS[@]}"; do
  "$PERSONA" serve --port "$port" --log-level warning >"$WORK/proxy-$port.log" 2>&1 &
  PIDS+=($!)
done
"$PERSONA" worker >"$WORK/worker.log" 2>&1 &
PIDS+=($!)
for port in "${PROXY_PORTS[@]}"; do wait_until 30 curl -sf "http://127.0.0.1:$port/readyz"; done
echo "proxies: http://127.0.0.1:${PROXY_PORTS[0]} http://127.0.0.1:${PROXY_PORTS[1]}; worker running"

# --- check: a persona written through one proxy is used by the other ---------------------------------
APP_KEY="$("$PYTHON" -c 'import json,os; print(next(iter(json.loads(os.environ["PERSONA_API_KEYS"]))))')"
TENANT="$("$PYTHON" -c 'import json,os; print(next(iter(json.loads(os.environ["PERSONA_API_KEYS"]).values())))')"
curl -sf -X PUT "http://127.0.0.1:${PROXY_PORTS[0]}/admin/users/demo-user/persona" \
  -H "Authorization: Bearer $PERSONA_ADMIN_KEY" -H "X-Persona-Tenant: $TENANT" \
  -H "Content-Type: application/json" -d '{"text": "Prefers short, concrete answers.", "exemplars": []}' >/dev/null
headers="$(curl -sf -D - -o /dev/null "http://127.0.0.1:${PROXY_PORTS[1]}/v1/chat/completions" \
  -H "Authorization: Bearer $APP_KEY" -H "Content-Type: application/json" \
  -d "{\"model\": \"$MODEL\", \"user\": \"demo-user\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}")"
version="$(grep -i '^x-persona-version:' <<<"$headers" | tr -d '\r' | awk '{print $2}')"
echo "chat through the second proxy: x-persona-version $version"
[[ "$version" == "1" ]] || { echo "the second proxy did not see the persona" >&2; exit 1; }

if [[ "${1:-}" == "--check" ]]; then
  echo "ok"
  exit 0
fi
echo "running; logs in $WORK; Ctrl-C stops everything"
wait
