#!/usr/bin/env bash
# Conformance suite with third-party Kafka clients (confluent-kafka, kafka-python) against a
# real `streamhouse serve`. Creates ./.venv on first use and installs requirements.txt into it.
# The server binary: $STREAMHOUSE_BIN, else ${CARGO_TARGET_DIR:-target}/debug/streamhouse.
# Extra arguments go to pytest (e.g. -k long_poll, -n 0).
set -euo pipefail
cd "$(dirname "$0")/../.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  echo "creating .venv for the client tests…" >&2
  rm -rf .venv
  if ! "$PYTHON" -m venv .venv >/dev/null 2>&1; then
    # Debian's python3 ships venv's ensurepip separately.
    rm -rf .venv
    as_root apt-get install -y -q python3-venv >/dev/null 2>&1 \
      || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q python3-venv >/dev/null; }
    "$PYTHON" -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/clients/requirements.txt

if [ -z "${STREAMHOUSE_BIN:-}" ]; then
  cargo build --locked -q -p streamhouse-cli
fi
exec .venv/bin/python -m pytest -q -rs -n 2 --dist loadfile tests/clients "$@"
