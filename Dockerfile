# Multi-stage build of refund-worker (with TLS, for real providers and amqps/rediss URLs).
# Used by docker-compose.yml for the worker, the sandbox and the load generator.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
# The workspace: the worker (src/) and its member crates (crates/: the job schema, the sandbox).
COPY crates ./crates
COPY src ./src
# Cargo.toml names the benchmark target; cargo refuses a manifest whose target file is missing.
COPY benches ./benches
# The built-in defaults are compiled in (include_str!).
COPY config/default.toml ./config/default.toml
RUN cargo build --release --locked --features tls

FROM debian:bookworm-slim
# bash: the compose healthchecks speak HTTP over /dev/tcp (no curl needed).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates bash && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 refund
COPY --from=build /src/target/release/refund-worker /usr/local/bin/refund-worker
COPY config/default.toml /etc/refund-worker/default.toml
ENV REFUND_CONFIG=/etc/refund-worker/default.toml
USER refund
EXPOSE 9464
ENTRYPOINT ["refund-worker"]
CMD ["run", "--metrics-addr", "0.0.0.0:9464"]
