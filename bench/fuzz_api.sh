#!/usr/bin/env bash
# Schemathesis against the served /openapi.json: every generated request must get a non-5xx answer.
#   python -m venv /tmp/st && /tmp/st/bin/pip install schemathesis     # a separate venv: not a citeloop dependency
#   SCHEMATHESIS=/tmp/st/bin/schemathesis bench/fuzz_api.sh [MAX_EXAMPLES]
# Serves a throwaway data directory holding one small collection, with an admin key (every route reachable)
# and the small generator so that valid /v1/ask requests finish quickly.
set -euo pipefail
cd "$(dirname "$0")/.."
ST=${SCHEMATHESIS:-schemathesis}
MAX_EXAMPLES=${1:-50}
DATA=$(mktemp -d)
PORT=${PORT:-8765}
export CITELOOP_DATA_DIR=$DATA CITELOOP_GENERATOR=smollm2-135m CITELOOP_MAX_NEW_TOKENS=16 CITELOOP_RATE_LIMIT_PER_MINUTE=1000000
.venv/bin/citeloop ingest corpora/python-docs/sources/tutorial/inputoutput.rst.txt --collection team-a --quiet
KEY=$(.venv/bin/citeloop keys create --name fuzz --role admin --collections '*')
.venv/bin/citeloop serve --port "$PORT" > "$DATA/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER; rm -rf "$DATA"' EXIT
until curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; do sleep 1; done
"$ST" run "http://127.0.0.1:$PORT/openapi.json" -H "Authorization: Bearer $KEY" \
  --checks not_a_server_error --max-examples "$MAX_EXAMPLES" --report junit --report-dir "$DATA/report" || status=$?
# /readyz answers 503 until the models are loaded: the wait loop above, not a failure.
echo "5xx responses in the server log (readiness polls excluded): $(grep -v '/readyz' "$DATA/server.log" | grep -c '" 5[0-9][0-9] ' || true)"
exit ${status:-0}
