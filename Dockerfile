# One image for every service: build the workspace once, ship the binaries on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p gateway -p orders -p products -p webhook-publisher -p notifier -p dlq --bins \
 && mkdir /out && cp target/release/gateway target/release/orders target/release/products \
    target/release/webhook-publisher target/release/notifier target/release/dlq target/release/dev-token /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
ENV DATA_DIR=/data RUST_LOG=info
VOLUME /data
