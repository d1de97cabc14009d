# syntax=docker/dockerfile:1
# One recipe for every backend image: `--build-arg BACKEND=<crate>` picks the
# backend (vault, sops-git, s3, aws-secretsmanager, kubernetes-secret,
# flux-helmrelease). The binary is a static musl build, so the runtime image
# is distroless "static" (CA certificates, a non-root user, no shell): about
# 2 MB of base plus the backend and storagectl (for `storagectl health` and
# `storagectl register` via `kubectl exec`).
#
#   docker build --build-arg BACKEND=vault -t capact-storage/vault-backend:0.1.0 .
#
# Reproducible: --locked dependencies, fixed toolchain and base tags, paths
# remapped, no timestamps in the binaries.

ARG RUST_IMAGE=rust:1.95.0-alpine3.22
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${RUST_IMAGE} AS build
ARG BACKEND
RUN test -n "$BACKEND" || (echo "set --build-arg BACKEND=<crate>, e.g. vault" >&2; exit 1)
# musl-dev: C runtime for ring and the vendored libgit2 (sops-git).
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
ENV CARGO_PROFILE_RELEASE_LTO=thin \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_PROFILE_RELEASE_PANIC=abort \
    SOURCE_DATE_EPOCH=0 \
    RUSTFLAGS="--remap-path-prefix=/src=. --remap-path-prefix=/usr/local/cargo=cargo"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p "$BACKEND" --bin "$BACKEND-backend" -p storagectl --bin storagectl \
 && mkdir -p /out \
 && cp "target/release/$BACKEND-backend" /out/backend \
 && cp target/release/storagectl /out/storagectl

FROM ${RUNTIME_IMAGE}
ARG BACKEND
LABEL org.opencontainers.image.title="capact-storage-${BACKEND}" \
      org.opencontainers.image.description="Capact Hub delegated storage backend: ${BACKEND}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/backend /usr/local/bin/backend
COPY --from=build /out/storagectl /usr/local/bin/storagectl
# 65532 is distroless' "nonroot"; numeric so runAsNonRoot can verify it.
USER 65532:65532
# sops-git keeps its working clone and generated key here (mount a volume).
ENV APP_DATA_DIR=/data
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["/usr/local/bin/storagectl", "--url", "127.0.0.1:50051", "health"]
ENTRYPOINT ["/usr/local/bin/backend"]
