# syntax=docker/dockerfile:1
# chat-server: the STOMP-over-WebSocket chat server.
# Build from the repository root:
#   docker build -f docker/chat-server.Dockerfile -t ghcr.io/chatcluster/chat-server:0.1.0 .
# The image runs as the distroless "nonroot" user (65532), which the operator's pod security
# settings (runAsNonRoot, read-only root file system) expect.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p chat-server \
 && cp target/release/chat-server /chat-server

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /chat-server /usr/local/bin/chat-server
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/chat-server"]
