#!/usr/bin/env bash
# Builds a genuine kube-apiserver and the etcd it is released with from the
# published Go modules (no container images, no vendored tree) and caches them
# outside the repository, keyed by version:
#   $CAPACT_STORAGE_CACHE/kube/<k8s version>/{kube-apiserver,etcd}
# Idempotent: returns at once when both binaries are cached. The first build
# takes roughly 10-20 minutes on 2 cores. Needs Go (see go.mod) and a
# reachable Go module proxy.
set -euo pipefail

KUBE_VERSION=v1.37.2
here="$(cd "$(dirname "$0")" && pwd)"
CACHE="${CAPACT_STORAGE_CACHE:-$HOME/.cache/capact-storage}"
out="$CACHE/kube/$KUBE_VERSION"

# The version is stamped in at link time (as upstream's build does), so
# `/version` and `--version` report it; a binary without it is rebuilt.
have_apiserver() {
    [ -x "$out/kube-apiserver" ] && [ "$("$out/kube-apiserver" --version 2>/dev/null)" = "Kubernetes $KUBE_VERSION" ]
}
if have_apiserver && [ -x "$out/etcd" ]; then
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    for dir in /usr/local/go/bin "$HOME/go/bin" "$HOME/.local/go/bin"; do
        [ -x "$dir/go" ] && PATH="$dir:$PATH" && break
    done
fi
command -v go >/dev/null 2>&1 || { echo "kube: Go is required to build kube-apiserver" >&2; exit 1; }

mkdir -p "$out"
export GOFLAGS=-mod=mod CGO_ENABLED=0
flags=(-trimpath -ldflags=-s\ -w)
minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
v=k8s.io/component-base/version
kube_ldflags="-s -w -X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"

if ! have_apiserver; then
    echo "kube: building kube-apiserver $KUBE_VERSION into $out (first time only, takes a while)"
    # Build to a temporary name and rename: an interrupted build never leaves
    # a binary that looks cached.
    (cd "$here/build" && go build -trimpath -ldflags="$kube_ldflags" -o "$out/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
    mv "$out/kube-apiserver.tmp" "$out/kube-apiserver"
fi
if [ ! -x "$out/etcd" ]; then
    echo "kube: building etcd for kube $KUBE_VERSION into $out"
    (cd "$here/etcd" && go build "${flags[@]}" -o "$out/etcd.tmp" .)
    mv "$out/etcd.tmp" "$out/etcd"
fi
