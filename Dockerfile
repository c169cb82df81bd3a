# syntax=docker/dockerfile:1
# apikeyd's container image: the helm chart in helm/apikeyd runs it.
#   docker build -t ghcr.io/apikeyd/apikeyd:0.1.0 .

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep the crate registry and compiled dependencies between builds;
# the binary is copied out because the target cache is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p apikeyd \
    && install -D -m 0755 target/release/apikeyd /out/apikeyd

# debian-slim rather than distroless: `kubectl exec … cat` must be able to read
# the bootstrap root key, and operators need a shell to debug in.
FROM debian:bookworm-slim AS runtime
# Debian point releases move package versions; the base tag is what is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 apikeyd \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin apikeyd \
    && install -d -o 65532 -g 65532 -m 0700 /var/lib/apikeyd
COPY --from=build /out/apikeyd /usr/local/bin/apikeyd

ENV APIKEYD_GRPC_ADDR=0.0.0.0:50051 \
    APIKEYD_HTTP_ADDR=0.0.0.0:8080 \
    APIKEYD_DATA_DIR=/var/lib/apikeyd
VOLUME ["/var/lib/apikeyd"]
# Numeric, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER 65532:65532
WORKDIR /var/lib/apikeyd
EXPOSE 50051 8080
ENTRYPOINT ["apikeyd"]
CMD ["serve"]
