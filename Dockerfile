# syntax=docker/dockerfile:1

# firstseen: a static Go binary on distroless (no shell, no package
# manager), running as the unprivileged user 65532.
#
#   docker build -t firstseen .
#   docker run --rm -v firstseen-state:/var/lib/firstseen firstseen \
#     run --brokers kafka:9092 --topic activity --clickhouse-addr clickhouse:9000
#
# Kubernetes manifests are in deploy/ (docs/kubernetes.md).

# The Go release of go.mod's go line: the image sets GOTOOLCHAIN=local, so an
# older one would refuse to build.
ARG GO_VERSION=1.26.8

# The build runs on the builder's own platform and cross-compiles (no cgo:
# Pebble is pure Go), so a multi-platform build needs no emulation.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src

# Modules first, in their own layer: rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download && go mod verify

COPY . .
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w" -o /out/firstseen ./cmd/firstseen

# The state directory, owned by the runtime user: a fresh Docker volume
# mounted there takes this ownership, so it is writable without root.
RUN mkdir -p /out/state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/firstseen /firstseen
COPY --from=build --chown=65532:65532 /out/state /var/lib/firstseen
ENV FIRSTSEEN_STATE_DIR=/var/lib/firstseen
VOLUME ["/var/lib/firstseen"]
USER 65532:65532
# Prometheus /metrics, /healthz and /readyz (--metrics-addr, default :9090).
EXPOSE 9090
ENTRYPOINT ["/firstseen"]
CMD ["run"]
