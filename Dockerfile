# syntax=docker/dockerfile:1
# One recipe for every backend image: `--build-arg BACKEND=<crate>` picks the
# backend (vault, sops-git, s3, aws-secretsmanager, kubernetes-secret,
# flux-helmrelease). The binaries are static (musl), so the image is
# `scratch` plus what deploy/image/rootfs.sh lays out: the backend,
# storagectl (for the HEALTHCHECK and `kubectl exec … storagectl register`),
# CA certificates and a non-root user. No shell, no package manager.
#
#   docker build --build-arg BACKEND=vault -t capact-storage/vault-backend:0.1.0 .
#
# Reproducible: --locked dependencies, a fixed toolchain tag, paths remapped,
# fixed file times. deploy/image/build-local.sh builds the same final stage
# from a rootfs made on the host (no Docker engine needed) and prints its size.

ARG RUST_IMAGE=rust:1.95.0-alpine3.22
# The stage (or image) holding /rootfs; build-local.sh points it at a rootfs
# built on the host.
ARG ROOTFS=build

FROM ${RUST_IMAGE} AS build
ARG BACKEND
RUN test -n "$BACKEND" || (echo "set --build-arg BACKEND=<crate>, e.g. vault" >&2; exit 1)
# musl-dev: C runtime for ring and libgit2; perl and make: OpenSSL built from
# source for sops-git; ca-certificates: the bundle copied into the image.
RUN apk add --no-cache musl-dev perl make ca-certificates
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    deploy/image/rootfs.sh "$BACKEND" /rootfs

FROM ${ROOTFS} AS rootfs

FROM scratch
ARG BACKEND
LABEL org.opencontainers.image.title="capact-storage-${BACKEND}" \
      org.opencontainers.image.description="Capact Hub delegated storage backend: ${BACKEND}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=rootfs /rootfs/ /
# /data owned by the runtime user, so a fresh named volume mounted there
# (docker-compose) is writable; in Kubernetes the chart mounts a PVC.
COPY --from=rootfs --chown=65532:65532 /rootfs/data /data
# Numeric, so that runAsNonRoot can verify it.
USER 65532:65532
# sops-git keeps its working clone and generated key here.
ENV APP_DATA_DIR=/data
# The plaintext health-only port, on by default in the image: the
# HEALTHCHECK below works whether or not the gRPC port uses (mutual) TLS.
ENV APP_HEALTH_ADDR=:50052
EXPOSE 50051 50052 9464
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["/usr/local/bin/storagectl", "--url", "127.0.0.1:50052", "health"]
ENTRYPOINT ["/usr/local/bin/backend"]
