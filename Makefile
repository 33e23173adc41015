# The two set-up commands of the README are `go run ./cmd/firstseen demo`
# and `make test`; CI (.ci/run) calls `make test` too.
GO ?= go

.PHONY: test build demo lint

# test installs and starts Debian's clickhouse-server when it is missing,
# then runs every test with the race detector. Tests that need ClickHouse
# fail (not skip) here when it cannot be reached. The allocation tests run
# again without -race, whose instrumentation (and Pebble's invariant checks)
# allocate.
test:
	.ci/clickhouse ensure
	FIRSTSEEN_REQUIRE_CLICKHOUSE=1 $(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -count=1 -run 'Allocate' ./...

build:
	CGO_ENABLED=0 $(GO) build -o bin/firstseen ./cmd/firstseen

demo:
	$(GO) run ./cmd/firstseen demo

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: the files above need formatting'; exit 1; }
	$(GO) vet ./...
