#!/bin/bash
# A/B of the source reader's metrics copy on a running stack: each variant is a git revision of
# dwh_assets/warehouse/sources/reader.py and a reader.max_samples_per_request, installed in turn
# into the stack's reader directory; each copies the same window into an emptied dwh.metrics
# under benchmarks.memwatch (the postmaster and Prometheus sampled), variants alternating per
# round. Prints wall time, the reader's and Prometheus' peak private memory, and the rows.
#
#   bash benchmarks/reader_ab.sh HOME START END ROUNDS REV:BUDGET [REV:BUDGET ...]
#   bash benchmarks/reader_ab.sh /tmp/big 2026-09-01 2026-11-01 2 5782b97:500000 HEAD:500000 HEAD:250000
#
# Run as root from the repository (the reader runs as the server's OS user, postgres); HOME is
# a stack made by `dwh up` (the run leaves its dwh.metrics holding the window, and puts the
# installed reader and its settings back as they were).
set -euo pipefail
[ $# -ge 5 ] || { sed -n 2,11p "$0"; exit 2; }
home=$1 start=$2 end=$3 rounds=$4
shift 4
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
reader_dir="$home/reader"
cp -p "$reader_dir/dwh_source_reader.py" "$work/installed.py"
cp -p "$reader_dir/reader.json" "$work/installed.json"
restore() {
  install -o postgres -g postgres -m 0700 "$work/installed.py" "$reader_dir/dwh_source_reader.py"
  install -o postgres -g postgres -m 0600 "$work/installed.json" "$reader_dir/reader.json"
  rm -rf "$work"
}
trap restore EXIT
port=$(sed -n 's/^port = \([0-9]*\)$/\1/p' "$home/dwh.toml" | head -1)
postmaster=$(head -1 "$home/pgdata/postmaster.pid")
prometheus=$(cat "$home/run/prometheus.pid")
superuser=(runuser -u postgres -- psql -X -q -h "$home/run" -p "$port" -d warehouse)
export PGPASSFILE="$home/secrets/pgpass"
for variant in "$@"; do
  rev=${variant%%:*}
  git -C "$repo" show "$rev:dwh_assets/warehouse/sources/reader.py" > "$work/reader-${variant//[:\/]/_}.py"
done
for round in $(seq "$rounds"); do
  for variant in "$@"; do
    key=${variant//[:\/]/_}
    budget=${variant##*:}
    install -o postgres -g postgres -m 0700 "$work/reader-$key.py" "$reader_dir/dwh_source_reader.py"
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); d["max_samples_per_request"] = int(sys.argv[2]); json.dump(d, open(sys.argv[3], "w"), indent=1)' \
      "$work/installed.json" "$budget" "$work/reader.json"
    install -o postgres -g postgres -m 0600 "$work/reader.json" "$reader_dir/reader.json"
    "${superuser[@]}" -c "TRUNCATE dwh.metrics, dwh.metric_series" -c "CHECKPOINT"
    (cd "$repo" && .venv/bin/python -m benchmarks.memwatch --out "$work/$key.json" --interval 0.1 \
      --root "$postmaster" --root "$prometheus" -- \
      psql -X -q -At "host=127.0.0.1 port=$port dbname=warehouse user=dwh_loader" \
      -c "SELECT rows_inserted FROM dwh.refresh_metrics('$start', '$end')" -o "$work/$key.out" > "$work/$key.watch" 2>&1) \
      || { cat "$work/$key.watch"; exit 1; }
    python3 - "$work/$key.json" "$work/$key.out" "$variant" "$round" <<'PY'
import json, sys
watched, out, variant, rnd = sys.argv[1:]
d = json.load(open(watched))
cat = {c["category"]: c for c in d["summary"]}
reader = cat.get("source reader (file_fdw program)", {})
prometheus = cat.get("prometheus", {})
rows = open(out).readline().strip()
print(f"round {rnd} {variant}: {d['wall_seconds']:.1f} s, {int(rows):,} rows; reader {reader.get('peak_private_mb')} MB "
      f"private ({reader.get('cpu_seconds')} CPU s), Prometheus {prometheus.get('peak_private_mb')} MB private", flush=True)
PY
  done
done
