#!/usr/bin/env bash
# Writes ./demo-deploy/ for deploy/compose.yaml: CA and server certificate for the
# 'coordinator' service, three hospitals' keys, policies and data (the embedded demo table),
# and .env with the ids of the user running this, whom the containers run as.
set -euo pipefail
out=${1:-demo-deploy}
"${PYTHON:-python3}" - "$out" <<'PY'  # PYTHON: the interpreter fedsyn is installed in
import json, sys
from pathlib import Path
import numpy as np
from fedsyn.privacy.accounting import PrivacyLedger
from fedsyn.trust.audit import AuditLog
from fedsyn.trust.certs import create_ca, create_server_certificate, create_site_keypair
from fedsyn.trust.signing import generate_keypair
from fedsyn.data.demo import demo_data_path, demo_schema_path
from fedsyn.data.schema import Schema
from fedsyn.data.tables import read_table, write_table
from fedsyn.simulations.split import split_table
out = Path(sys.argv[1]); coordinator = out / "coordinator"
create_ca(coordinator / "certs")
create_server_certificate(coordinator / "certs", ["coordinator", "localhost", "127.0.0.1"])
generate_keypair(coordinator / "keys")
schema = Schema.load(demo_schema_path()); schema.save(coordinator / "schema.json")
# The demo's run waits for its three hospitals: with the example's min-sites = 2 it starts as soon
# as two have connected, and the third, still starting, takes no part in it.
example = Path("deploy/examples/server.toml").read_text()
assert "min-sites = 2" in example, "deploy/examples/server.toml no longer sets min-sites = 2: update make-demo.sh"
(coordinator / "server.toml").write_text(example.replace("min-sites = 2", "min-sites = 3"))
for index, table in enumerate(split_table(read_table(demo_data_path(), schema), 3, np.random.default_rng(0))):
    site = out / f"site-{index}"; (site / "state").mkdir(parents=True, exist_ok=True)
    write_table(table, site / "data.parquet"); schema.save(site / "schema.json")
    (site / "ca.crt").write_bytes((coordinator / "certs" / "ca.crt").read_bytes())
    create_site_keypair(site)
    (coordinator / "sites").mkdir(exist_ok=True)
    (coordinator / "sites" / f"site-{index}.pub").write_bytes((site / "auth.pub").read_bytes())
    policy = json.loads(Path("deploy/examples/site.json").read_text())
    policy.update(site_id=f"site-{index}", data="/etc/fedsyn/data.parquet", schema="/etc/fedsyn/schema.json")
    policy["coordinator"].update(superlink="coordinator:8000")
    (site / "site.json").write_text(json.dumps(policy, indent=2))
    # What `fedsyn client ledger init` does inside the container, at the paths the container sees.
    ledger = PrivacyLedger.create(site / "state" / "ledger.json", policy["delta"], protects=policy["data"])
    AuditLog(site / "state" / "audit.jsonl").append("ledger_created", ledger=policy["ledger"], protects=ledger.protects)
(coordinator / "state").mkdir(exist_ok=True)
PY
printf 'FEDSYN_UID=%s\nFEDSYN_GID=%s\n' "$(id -u)" "$(id -g)" > "$out/.env"
echo "written $out; next steps are at the top of deploy/compose.yaml"

