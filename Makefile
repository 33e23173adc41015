# The two set-up commands of the README are `go run ./cmd/firstseen demo`
# and `make test`; CI (.ci/run) calls `make test` too.
GO ?= go

.PHONY: test build demo lint bench microbench

# test installs and starts Debian's clickhouse-server when it is missing
# (with TLS on port 9440 and a test user with a password, for the security
# tests), and installs redis-server, which the benchmark's smoke test starts,
# then runs every test with the race detector. Tests that need ClickHouse
# fail (not skip) here when it cannot be reached. The allocation tests run
# again without -race, whose instrumentation (and Pebble's invariant checks)
# allocate. Then the deployment (deploy/validate, a module of its own):
# the kustomize output validated against the Kubernetes schemas
# (kubeconform, strict), the Dockerfile against BuildKit's build checks.
# .ci/no-secrets fails the step when the output of go test holds one of the
# test passwords of testdata/secrets.env. And the dashboard and alert rules
# of deploy/monitoring, whose checks run promtool (Debian's prometheus
# package, installed when missing).
test:
	.ci/clickhouse ensure
	.ci/redis ensure
	.ci/promtool ensure
	FIRSTSEEN_REQUIRE_CLICKHOUSE=1 .ci/no-secrets $(GO) test -race -count=1 -timeout 20m ./...
	.ci/no-secrets $(GO) test -count=1 -run 'Allocate' ./...
	cd deploy/validate && $(GO) test -count=1 -timeout 20m ./...

build:
	CGO_ENABLED=0 $(GO) build -o bin/firstseen ./cmd/firstseen

demo:
	$(GO) run ./cmd/firstseen demo

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: the files above need formatting'; exit 1; }
	$(GO) vet ./...
	cd deploy/validate && $(GO) vet ./...
	cd .ci/vulndb-gen && $(GO) vet ./...

# vulncheck runs govulncheck (the pinned version below, installed into bin/
# when missing) on the main module against the offline vulnerability
# database in .ci/vulndb (vuln.go.dev cannot be reached from CI), after
# checking that the database was made for every module of the build list.
# It fails on a vulnerability that the code calls. .ci/vulndb/README.md
# says how to regenerate the database.
.PHONY: vulncheck
GOVULNCHECK_VERSION = v1.9.0
GOVULNCHECK = bin/govulncheck-$(GOVULNCHECK_VERSION)/govulncheck
vulncheck:
	cd .ci/vulndb-gen && $(GO) run . -check -out ../vulndb ../..
	test -x $(GOVULNCHECK) || GOBIN=$(CURDIR)/$(dir $(GOVULNCHECK)) $(GO) install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)
	$(GOVULNCHECK) -db file://$(CURDIR)/.ci/vulndb ./...

# bench measures firstseen end to end beside the Redis hash design it
# replaces, with a broker process, ClickHouse and redis-server (installed
# when missing), and writes results and charts to bench-out/ (see
# docs/performance.md). Flags go in BENCH_ARGS, e.g. BENCH_ARGS='--runs 1'.
bench: build
	.ci/clickhouse ensure
	.ci/redis ensure
	$(GO) build -o bin/firstseen-bench ./cmd/firstseen-bench
	bin/firstseen-bench --firstseen bin/firstseen $(BENCH_ARGS)

# microbench runs the Go benchmarks of the hot parts (decoding, uuids, key
# groups, state lookups, holdback, sink encoding) with allocation counts.
microbench:
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./operators/ ./state/ ./engine/ ./sinks/...
