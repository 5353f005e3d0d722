# The gateway's two images, from one build of the workspace. From the repository root:
#   docker build --target control -t cloudlysis/gateway-control:TAG --build-arg GIT_SHA=$(git rev-parse HEAD) .
#   docker build --target data    -t cloudlysis/gateway-data:TAG    --build-arg GIT_SHA=$(git rev-parse HEAD) .
# The second build reuses the first one's layers: the workspace is compiled once. Plain
# Dockerfile syntax: the classic builder (DOCKER_BUILDKIT=0) and BuildKit both take it.
#
# Base images are build arguments: the defaults are the public images; a machine with no
# registry passes its own (swarm/local/bases.sh makes them from Debian's packages).
# Offline builds: a `vendor/` directory at the root of the context (`cargo vendor`) is used
# instead of the crates.io registry.
# The runtime image has no shell and no package manager, and runs as non-root (65532).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
ENV CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
RUN if [ -d vendor ]; then \
      mkdir -p .cargo && printf '%s\n' '[source.crates-io]' 'replace-with = "vendored"' \
        '[source.vendored]' 'directory = "vendor"' > .cargo/config.toml; \
    fi
# version from Cargo.toml, git sha and build time from the build arguments: all shown by
# GET /version and the gateway_build_info metric
ARG GIT_SHA=unknown
ENV GATEWAY_GIT_SHA=${GIT_SHA}
RUN cargo build --release --locked -p control-plane -p data-plane \
    && mkdir -p /out/var-lib-gateway \
    && cp target/release/control-plane target/release/data-plane /out/

FROM ${RUNTIME_IMAGE} AS control
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="cloudlysis-gateway-control" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.source="https://github.com/cloudlysis/gateway"
COPY --from=build /out/control-plane /usr/local/bin/control-plane
USER 65532:65532
EXPOSE 8090
# liveness, not readiness: see docs/operations.md, "Health checks on Swarm"
HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/control-plane", "healthcheck", "--url", "http://127.0.0.1:8090/live"]
ENTRYPOINT ["/usr/local/bin/control-plane"]

FROM ${RUNTIME_IMAGE} AS data
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="cloudlysis-gateway-data" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.source="https://github.com/cloudlysis/gateway"
COPY --from=build /out/data-plane /usr/local/bin/data-plane
# the mirror cache's directory, owned by the runtime user: an empty named volume mounted
# here starts as a copy of it, so the data plane can write its cache file
COPY --from=build --chown=65532:65532 /out/var-lib-gateway /var/lib/gateway
USER 65532:65532
EXPOSE 8080 8081 9080
HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/data-plane", "healthcheck", "--url", "http://127.0.0.1:8080/live"]
ENTRYPOINT ["/usr/local/bin/data-plane"]
