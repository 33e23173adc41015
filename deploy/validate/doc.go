// Package validate checks firstseen's deployment artifacts offline, with the
// tools their ecosystems use:
//
//   - the kustomize overlays in deploy/ are rendered with kustomize's own
//     library (krusty, what `kubectl apply -k` runs) and every object is
//     validated by kubeconform against strict JSON schemas generated from the
//     OpenAPI spec of real Kubernetes releases (k8s.io/kubernetes, from the Go
//     module proxy): unknown fields and wrong types are errors;
//   - the Dockerfile goes through BuildKit's build checks, the rules of
//     `docker build --check`, with base images resolved offline;
//   - the Docker build context that .dockerignore leaves is built as the
//     Dockerfile builds it, and the binary is checked to be static and to
//     know every FIRSTSEEN_* variable the manifests set;
//   - the Grafana dashboard and the Prometheus alert rules in
//     deploy/monitoring: the dashboard's structure, every PromQL query
//     checked by promtool (the dashboard's as recording rules) and against
//     the metric list deploy/monitoring/metrics.txt (with the PromQL
//     parser's syntax tree), the rules' labels, annotations and runbooks,
//     and their promtool unit tests.
//
// It is a module of its own so that the main module's go.mod stays free of
// kustomize, kubeconform, BuildKit and Prometheus. It needs promtool on
// $PATH (or $PROMTOOL): .ci/promtool ensure installs Debian's. Run it from
// the repository root with
//
//	(cd deploy/validate && go test -count=1 ./...)
package validate
