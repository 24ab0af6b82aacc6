# saldos container image: a cached dependency layer (cargo-chef), a locked
# release build on the project's toolchain, and a distroless runtime running
# as uid/gid 65532 that works with a read-only root filesystem (the journal
# lives in /data, an EFS volume on ECS). The RDS CA bundle (PGSSLROOTCERT for
# verify-full) goes in when terraform/build_image.sh put a verified
# rds-ca-bundle.pem in the build context; RDS_CA_BUNDLE_REQUIRED=true (the
# pipeline in postgres mode) refuses to build without it.
# No `# syntax=` line: BuildKit's built-in frontend reads this file, so no
# frontend image is pulled from Docker Hub (build_image.sh takes the rust base
# from ECR Public).

ARG RUST_VERSION=1.95.0
ARG CARGO_CHEF_VERSION=0.1.73
ARG RDS_CA_BUNDLE_REQUIRED=false

FROM rust:${RUST_VERSION}-slim-trixie AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install --locked "cargo-chef@${CARGO_CHEF_VERSION}"
WORKDIR /build

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.lock changes.
RUN cargo chef cook --release --locked --recipe-path recipe.json --package saldos --bin saldos
COPY . .
# Declared here, not above, so it never invalidates the dependency layer.
ARG RDS_CA_BUNDLE_REQUIRED
RUN cargo build --release --locked --package saldos --bin saldos \
    && install -D -m 0755 target/release/saldos /out/saldos \
    && install -d -m 0700 -o 65532 -g 65532 /out/data \
    && install -d -m 0755 /out/share \
    && if [ -f rds-ca-bundle.pem ]; then \
        install -m 0444 rds-ca-bundle.pem /out/share/rds-ca-bundle.pem; \
    elif [ "$RDS_CA_BUNDLE_REQUIRED" = true ]; then \
        echo "rds-ca-bundle.pem is missing: build with terraform/build_image.sh" >&2; exit 1; \
    fi

FROM gcr.io/distroless/cc-debian13:nonroot AS runtime
COPY --from=builder /out/saldos /usr/local/bin/saldos
COPY --from=builder --chown=65532:65532 /out/data /data
COPY --from=builder /out/share/ /usr/local/share/saldos/
ENV SALDOS_DATA_DIR=/data \
    SALDOS_BIND=0.0.0.0 \
    PORT=5000 \
    SALDOS_LOG_FORMAT=json
USER 65532:65532
EXPOSE 5000
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/saldos", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/saldos"]
