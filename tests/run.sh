#!/usr/bin/env bash
# The project's one test command (see README.md): installs what the tests
# need, checks formatting and lints, runs every test of the workspace, and
# prints a closing "N passed, N failed" line. Tests start the real servers they
# need themselves on 127.0.0.1 with free ports and stop them when done.
set -euo pipefail
cd "$(dirname "$0")/.."

export CAPACT_STORAGE_CACHE="${CAPACT_STORAGE_CACHE:-$HOME/.cache/capact-storage}"
# A persistent target dir outside the clone keeps reruns cheap.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CAPACT_STORAGE_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export PATH="$CAPACT_STORAGE_CACHE/venv/bin:$CAPACT_STORAGE_CACHE/helm/v3.22.0:$PATH"

bash tests/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "$passed passed, $failed failed"
exit "$status"
