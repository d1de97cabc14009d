#!/usr/bin/env bash
# Runs the `direct` bench of every backend, one after the other, and
# regenerates the generated parts of BENCHMARKS.md from their output (the
# machine, the targets table and one table per backend; the prose stays).
#
#   tools/bench/run-all.sh                  # every backend
#   tools/bench/run-all.sh vault s3         # some of them (the others' tables stay)
#
# Needs the stores of tests/setup.sh (bao, moto_server, kube-apiserver and
# etcd from tests/kube/build.sh). Raw output lands in $BENCH_OUT
# (default: <cargo target dir>/bench-all).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${CAPACT_STORAGE_CACHE:-$HOME/.cache/capact-storage}"
export PATH="$CACHE/venv/bin:$PATH"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="${BENCH_OUT:-$TARGET_DIR/bench-all}"
ALL=(vault s3 aws-secretsmanager kubernetes-secret flux-helmrelease sops-git)
if [ $# -gt 0 ]; then PACKAGES=("$@"); else PACKAGES=("${ALL[@]}"); fi
mkdir -p "$OUT"
cd "$ROOT"

version() { "$@" 2>/dev/null | head -n 1 || echo "not found"; }
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "backends run: ${PACKAGES[*]}"
    echo "nproc: $(nproc)"
    lscpu | grep -E '^(Architecture|CPU\(s\)|Model name|Thread|Core|Socket|Hypervisor)' \
        | sed 's/^/lscpu: /; s/:  */: /2'
    echo "memory: $(free -m | awk '/^Mem:/ {print $2 " MiB"}')"
    echo "kernel: $(uname -r)"
    echo "rustc: $(rustc --version)"
    echo "openbao: $(version bao version)"
    echo "moto: $(version python3 -c 'import moto; print(moto.__version__)')"
    kube="$CACHE/kube/$(ls "$CACHE/kube" 2>/dev/null | sort -V | tail -n 1)"
    echo "kube-apiserver: $(version "$kube/kube-apiserver" --version)"
    echo "etcd: $(version "$kube/etcd" --version)"
    echo "git: $(git --version)"
    echo "load before: $(uptime | sed 's/.*load average: //')"
} > "$OUT/machine.txt"

# One build of every bench first: compiling never overlaps a measured run,
# and one build resolves features once (a `cargo bench -p` per backend would
# rebuild shared crates with other features each time).
# All six always, also for a subset run: the same build as a full run.
cargo build -q -p bench --bin benchmarks-md
MD="$TARGET_DIR/debug/benchmarks-md"
bench_args=()
for p in "${ALL[@]}"; do bench_args+=(-p "$p"); done
cargo bench --no-run "${bench_args[@]}" --bench direct --message-format=json-render-diagnostics \
    > "$OUT/build.json"

for p in "${PACKAGES[@]}"; do
    # The bench executable of package $p and its directory (cargo runs a
    # bench from its package's directory).
    "$MD" executable "$OUT/build.json" "$p" "$OUT/$p.exe"
    read -r exe dir < "$OUT/$p.exe"
    [ -n "${exe:-}" ] || { echo "run-all: no bench executable for $p" >&2; exit 1; }
    echo "run-all: $p" >&2
    echo "load before $p: $(uptime | sed 's/.*load average: //')" >> "$OUT/machine.txt"
    (cd "$dir" && BENCH_JSON="$OUT/$p.json" "$exe" --bench) > "$OUT/$p.txt" 2> "$OUT/$p.log" || {
        echo "run-all: the $p bench failed, see $OUT/$p.log" >&2
        tail -n 20 "$OUT/$p.log" >&2
        exit 1
    }
done
echo "load after: $(uptime | sed 's/.*load average: //')" >> "$OUT/machine.txt"

"$MD" regenerate "$OUT" "$ROOT/BENCHMARKS.md"
echo "run-all: BENCHMARKS.md regenerated from $OUT" >&2
