#!/usr/bin/env bash
# Builds a backend's image without a Docker engine and prints its size:
# deploy/image/rootfs.sh makes the static musl rootfs on this host, buildah
# turns it into a local image, and the Dockerfile's final stage is built on
# top of it (ROOTFS build argument), so the image has exactly the recipe's
# layers and config. The result is an OCI archive in OUT_DIR.
#
#   deploy/image/build-local.sh <backend crate>...   (default: all six)
#
# Needs: Debian packages buildah and musl-tools, and
# `rustup target add x86_64-unknown-linux-musl`.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT_DIR="${OUT_DIR:-${CAPACT_STORAGE_CACHE:-$HOME/.cache/capact-storage}/images}"
LIMIT_BYTES=$((30 * 1000 * 1000))
backends=("$@")
[ ${#backends[@]} -gt 0 ] || backends=(vault sops-git s3 aws-secretsmanager kubernetes-secret flux-helmrelease)

for tool in buildah musl-gcc; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install buildah musl-tools" >&2; exit 2; }
done
rustup target list --installed | grep -qx x86_64-unknown-linux-musl ||
    { echo "missing the musl target: rustup target add x86_64-unknown-linux-musl" >&2; exit 2; }

export CARGO_BUILD_TARGET=x86_64-unknown-linux-musl
export CC_x86_64_unknown_linux_musl=musl-gcc
bah() { buildah --storage-driver vfs "$@"; }
mkdir -p "$OUT_DIR"
status=0
for backend in "${backends[@]}"; do
    work="$(mktemp -d)"
    deploy/image/rootfs.sh "$backend" "$work/rootfs"

    # A local image holding /rootfs, standing in for the build stage.
    ctr="$(bah from scratch)"
    bah copy "$ctr" "$work/rootfs" /rootfs >/dev/null
    bah commit --quiet --rm --timestamp 0 "$ctr" "localhost/capact-rootfs-$backend" >/dev/null

    image="localhost/capact-storage/$backend-backend:local"
    bah build --quiet --pull=never --timestamp 0 --layers=false --format docker \
        --build-arg "BACKEND=$backend" --build-arg "ROOTFS=localhost/capact-rootfs-$backend" \
        -t "$image" -f Dockerfile "$work" >/dev/null
    # Both binaries start in the image as its user: static, nothing missing.
    ctr="$(bah from --pull=never "$image")"
    for bin in backend storagectl; do
        bah run --isolation chroot "$ctr" -- "/usr/local/bin/$bin" --help >/dev/null ||
            { echo "$backend: /usr/local/bin/$bin does not start in the image" >&2; status=1; }
    done
    bah rm "$ctr" >/dev/null
    archive="$OUT_DIR/$backend-backend.oci.tar"
    rm -f "$archive"
    bah push --quiet "$image" "oci-archive:$archive" >/dev/null

    # Compressed size as a registry stores it: the gzipped layers plus config.
    python3 - "$archive" "$backend" "$LIMIT_BYTES" <<'PY' || status=1
import json, sys, tarfile
archive, backend, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
with tarfile.open(archive) as t:
    index = json.load(t.extractfile("index.json"))
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.load(t.extractfile(f"blobs/sha256/{digest}"))
    config = json.load(t.extractfile("blobs/sha256/" + manifest["config"]["digest"].split(":")[1]))
size = sum(l["size"] for l in manifest["layers"]) + manifest["config"]["size"]
user = config["config"].get("User")
print(f"{backend}: {size / 1e6:.1f} MB compressed, {len(manifest['layers'])} layer(s), user {user}, "
      f"entrypoint {config['config'].get('Entrypoint')}")
if user != "65532:65532":
    print(f"{backend}: image user is {user}, not 65532:65532", file=sys.stderr); sys.exit(1)
if size > limit:
    print(f"{backend}: {size} bytes is above the {limit}-byte target", file=sys.stderr); sys.exit(1)
PY
    bah rmi -f "$image" "localhost/capact-rootfs-$backend" >/dev/null 2>&1 || true
    rm -rf "$work"
done
exit $status
