package validate

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The tests run in deploy/validate.
const (
	repoRoot  = "../.."
	deployDir = ".."
)

var (
	schemasOnce sync.Once
	schemaRoot  string
	schemasErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if schemaRoot != "" {
		os.RemoveAll(schemaRoot)
	}
	os.Exit(code)
}

// validators returns a kubeconform validator for each of KubeReleases,
// writing their schemas once per test binary.
func validators(t *testing.T) []*KubeValidator {
	t.Helper()
	schemasOnce.Do(func() {
		schemaRoot, schemasErr = os.MkdirTemp("", "firstseen-kube-schemas-")
		for _, r := range KubeReleases {
			if schemasErr == nil {
				schemasErr = r.WriteSchemas(schemaRoot)
			}
		}
	})
	if schemasErr != nil {
		t.Fatalf("Kubernetes schemas: %v", schemasErr)
	}
	var vs []*KubeValidator
	for _, r := range KubeReleases {
		v, err := NewKubeValidator(schemaRoot, r)
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	return vs
}

// kustomizations lists the directories under root that hold a
// kustomization.yaml, relative to root.
func kustomizations(t *testing.T, root string) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "validate" {
			return filepath.SkipDir
		}
		if d.Name() == "kustomization.yaml" {
			rel, err := filepath.Rel(root, filepath.Dir(p))
			dirs = append(dirs, rel)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(dirs)
	return dirs
}

// copyDeploy copies deploy/ (without this module) to a new directory and
// returns it.
func copyDeploy(t *testing.T) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(deployDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(deployDir, p)
		if d.IsDir() {
			if rel == "validate" {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// replaceOnce replaces old by new in the file, which must hold old exactly
// once (else the test's fixture no longer matches the manifests).
func replaceOnce(t *testing.T, file, old, new string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), old); n != 1 {
		t.Fatalf("%s holds %q %d times, want once: update this test", file, old, n)
	}
	if err := os.WriteFile(file, []byte(strings.Replace(string(data), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}

func dict(v any, path ...any) map[string]any {
	m, _ := jget(v, path...).(map[string]any)
	return m
}

// num is an integer field: YAML numbers decode as int, int64 or float64.
func num(v any, path ...any) (int64, bool) {
	switch n := jget(v, path...).(type) {
	case int:
		return int64(n), true
	case int64:
		return n, true
	case float64:
		return int64(n), n == float64(int64(n))
	}
	return 0, false
}

func byKind(objs []Object, kind string) []Object {
	var out []Object
	for _, o := range objs {
		if o["kind"] == kind {
			out = append(out, o)
		}
	}
	return out
}

func named(objs []Object, kind, name string) Object {
	for _, o := range byKind(objs, kind) {
		if jstr(o, "metadata", "name") == name {
			return o
		}
	}
	return nil
}

// subset reports whether every label of sel is in labels.
func subset(sel, labels map[string]any) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

var quantityRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$`)

// mebibytes parses a memory quantity (512Mi, 1Gi, 536870912, 500M).
func mebibytes(q any) (float64, error) {
	s := fmt.Sprint(q)
	m := quantityRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("memory quantity %q: not understood by this test", s)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	mult := map[string]float64{"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[m[2]]
	return v * mult / (1 << 20), nil
}

// podEnv is the environment of the StatefulSet's firstseen container as
// the kubelet builds it: the ConfigMaps of envFrom, then env on top (env
// wins). Variables that come from a Secret or the downward API have the
// value "<from ...>".
func podEnv(objs []Object, container any, bad func(string, ...any)) map[string]string {
	env := map[string]string{}
	for _, ef := range jlist(container, "envFrom") {
		name := jstr(ef, "configMapRef", "name")
		if name == "" {
			continue
		}
		cm := named(objs, "ConfigMap", name)
		if cm == nil {
			bad("envFrom names the ConfigMap %q, which the render lacks", name)
			continue
		}
		for k, v := range dict(cm, "data") {
			env[k] = fmt.Sprint(v)
		}
	}
	for _, e := range jlist(container, "env") {
		name := jstr(e, "name")
		switch {
		case jget(e, "valueFrom", "secretKeyRef") != nil:
			env[name] = "<from secret>"
		case jget(e, "valueFrom") != nil:
			env[name] = "<from valueFrom>"
		default:
			env[name] = jstr(e, "value")
		}
	}
	return env
}

func durationOr(s string, def time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	return time.ParseDuration(s)
}
