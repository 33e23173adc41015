package validate

import (
	"encoding/base64"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestManifestsValidate renders every kustomization under deploy/ and
// validates each object against the strict schema of its kind, for each
// Kubernetes release of KubeReleases.
func TestManifestsValidate(t *testing.T) {
	vs := validators(t)
	dirs := kustomizations(t, deployDir)
	if len(dirs) < 2 {
		t.Fatalf("found kustomizations %v under deploy/, want base and overlays/example at least", dirs)
	}
	for _, dir := range dirs {
		t.Run(dir, func(t *testing.T) {
			stream, objs, err := Render(filepath.Join(deployDir, dir))
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) == 0 {
				t.Fatal("renders no objects")
			}
			for _, v := range vs {
				for _, p := range v.Validate("deploy/"+dir, stream) {
					t.Error(p)
				}
			}
		})
	}
}

// TestBrokenManifestsAreRejected breaks a copy of the manifests in the ways
// people do, renders the example overlay from it and checks that the
// validation above rejects each, naming the field.
func TestBrokenManifestsAreRejected(t *testing.T) {
	vs := validators(t)
	cases := []struct {
		name, file, old, new string
		want                 []string // all in one problem line
	}{
		{"misspelled field", "base/statefulset.yaml", "          readinessProbe:", "          readinesProbe:",
			[]string{"StatefulSet/firstseen", "/spec/template/spec/containers/0", "readinesProbe"}},
		{"misspelled field in a PodDisruptionBudget", "base/poddisruptionbudget.yaml", "  maxUnavailable: 1", "  maxUnavailabel: 1",
			[]string{"PodDisruptionBudget/firstseen", "/spec", "maxUnavailabel"}},
		{"field at the wrong level", "base/service.yaml", "  clusterIP: None", "  clusterIp: None",
			[]string{"Service/firstseen", "/spec", "clusterIp"}},
		{"string for an integer", "base/statefulset.yaml", "terminationGracePeriodSeconds: 60", "terminationGracePeriodSeconds: 60s",
			[]string{"/spec/template/spec/terminationGracePeriodSeconds", "integer"}},
		{"quoted number for an integer", "base/statefulset.yaml", "containerPort: 9090", `containerPort: "9090"`,
			[]string{"/spec/template/spec/containers/0/ports/0/containerPort", "integer"}},
		{"object for a list", "base/statefulset.yaml", `drop: ["ALL"]`, `drop: {all: true}`,
			[]string{"/spec/template/spec/containers/0/securityContext/capabilities/drop", "array"}},
		{"required field missing", "base/statefulset.yaml", "        - name: firstseen\n          image: firstseen", "        - image: firstseen",
			[]string{"/spec/template/spec/containers/0", "name"}},
		{"API version removed from Kubernetes", "base/poddisruptionbudget.yaml", "apiVersion: policy/v1", "apiVersion: policy/v1beta1",
			[]string{"PodDisruptionBudget/firstseen", "could not find schema"}},
		{"unknown field added by an overlay patch", "overlays/example/kustomization.yaml", "        value: standard-rwo",
			"        value: standard-rwo\n      - op: add\n        path: /spec/template/spec/restartPolicyy\n        value: Always",
			[]string{"StatefulSet/firstseen", "restartPolicyy"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyDeploy(t)
			replaceOnce(t, filepath.Join(dir, c.file), c.old, c.new)
			stream, _, err := Render(filepath.Join(dir, "overlays", "example"))
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range vs {
				problems := v.Validate("broken copy", stream)
				if len(problems) == 0 {
					t.Fatalf("%s: the broken manifest (%s: %q -> %q) passed validation", v.release, c.file, c.old, c.new)
				}
				found := false
				for _, p := range problems {
					ok := true
					for _, w := range c.want {
						ok = ok && strings.Contains(p, w)
					}
					found = found || ok
				}
				if !found {
					t.Errorf("%s: no problem mentions all of %q; got:\n  %s", v.release, c.want, strings.Join(problems, "\n  "))
				}
				t.Logf("rejected, as it should be:\n  %s", strings.Join(problems, "\n  "))
			}
		})
	}
}

// TestManifestsRunFirstseen checks, in every render, what a Kubernetes
// deployment of firstseen needs beyond valid objects, and that the parts
// that must agree do.
func TestManifestsRunFirstseen(t *testing.T) {
	for _, dir := range kustomizations(t, deployDir) {
		t.Run(dir, func(t *testing.T) {
			_, objs, err := Render(filepath.Join(deployDir, dir))
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range firstseenProblems(objs, dir != "base") {
				t.Error(p)
			}
		})
	}
}

// firstseenProblems lists what the render lacks or gets wrong for firstseen.
func firstseenProblems(objs []Object, overlay bool) (problems []string) {
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	sets := byKind(objs, "StatefulSet")
	if len(sets) != 1 {
		bad("%d StatefulSets, want 1", len(sets))
		return problems
	}
	sts := sets[0]
	pod := jget(sts, "spec", "template")
	podLabels := dict(pod, "metadata", "labels")
	if p := jstr(sts, "spec", "podManagementPolicy"); p != "Parallel" {
		bad("StatefulSet podManagementPolicy %q, want Parallel", p)
	}
	if !subset(dict(sts, "spec", "selector", "matchLabels"), podLabels) {
		bad("StatefulSet selector %v does not select its pods %v", dict(sts, "spec", "selector", "matchLabels"), podLabels)
	}

	var c any
	for _, x := range jlist(pod, "spec", "containers") {
		if jstr(x, "name") == "firstseen" {
			c = x
		}
	}
	if c == nil {
		bad("no container named firstseen")
		return problems
	}
	env := podEnv(objs, c, bad)
	if len(jlist(c, "envFrom")) == 0 {
		bad("the container has no envFrom: the settings ConfigMap is not used")
	}
	if a := jlist(c, "args"); len(a) == 0 || a[0] != "run" {
		bad("container args %v, want [run ...]", a)
	}

	// The metrics port: the container's, the probes', the Service's, the
	// scrape annotation's and --metrics-addr must all be one.
	metricsPort := int64(0)
	for _, p := range jlist(c, "ports") {
		if jstr(p, "name") == "metrics" {
			metricsPort, _ = num(p, "containerPort")
		}
	}
	if metricsPort == 0 {
		bad("the container has no port named metrics")
		return problems
	}
	addr := env["FIRSTSEEN_METRICS_ADDR"]
	if addr == "" {
		addr = ":9090"
	}
	if i := strings.LastIndex(addr, ":"); i < 0 || addr[i+1:] != strconv.FormatInt(metricsPort, 10) {
		bad("FIRSTSEEN_METRICS_ADDR %q is not the metrics port %d", addr, metricsPort)
	}
	probePort := func(probe string) {
		port := jget(c, probe, "httpGet", "port")
		if port != "metrics" {
			if n, ok := num(c, probe, "httpGet", "port"); !ok || n != metricsPort {
				bad("%s port %v is not the metrics port", probe, port)
			}
		}
	}
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/readyz"} {
		if jget(c, probe) == nil {
			bad("no %s", probe)
			continue
		}
		if p := jstr(c, probe, "httpGet", "path"); p != path {
			bad("%s path %q, want %s", probe, p, path)
		}
		probePort(probe)
	}
	// The startup probe must outlast a long restore (at least 10 minutes).
	period, _ := num(c, "startupProbe", "periodSeconds")
	if period == 0 {
		period = 10
	}
	failures, _ := num(c, "startupProbe", "failureThreshold")
	if failures == 0 {
		failures = 3
	}
	if d := time.Duration(period*failures) * time.Second; d < 10*time.Minute {
		bad("the startup probe gives up after %s: too short for a restore from the changelog", d)
	}
	ann := dict(pod, "metadata", "annotations")
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != strconv.FormatInt(metricsPort, 10) || ann["prometheus.io/path"] != "/metrics" {
		bad("pod annotations %v: want prometheus.io/scrape true, port %d, path /metrics", ann, metricsPort)
	}

	// The headless Service of the StatefulSet.
	svcName := jstr(sts, "spec", "serviceName")
	svc := named(objs, "Service", svcName)
	switch {
	case svc == nil:
		bad("StatefulSet serviceName %q: no such Service in the render", svcName)
	case jstr(svc, "spec", "clusterIP") != "None":
		bad("Service %s is not headless (clusterIP %q)", svcName, jstr(svc, "spec", "clusterIP"))
	case !subset(dict(svc, "spec", "selector"), podLabels):
		bad("Service %s selector %v does not select the pods %v", svcName, dict(svc, "spec", "selector"), podLabels)
	default:
		found := false
		for _, p := range jlist(svc, "spec", "ports") {
			n, _ := num(p, "port")
			found = found || (n == metricsPort && (jget(p, "targetPort") == "metrics" || jget(p, "targetPort") == nil))
		}
		if !found {
			bad("Service %s has no port %d to the metrics port", svcName, metricsPort)
		}
	}

	// The state volume.
	claims := jlist(sts, "spec", "volumeClaimTemplates")
	if len(claims) == 0 {
		bad("the StatefulSet has no volumeClaimTemplates")
		return problems
	}
	claim := jstr(claims[0], "metadata", "name")
	if jget(claims[0], "spec", "resources", "requests", "storage") == nil {
		bad("the volume claim template requests no storage")
	}
	mountPath := ""
	for _, m := range jlist(c, "volumeMounts") {
		if jstr(m, "name") == claim {
			mountPath = jstr(m, "mountPath")
		}
	}
	if mountPath == "" {
		bad("the container does not mount the claim %q", claim)
	} else if env["FIRSTSEEN_STATE_DIR"] != mountPath {
		bad("FIRSTSEEN_STATE_DIR %q is not the volume's mount path %q", env["FIRSTSEEN_STATE_DIR"], mountPath)
	}

	// Static membership and the password.
	for _, e := range jlist(c, "env") {
		switch jstr(e, "name") {
		case "FIRSTSEEN_INSTANCE_ID":
			if jstr(e, "valueFrom", "fieldRef", "fieldPath") != "metadata.name" {
				bad("FIRSTSEEN_INSTANCE_ID is not the pod name (fieldRef metadata.name): %v", e)
			}
		case "FIRSTSEEN_CLICKHOUSE_PASSWORD":
			name, key := jstr(e, "valueFrom", "secretKeyRef", "name"), jstr(e, "valueFrom", "secretKeyRef", "key")
			if name == "" || key == "" {
				bad("FIRSTSEEN_CLICKHOUSE_PASSWORD is not from a Secret: %v", e)
			} else if overlay {
				if s := named(objs, "Secret", name); s == nil || jget(s, "data", key) == nil {
					bad("the password's Secret %s (key %s) is not in the render", name, key)
				}
			} else if name != "firstseen-clickhouse" || key != "password" {
				bad("the password comes from Secret %s key %s; docs/kubernetes.md says firstseen-clickhouse key password", name, key)
			}
		}
	}
	for _, want := range []string{"FIRSTSEEN_INSTANCE_ID", "FIRSTSEEN_CLICKHOUSE_PASSWORD"} {
		if _, ok := env[want]; !ok {
			bad("the container does not set %s", want)
		}
	}
	for _, cm := range byKind(objs, "ConfigMap") {
		for k := range dict(cm, "data") {
			if strings.Contains(k, "PASSWORD") {
				bad("%s is in plain text in the ConfigMap %s; it belongs in a Secret", k, jstr(cm, "metadata", "name"))
			}
		}
	}
	for k, v := range env {
		if strings.Contains(k, "PASSWORD") && !strings.HasPrefix(v, "<from") {
			bad("%s is set in plain text in the pod spec, not from a Secret", k)
		}
	}

	// Resources, and the Go soft memory limit below the container's limit.
	for _, r := range []string{"cpu", "memory"} {
		if jget(c, "resources", "requests", r) == nil {
			bad("no resources.requests.%s", r)
		}
	}
	limit, err := mebibytes(jget(c, "resources", "limits", "memory"))
	if err != nil {
		bad("resources.limits.memory: %v", err)
	}
	soft := 400.0 // --memory-limit-mib's default
	if s, ok := env["FIRSTSEEN_MEMORY_LIMIT_MIB"]; ok {
		if soft, err = strconv.ParseFloat(s, 64); err != nil {
			bad("FIRSTSEEN_MEMORY_LIMIT_MIB %q: %v", s, err)
		}
	}
	if gomem, ok := env["GOMEMLIMIT"]; ok {
		bad("GOMEMLIMIT=%s overrides FIRSTSEEN_MEMORY_LIMIT_MIB; set one", gomem)
	}
	// Measured: 420 MiB peak RSS with a 400 MiB soft limit; leave 20%.
	if soft <= 0 || limit < soft*1.2 {
		bad("memory limit %.0f MiB leaves too little above FIRSTSEEN_MEMORY_LIMIT_MIB %.0f (want at least 20%% more)", limit, soft)
	}

	// A final checkpoint on SIGTERM before the kubelet's SIGKILL.
	grace, ok := num(pod, "spec", "terminationGracePeriodSeconds")
	if !ok {
		grace = 30
	}
	shutdown, err := durationOr(env["FIRSTSEEN_SHUTDOWN_TIMEOUT"], 30*time.Second)
	if err != nil {
		bad("FIRSTSEEN_SHUTDOWN_TIMEOUT: %v", err)
	}
	if time.Duration(grace)*time.Second < shutdown+10*time.Second {
		bad("terminationGracePeriodSeconds %d is not above FIRSTSEEN_SHUTDOWN_TIMEOUT %s (+10s)", grace, shutdown)
	}

	// Security.
	if jget(pod, "spec", "securityContext", "runAsNonRoot") != true {
		bad("pod securityContext.runAsNonRoot is not true")
	}
	if _, ok := num(pod, "spec", "securityContext", "fsGroup"); !ok {
		bad("pod securityContext.fsGroup is not set: the state volume may not be writable")
	}
	if jget(c, "securityContext", "readOnlyRootFilesystem") != true {
		bad("container readOnlyRootFilesystem is not true")
	}
	if jget(c, "securityContext", "allowPrivilegeEscalation") != false {
		bad("container allowPrivilegeEscalation is not false")
	}
	if d := jlist(c, "securityContext", "capabilities", "drop"); len(d) != 1 || d[0] != "ALL" {
		bad("container capabilities.drop %v, want [ALL]", d)
	}

	// The PodDisruptionBudget.
	pdbs := byKind(objs, "PodDisruptionBudget")
	if len(pdbs) != 1 {
		bad("%d PodDisruptionBudgets, want 1", len(pdbs))
		return problems
	}
	if n, ok := num(pdbs[0], "spec", "maxUnavailable"); !ok || n != 1 {
		bad("PodDisruptionBudget maxUnavailable %v, want 1", jget(pdbs[0], "spec", "maxUnavailable"))
	}
	if !subset(dict(pdbs[0], "spec", "selector", "matchLabels"), podLabels) {
		bad("PodDisruptionBudget selector %v does not select the pods %v", dict(pdbs[0], "spec", "selector", "matchLabels"), podLabels)
	}
	return problems
}

// TestMisconfiguredDeploymentIsCaught breaks what the schemas cannot see
// (parts that must agree, parts that must exist) in a copy of the
// manifests, and checks that TestManifestsRunFirstseen's checks catch each.
func TestMisconfiguredDeploymentIsCaught(t *testing.T) {
	cases := []struct{ name, file, old, new, want string }{
		{"state dir not on the volume", "base/statefulset.yaml", "value: /var/lib/firstseen", "value: /data", "FIRSTSEEN_STATE_DIR"},
		{"grace period below the shutdown timeout", "base/statefulset.yaml", "terminationGracePeriodSeconds: 60", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds"},
		{"no PodDisruptionBudget", "base/kustomization.yaml", "  - poddisruptionbudget.yaml\n", "", "PodDisruptionBudgets"},
		{"memory limit at the Go soft limit", "base/statefulset.yaml", "checkpoints.\n              memory: 512Mi", "checkpoints.\n              memory: 420Mi", "memory limit"},
		{"serviceName of no Service", "base/statefulset.yaml", "serviceName: firstseen ", "serviceName: firstseen-headless ", "serviceName"},
		{"password in the ConfigMap", "base/firstseen.env", "FIRSTSEEN_LOG_FORMAT=json", "FIRSTSEEN_LOG_FORMAT=json\nFIRSTSEEN_CLICKHOUSE_PASSWORD=hunter2", "plain text"},
		{"liveness on the wrong endpoint", "base/statefulset.yaml", "path: /healthz", "path: /readyz", "livenessProbe path"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := copyDeploy(t)
			replaceOnce(t, filepath.Join(dir, c.file), c.old, c.new)
			_, objs, err := Render(filepath.Join(dir, "overlays", "example"))
			if err != nil {
				t.Fatal(err)
			}
			problems := firstseenProblems(objs, true)
			for _, p := range problems {
				if strings.Contains(p, c.want) {
					t.Logf("caught, as it should be: %s", p)
					return
				}
			}
			t.Errorf("no problem mentions %q; got %q", c.want, problems)
		})
	}
}

// TestExamplePasswordIsAPlaceholder keeps a real password out of the
// example overlay.
func TestExamplePasswordIsAPlaceholder(t *testing.T) {
	_, objs, err := Render(filepath.Join(deployDir, "overlays", "example"))
	if err != nil {
		t.Fatal(err)
	}
	secrets := byKind(objs, "Secret")
	if len(secrets) != 1 {
		t.Fatalf("%d Secrets in the example, want 1", len(secrets))
	}
	for k, v := range dict(secrets[0], "data") {
		b, err := base64.StdEncoding.DecodeString(v.(string))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(b), "REPLACE-ME") {
			t.Errorf("the example Secret's %s is not the REPLACE-ME placeholder: keep real passwords out of the repository", k)
		}
	}
}
