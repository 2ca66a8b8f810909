# syntax=docker/dockerfile:1
# chat-operator: the Kubernetes operator for ChatCluster resources.
# Build from the repository root:
#   docker build -f docker/chat-operator.Dockerfile -t ghcr.io/chatcluster/chat-operator:0.1.0 .
# The image runs as the distroless "nonroot" user (65532), which the operator's pod security
# settings (runAsNonRoot, read-only root file system) expect.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p chat-operator \
 && cp target/release/chat-operator /chat-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /chat-operator /usr/local/bin/chat-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/chat-operator"]
CMD ["run"]
