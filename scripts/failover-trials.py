#!/usr/bin/env python3
"""Failover time of a partition leader, measured with a real Kafka client.

Starts an s3s-fs S3 server and three agents on a fresh PostgreSQL schema, then for each trial:
keeps a confluent-kafka producer (acks=all, idempotent) writing to partition 0 every 5 ms,
SIGKILLs the agent that leads partition 0, and measures the time from the kill to the first
acknowledgement the producer gets afterwards (necessarily from the new leader). The killed
agent is started again before the next trial. Prints each trial and the distribution.

Usage (from the repository root, with the client-test venv that tests/clients/run.sh makes):
  .venv/bin/python scripts/failover-trials.py --trials 10 \
      --binary target/release/streamhouse --heartbeat-ms 1000 --lease-ttl-ms 3000
Needs s3s-fs on PATH and PostgreSQL on 127.0.0.1:5432 (STREAMHOUSE_TEST_POSTGRES_URL).
"""

import argparse
import math
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

PG = os.environ.get("STREAMHOUSE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    def __init__(self, binary, name, data_dir, args):
        self.binary, self.name, self.data_dir, self.args = binary, name, data_dir, args
        self.port = free_port()
        self.proc = None

    def start(self):
        log = open(self.data_dir.parent / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--data-dir", str(self.data_dir), "--agent-id", self.name,
             "--kafka-addr", f"127.0.0.1:{self.port}", "--http-addr", "127.0.0.1:0", *self.args],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        for line in self.proc.stdout:
            if line.startswith(b"streamhouse ready"):
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def leader_ports(admin, topic):
    """Partition -> port of its leader (None without one)."""
    md = admin.list_topics(topic, timeout=10)
    return {
        i: (md.brokers[p.leader].port if p.leader in md.brokers else None)
        for i, p in md.topics[topic].partitions.items()
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--binary", default="target/release/streamhouse")
    ap.add_argument("--heartbeat-ms", type=int, default=1000)
    ap.add_argument("--lease-ttl-ms", type=int, default=3000)
    opts = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="failover-"))
    schema = f"fo_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", PG, "-qc", f"CREATE SCHEMA {schema}"], check=True)
    (work / "s3" / "bucket").mkdir(parents=True)
    s3_port = free_port()
    s3 = subprocess.Popen(["s3s-fs", "--host", "127.0.0.1", "--port", str(s3_port),
                           "--access-key", "k", "--secret-key", "s", str(work / "s3")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    common = ["--metadata-url", f"{PG}?options=-c%20search_path%3D{schema}",
              "--object-store-url", "s3://bucket/data", "--s3-endpoint", f"http://127.0.0.1:{s3_port}",
              "--s3-region", "us-east-1", "--s3-access-key-id", "k", "--s3-secret-access-key", "s",
              "--s3-allow-http", "--heartbeat-interval-ms", str(opts.heartbeat_ms),
              "--lease-ttl-ms", str(opts.lease_ttl_ms)]
    agents = [Agent(opts.binary, f"agent-{i}", work / f"agent-{i}", common) for i in range(3)]
    results = []
    try:
        for a in agents:
            a.start()
        bootstrap = ",".join(f"127.0.0.1:{a.port}" for a in agents)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("failover", 3, 1)])["failover"].result()
        acks = []  # (time, offset)
        errors = []

        def delivered(err, msg):
            if err is None:
                acks.append((time.monotonic(), msg.offset()))
            else:
                errors.append(err)

        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                             "enable.idempotence": True, "linger.ms": 0,
                             "message.timeout.ms": 60000, "topic.metadata.refresh.interval.ms": 500})
        stop = threading.Event()

        def produce():
            i = 0
            while not stop.is_set():
                producer.produce("failover", value=b"v%d" % i, partition=0, on_delivery=delivered)
                producer.poll(0.005)
                i += 1
            producer.flush(60)

        writer = threading.Thread(target=produce)
        writer.start()
        for trial in range(opts.trials):
            # Wait for a steady state: each agent leads one partition, the same for a second
            # (a restarted agent gets its share by handoff), and partition 0 acknowledges.
            deadline = time.monotonic() + 30
            while True:
                before = leader_ports(admin, "failover")
                n = len(acks)
                time.sleep(1.0)
                after = leader_ports(admin, "failover")
                port = after[0]
                balanced = None not in after.values() and len(set(after.values())) == 3
                if balanced and before == after and len(acks) > n:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("no steady state")
            victim = next(a for a in agents if a.port == port)
            killed_at = time.monotonic()
            victim.kill9()
            while not any(t > killed_at for t, _ in acks[-50:]):
                if time.monotonic() - killed_at > 120:
                    raise SystemExit("no acknowledgement after the kill")
                time.sleep(0.005)
            first = min(t for t, _ in acks[-50:] if t > killed_at)
            results.append(first - killed_at)
            print(f"trial {trial + 1}: killed {victim.name}, first ack from the new leader after "
                  f"{results[-1]:.3f} s", flush=True)
            victim.start()
        stop.set()
        writer.join()
        offsets = [o for _, o in acks]
        assert sorted(offsets) == list(range(min(offsets), min(offsets) + len(offsets))), \
            "acknowledged offsets are not contiguous"
        print(f"{len(acks)} acknowledged, {len(errors)} delivery errors, offsets contiguous")
        ranked = sorted(results)
        p90 = ranked[max(0, math.ceil(0.9 * len(ranked)) - 1)]  # nearest rank
        print(f"failover (kill -9 -> first ack), {len(results)} trials, heartbeat "
              f"{opts.heartbeat_ms} ms, lease TTL {opts.lease_ttl_ms} ms: min {min(results):.3f} s, "
              f"median {statistics.median(results):.3f} s, p90 {p90:.3f} s, max {max(results):.3f} s")
    finally:
        for a in agents:
            a.stop()
        s3.kill()
        subprocess.run(["psql", PG, "-qc", f"DROP SCHEMA {schema} CASCADE"], check=False)


if __name__ == "__main__":
    main()
