#!/bin/sh
# Builds one backend's static (musl) binaries and lays out the image's whole
# root filesystem in OUT: the backend, storagectl, CA certificates, a
# non-root user (65532) and an empty /tmp and /data. The Dockerfile runs it
# in its build stage; deploy/image/build-local.sh runs the same script on a
# Debian host (musl-tools + the x86_64-unknown-linux-musl target) to build
# and measure the image without a Docker engine.
#
#   deploy/image/rootfs.sh <backend crate> <out dir>
set -eu

BACKEND="${1:?usage: rootfs.sh <backend crate, e.g. vault> <out dir>}"
OUT="${2:?usage: rootfs.sh <backend crate> <out dir>}"
case "$BACKEND" in
    vault|sops-git|s3|aws-secretsmanager|kubernetes-secret|flux-helmrelease) ;;
    *) echo "unknown backend '$BACKEND': vault, sops-git, s3, aws-secretsmanager, kubernetes-secret or flux-helmrelease" >&2; exit 2 ;;
esac
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[ -r "$CA_BUNDLE" ] || { echo "no CA bundle at $CA_BUNDLE (install ca-certificates)" >&2; exit 2; }

# Same settings wherever it runs: the release profile tuned for size, no
# timestamps or local paths in the binaries.
export SOURCE_DATE_EPOCH=0
export CARGO_PROFILE_RELEASE_LTO=thin
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
export CARGO_PROFILE_RELEASE_STRIP=symbols
export CARGO_PROFILE_RELEASE_PANIC=abort
src="$(cd "$(dirname "$0")/../.." && pwd)"
export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$src=. --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=cargo"

# sops-git links OpenSSL (git2's https and ssh): built from source and linked
# statically, so the image needs no libssl.
features=""
[ "$BACKEND" = sops-git ] && features="--features sops-git/vendored-openssl"

# CARGO_BUILD_TARGET (set for a cross build, e.g. musl on a glibc host) is
# read by cargo itself; only the output directory depends on it.
out_dir="${CARGO_TARGET_DIR:-$src/target}/release"
if [ -n "${CARGO_BUILD_TARGET:-}" ]; then
    out_dir="${CARGO_TARGET_DIR:-$src/target}/$CARGO_BUILD_TARGET/release"
fi
# shellcheck disable=SC2086 # $features is one flag and its value, or nothing
(cd "$src" && cargo build --release --locked $features \
    -p "$BACKEND" --bin "$BACKEND-backend" -p storagectl --bin storagectl)

rm -rf "$OUT"
mkdir -p "$OUT/usr/local/bin" "$OUT/etc/ssl/certs" "$OUT/tmp" "$OUT/data"
cp "$out_dir/$BACKEND-backend" "$OUT/usr/local/bin/backend"
cp "$out_dir/storagectl" "$OUT/usr/local/bin/storagectl"
cp "$CA_BUNDLE" "$OUT/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$OUT/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$OUT/etc/group"
chmod 1777 "$OUT/tmp"
chown 65532:65532 "$OUT/data" 2>/dev/null || true
chmod 0755 "$OUT/usr/local/bin/backend" "$OUT/usr/local/bin/storagectl"
# Fixed mtimes (the epoch): the same sources give the same layer.
find "$OUT" -exec env TZ=UTC touch -h -t 197001010000.00 {} +
