package validate

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// imageBinary builds cmd/firstseen as the Dockerfile does: from the build
// context that .dockerignore leaves (copied to a temporary directory), with
// cgo off, for linux. The build cache makes a repeat cheap.
func imageBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		var ignore []byte
		if ignore, buildErr = os.ReadFile(filepath.Join(repoRoot, ".dockerignore")); buildErr != nil {
			return
		}
		var files []string
		if files, buildErr = ContextFiles(repoRoot, bytes.NewReader(ignore)); buildErr != nil {
			return
		}
		var dir string
		if dir, buildErr = os.MkdirTemp("", "firstseen-image-"); buildErr != nil {
			return
		}
		ctx := filepath.Join(dir, "src")
		if buildErr = CopyFiles(repoRoot, ctx, files); buildErr != nil {
			return
		}
		binary = filepath.Join(dir, "firstseen")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", binary, "./cmd/firstseen")
		cmd.Dir = ctx
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOWORK=off", "GOFLAGS=-mod=readonly")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = errors.New("go build ./cmd/firstseen in the Docker build context: " + err.Error() + "\n" + string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// TestImageBinaryIsStatic: the binary runs on distroless static (or
// scratch): no dynamic loader, no shared libraries.
func TestImageBinaryIsStatic(t *testing.T) {
	f, err := elf.Open(imageBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary is dynamically linked (program header %v): build it with CGO_ENABLED=0", p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v", libs)
	}
}

var flagRE = regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z0-9-]+)`)

// helpVarRE matches a FIRSTSEEN_*_PASSWORD variable named in the help.
var helpVarRE = regexp.MustCompile(`FIRSTSEEN_[A-Z0-9_]*PASSWORD\b`)

// runFlags are the flags of `firstseen run`, from its --help.
func runFlags(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command(imageBinary(t), "run", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("firstseen run --help: %v\n%s", err, out)
	}
	flags := map[string]bool{}
	for _, m := range flagRE.FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	// Variables the help names that are no flag's: the passwords
	// (FIRSTSEEN_CLICKHOUSE_PASSWORD), which have no flag on purpose.
	for _, v := range helpVarRE.FindAllString(string(out), -1) {
		flags["$"+v] = true
	}
	if !flags["topic"] || !flags["brokers"] {
		t.Fatalf("firstseen run --help lists no --topic or --brokers: the flag parsing of this test is out of date:\n%s", out)
	}
	return flags
}

// manifestVariables are the FIRSTSEEN_* variables the manifests set: in the
// ConfigMaps and env of every render, and those commented out as examples
// in deploy/base/firstseen.env.
func manifestVariables(t *testing.T) map[string]string {
	t.Helper()
	vars := map[string]string{} // name -> where
	for _, dir := range kustomizations(t, deployDir) {
		_, objs, err := Render(filepath.Join(deployDir, dir))
		if err != nil {
			t.Fatal(err)
		}
		for _, cm := range byKind(objs, "ConfigMap") {
			for k := range dict(cm, "data") {
				vars[k] = "deploy/" + dir + " ConfigMap " + jstr(cm, "metadata", "name")
			}
		}
		for _, c := range jlist(byKind(objs, "StatefulSet")[0], "spec", "template", "spec", "containers") {
			for _, e := range jlist(c, "env") {
				vars[jstr(e, "name")] = "deploy/" + dir + " StatefulSet env"
			}
		}
	}
	f, err := os.Open(filepath.Join(deployDir, "base", "firstseen.env"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	commented := regexp.MustCompile(`^#\s*(FIRSTSEEN_[A-Z0-9_]+)=`)
	for s := bufio.NewScanner(f); s.Scan(); {
		if m := commented.FindStringSubmatch(s.Text()); m != nil {
			vars[m[1]] = "deploy/base/firstseen.env (commented out)"
		}
	}
	return vars
}

// unknownVariables lists the FIRSTSEEN_* variables of vars (name -> where
// it is set) that name no flag.
func unknownVariables(flags map[string]bool, vars map[string]string) []string {
	names := make([]string, 0, len(vars))
	for name := range vars {
		names = append(names, name)
	}
	sort.Strings(names)
	var problems []string
	for _, name := range names {
		if !strings.HasPrefix(name, "FIRSTSEEN_") {
			continue
		}
		flag := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, "FIRSTSEEN_")), "_", "-")
		if !flags[flag] && !flags["$"+name] {
			problems = append(problems, fmt.Sprintf("%s (%s) names no flag of `firstseen run`: it lists no --%s", name, vars[name], flag))
		}
	}
	return problems
}

// TestManifestsSetRealFlags: every FIRSTSEEN_* variable of the manifests is
// a flag of `firstseen run` (FIRSTSEEN_CLICKHOUSE_ADDR is
// --clickhouse-addr), or a password variable its help names
// (FIRSTSEEN_CLICKHOUSE_PASSWORD, which has no flag on purpose). firstseen ignores a variable that names no flag, so a
// typo, or a flag the binary lacks, would silently not take effect.
func TestManifestsSetRealFlags(t *testing.T) {
	flags := runFlags(t)
	vars := manifestVariables(t)
	for _, p := range unknownVariables(flags, vars) {
		t.Error(p)
	}
	// And a misspelled one is caught.
	vars["FIRSTSEEN_CLICKHOUSE_ADR"] = "a broken copy"
	if p := unknownVariables(flags, vars); len(p) != 1 || !strings.Contains(p[0], "FIRSTSEEN_CLICKHOUSE_ADR") {
		t.Errorf("a misspelled variable is not caught: %q", p)
	} else {
		t.Logf("caught, as it should be: %s", p[0])
	}
}

// TestSettingsAreAccepted starts `firstseen run` with each render's
// settings (the ConfigMap, then the pod's env on top), with Kafka and
// ClickHouse pointed at a closed port on loopback, and checks that it does
// not reject a value: that exits at once with status 2.
func TestSettingsAreAccepted(t *testing.T) {
	bin := imageBinary(t)
	for _, dir := range kustomizations(t, deployDir) {
		t.Run(dir, func(t *testing.T) {
			_, objs, err := Render(filepath.Join(deployDir, dir))
			if err != nil {
				t.Fatal(err)
			}
			var c any
			for _, x := range jlist(byKind(objs, "StatefulSet")[0], "spec", "template", "spec", "containers") {
				if jstr(x, "name") == "firstseen" {
					c = x
				}
			}
			env := podEnv(objs, c, func(f string, a ...any) { t.Errorf(f, a...) })
			var environ []string
			for _, kv := range os.Environ() {
				if !strings.HasPrefix(kv, "FIRSTSEEN_") && !strings.HasPrefix(kv, "GOMEMLIMIT=") {
					environ = append(environ, kv)
				}
			}
			for k, v := range env {
				environ = append(environ, k+"="+v)
			}
			environ = append(environ,
				"FIRSTSEEN_BROKERS=127.0.0.1:1",
				"FIRSTSEEN_CLICKHOUSE_ADDR=127.0.0.1:1",
				"FIRSTSEEN_CLICKHOUSE_PASSWORD=placeholder",
				"FIRSTSEEN_INSTANCE_ID=firstseen-0",
				"FIRSTSEEN_STATE_DIR="+t.TempDir(),
				"FIRSTSEEN_METRICS_ADDR=127.0.0.1:0",
			)
			cmd := exec.Command(bin, "run")
			cmd.Env = environ
			var stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stderr, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				var exit *exec.ExitError
				if errors.As(err, &exit) && exit.ExitCode() == 2 {
					t.Fatalf("firstseen run rejects the settings of deploy/%s (exit status 2):\n%s", dir, stderr.String())
				}
				// Exit 1 (no Kafka or ClickHouse there) means the settings passed.
			case <-time.After(3 * time.Second):
				cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-done:
				case <-time.After(10 * time.Second):
					cmd.Process.Kill()
					<-done
				}
			}
		})
	}
}
