#!/usr/bin/env bash
# Rehearse a deployment on this machine, in one command: a TLS SuperLink with node
# authentication and three hospitals (the embedded demo table split in three), each a real
# `fedsyn client start` process, then one training run, its release verified and each site's
# ledger set beside the release's privacy report. Every step is the command an operator types
# (docs/coordinator.md, docs/site.md); only the demo extracts are written by a Python snippet.
#
#   deploy/rehearse.sh [FOLDER]          # default ./fedsyn-rehearsal; refuses an existing one
#   ROUNDS=5 deploy/rehearse.sh          # training rounds (default 3: about 5 minutes on 2 cores,
#                                        # each round starts three ClientApp processes)
#   KEEP=1 deploy/rehearse.sh            # leave SuperLink and sites running to rehearse faults
#
# With KEEP=1 the script prints each process id and the commands for the first-day faults
# (stop a site and restart it, restart the coordinator and resume, run again on what is left).
# Without it every process it started is stopped when it ends, however it ends.
set -euo pipefail

out=$(realpath -m "${1:-fedsyn-rehearsal}")
rounds=${ROUNDS:-3}
# The fedsyn command of the install to rehearse: FEDSYN, else the checkout's .venv (the README's
# install; a newcomer's run stopped at "fedsyn: command not found"), else the one on PATH.
here=$(dirname "$(realpath "$0")")/..
if [ -n "${FEDSYN:-}" ]; then fedsyn=$FEDSYN
elif [ -x "$here/.venv/bin/fedsyn" ]; then fedsyn=$(realpath "$here/.venv/bin/fedsyn")
else fedsyn=fedsyn; fi
if ! command -v "$fedsyn" >/dev/null; then
  echo "rehearse: no fedsyn command: install as the README says (.venv), or give FEDSYN=/path/to/fedsyn" >&2
  exit 2
fi
python=${PYTHON:-$(dirname "$(command -v "$fedsyn")")/python}
sites=3
if [ -e "$out" ]; then
  echo "rehearse: $out exists; give another folder or remove it (rm -rf $out)" >&2
  exit 2
fi

pids=()
stop_all() {
  if [ "${KEEP:-0}" != 1 ]; then
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
  fi
}
trap stop_all EXIT

say() { printf '\n== %s\n' "$*"; }
free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

say "coordinator: CA, SuperLink certificate for localhost, release signing key"
"$fedsyn" certs init --out "$out/coordinator/certs" --host localhost --host 127.0.0.1
"$fedsyn" keys generate --out "$out/coordinator/keys"
port=$(free_port)

say "hospitals: the demo table split in $sites extracts (stand-ins for private EHR extracts)"
"$python" - "$out" "$sites" <<'PY'
import sys
from pathlib import Path

import numpy as np

from fedsyn.data.demo import demo_data_path, demo_schema_path
from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table, write_table
from fedsyn.simulations.split import split_table

out, sites = Path(sys.argv[1]), int(sys.argv[2])
schema = Schema.load(demo_schema_path())
schema.save(out / "coordinator" / "schema.json")
frame = read_table(demo_data_path(), schema)
for index, table in enumerate(split_table(frame, sites, np.random.default_rng())):
    (out / f"site-{index}").mkdir(parents=True)
    write_table(table, out / f"site-{index}" / "extract.parquet")
    schema.save(out / f"site-{index}" / "schema.json")
PY

for index in $(seq 0 $((sites - 1))); do
  site="$out/site-$index"
  "$fedsyn" certs site-key --out "$site"
  cat > "$site/site.json" <<JSON
{
  "site_id": "site-$index",
  "data": "extract.parquet",
  "schema": "schema.json",
  "ledger": "state/ledger.json",
  "max_epsilon": 2.0,
  "delta": 1e-6,
  "coordinator": {
    "superlink": "localhost:$port",
    "root_certificates": "$out/coordinator/certs/ca.crt",
    "auth_private_key": "auth.key",
    "local_port": $(free_port)
  }
}
JSON
  "$fedsyn" client ledger init -c "$site/site.json"
done

cat > "$out/coordinator/server.toml" <<TOML
host = "127.0.0.1"
port = $port
database = "state/superlink.db"
certificate = "certs/server.crt"
private_key = "certs/server.key"
ca_certificate = "certs/ca.crt"
flwr_home = "state/flwr-home"

[run]
schema = "schema.json"
out = "releases/latest"
rows = 2000
rounds = $rounds
local-steps = 4
sample-rate = 0.1
epsilon = 1.0
delta = 1e-6
min-sites = $sites
aggregation = "median"
signing-key = "keys/coordinator.key"
audit-log = "state/audit.jsonl"
state = "state/run"
TOML
server_toml="$out/coordinator/server.toml"

say "coordinator: SuperLink on 127.0.0.1:$port (log: coordinator/superlink.log)"
"$fedsyn" server start -c "$server_toml" > "$out/coordinator/superlink.log" 2>&1 &
pids+=($!)
superlink_pid=$!
for index in $(seq 0 $((sites - 1))); do
  for attempt in $(seq 30); do  # the SuperLink answers after a few seconds
    if "$fedsyn" server sites add -c "$server_toml" "$out/site-$index/auth.pub" > /dev/null 2>&1; then break; fi
    [ "$attempt" = 30 ] && { echo "rehearse: the SuperLink did not come up; see $out/coordinator/superlink.log" >&2; exit 1; }
    sleep 1
  done
done
"$fedsyn" server sites list -c "$server_toml"

say "hospitals: fedsyn client start, one per site (logs: site-K/client.log)"
site_pids=()
for index in $(seq 0 $((sites - 1))); do
  "$fedsyn" client start -c "$out/site-$index/site.json" > "$out/site-$index/client.log" 2>&1 &
  pids+=($!)
  site_pids+=($!)
done

say "budget plan, then the run: $rounds rounds (log: coordinator/run.log)"
"$fedsyn" server plan -c "$server_toml" 2>&1 | tee "$out/coordinator/plan.log"
"$fedsyn" server run -c "$server_toml" 2>&1 | tee "$out/coordinator/run.log"

say "the release: signature, and each site's epsilon against its own ledger"
release="$out/coordinator/releases/latest"
"$fedsyn" verify "$release" --key "$out/coordinator/keys/coordinator.pub"
"$python" - "$out" "$release" "$sites" <<'PY'
import json
import sys
from pathlib import Path

from fedsyn.client.policy import SitePolicy
from fedsyn.privacy.accounting import PrivacyLedger

out, release, sites = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
report = {s["site"]: s for s in json.loads((release / "privacy_report.json").read_text())["sites"]}
different = 0
for index in range(sites):
    ledger = PrivacyLedger.load(SitePolicy.load(out / f"site-{index}" / "site.json").ledger).epsilon()
    released = report[f"site-{index}"]["epsilon_cumulative"]
    verdict = "equal" if abs(ledger - released) < 1e-9 else "DIFFERENT"
    different += verdict != "equal"
    print(f"site-{index}: release says epsilon {released:.4f}, its own ledger {ledger:.4f} ({verdict})")
sys.exit(1 if different else 0)  # the release must state what every ledger holds
PY

if [ "${KEEP:-0}" = 1 ]; then
  cat <<EOF

== still running (KEEP=1): SuperLink pid $superlink_pid, sites ${site_pids[*]}
Rehearse the first-day faults, then stop everything with: kill $superlink_pid ${site_pids[*]}
  stop a hospital, restart it:    kill ${site_pids[1]}; $fedsyn client start -c $out/site-1/site.json &
  run again on what is left:      $fedsyn server plan -c $server_toml; $fedsyn server run -c $server_toml
  coordinator crash mid-run:      kill the 'server run' and the SuperLink ($superlink_pid), start the SuperLink again,
                                  then: $fedsyn server run -c $server_toml --resume
  watch it:                       $fedsyn server dashboard -c $server_toml
EOF
fi
