#!/usr/bin/env bash
# Produce throughput of N agents on PostgreSQL + s3s-fs, with the S3 PUTs and metadata
# transactions it took. Starts s3s-fs (port 19900) and N agents (ports 19911…) of the release
# binary on a fresh schema, creates a 12-partition topic, runs `streamhouse bench` against
# all agents, then prints objects written (= PUTs) per second and bytes per PUT (from the
# `objects` table) and PostgreSQL transactions per second (pg_stat_database), and cleans up.
#
# usage: scripts/cluster-bench.sh N_AGENTS [extra `serve` flags…]   (RECORDS=400000 by default)
# needs: target/release/streamhouse, s3s-fs on PATH, PostgreSQL on 127.0.0.1:5432 (db test).
set -uo pipefail
N=$1; shift
BIN=${STREAMHOUSE_BIN:-$(dirname "$0")/../target/release/streamhouse}
W=$(mktemp -d /tmp/db-XXXX)
SCHEMA=bench_$(basename $W | tr -d -- '-' | tr 'A-Z' 'a-z')
PG=postgres://postgres@127.0.0.1:5432/test
psql $PG -qc "CREATE SCHEMA $SCHEMA"
mkdir -p $W/s3/bucket
s3s-fs --host 127.0.0.1 --port 19900 --access-key k --secret-key s $W/s3 >/dev/null 2>&1 &
S3PID=$!
sleep 1
BOOT=""
PIDS=""
for i in $(seq 1 $N); do
  port=$((19910 + i))
  $BIN serve --agent-id a$i --data-dir $W/a$i --kafka-addr 127.0.0.1:$port --http-addr 127.0.0.1:0 \
    --metadata-url "$PG?options=-c%20search_path%3D$SCHEMA" --object-store-url s3://bucket/d \
    --s3-endpoint http://127.0.0.1:19900 --s3-region us-east-1 --s3-access-key-id k --s3-secret-access-key s --s3-allow-http \
    "$@" > $W/a$i.log 2>&1 &
  PIDS="$PIDS $!"
  BOOT="$BOOT,127.0.0.1:$port"
done
BOOT=${BOOT#,}
sleep 2
$BIN topic create -b 127.0.0.1:19911 bench --partitions 12 >/dev/null
sleep 2
x0=$(psql $PG -tAc "SELECT xact_commit FROM pg_stat_database WHERE datname='test'")
t0=$(date +%s.%N)
$BIN bench -b $BOOT --workload produce --topic bench --partitions 12 --records ${RECORDS:-400000} --record-size 1024 --no-progress 2>&1 | tail -12
t1=$(date +%s.%N)
x1=$(psql $PG -tAc "SELECT xact_commit FROM pg_stat_database WHERE datname='test'")
psql "$PG?options=-c%20search_path%3D$SCHEMA" -tAc "SELECT count(*), sum(size_bytes), (max(created_at_ms)-min(created_at_ms)) FROM objects" | awk -F'|' -v n=$N '{printf "agents=%d objects(PUTs)=%d bytes=%d span_ms=%d PUT/s=%.0f bytes/PUT=%.0f\n", n, $1, $2, $3, $1*1000/$3, $2/$1}'
echo "pg transactions: $((x1-x0)) in $(echo "$t1-$t0"|bc) s => $(echo "($x1-$x0)/($t1-$t0)"|bc) txn/s"
psql "$PG?options=-c%20search_path%3D$SCHEMA" -tAc "SELECT holder, count(*) FROM leases WHERE topic='bench' GROUP BY 1 ORDER BY 1" | tr '\n' ' '; echo
kill $PIDS; wait $PIDS 2>/dev/null || true
kill $S3PID
psql $PG -qc "DROP SCHEMA $SCHEMA CASCADE"
rm -rf $W
