# Multi-stage build: a release binary on a small Debian base, running as a non-root user.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The workspace's other member (the benchmark harness): cargo needs it to load the workspace, and
# builds only the server.
COPY bench/Cargo.toml ./bench/
COPY bench/src ./bench/src
RUN cargo build --release --locked --bin agent-server \
 && strip target/release/agent-server

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /app agent
COPY --from=build /src/target/release/agent-server /usr/local/bin/agent-server
USER 10001
WORKDIR /app
# Listening on all interfaces requires AUTH_MODE=api-key|jwt (or AUTH_MODE=none with
# ALLOW_UNAUTHENTICATED=true behind a trusted gateway): the server refuses to start otherwise.
# Two malloc arenas: glibc's default (8 per core) holds freed memory in each of them.
ENV HOST=0.0.0.0 PORT=3000 SQLITE_PATH=/app/data/agent-server.db LOG_FORMAT=json MALLOC_ARENA_MAX=2
EXPOSE 3000
STOPSIGNAL SIGTERM
ENTRYPOINT ["agent-server"]
CMD ["serve"]
