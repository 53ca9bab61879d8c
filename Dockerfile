# Multi-stage build of refund-worker (with TLS, for real providers and amqps/rediss URLs).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
RUN cargo build --release --locked --features tls

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 refund
COPY --from=build /src/target/release/refund-worker /usr/local/bin/refund-worker
COPY config /etc/refund-worker
ENV REFUND_CONFIG=/etc/refund-worker/default.toml
USER refund
ENTRYPOINT ["refund-worker"]
CMD ["run", "--metrics-addr", "0.0.0.0:9464"]
