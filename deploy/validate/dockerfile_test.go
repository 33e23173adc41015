package validate

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

func readDockerfile(t *testing.T) []byte {
	t.Helper()
	dt, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	return dt
}

// TestDockerfileLint: BuildKit's build checks find nothing.
func TestDockerfileLint(t *testing.T) {
	findings, err := LintDockerfile("Dockerfile", readDockerfile(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range findings {
		t.Error(f)
	}
}

// TestDockerfileLintCatchesMistakes: the checks do fire, on broken copies.
func TestDockerfileLintCatchesMistakes(t *testing.T) {
	dt := string(readDockerfile(t))
	cases := []struct{ name, old, new, rule string }{
		{"shell-form ENTRYPOINT", `ENTRYPOINT ["/firstseen"]`, `ENTRYPOINT /firstseen`, "JSONArgsRecommended"},
		{"lower-case as", "AS build", "as build", "FromAsCasing"},
		{"undefined variable", "ENV FIRSTSEEN_STATE_DIR=/var/lib/firstseen", "ENV FIRSTSEEN_STATE_DIR=$STATE_ROOT/firstseen", "UndefinedVar"},
		{"secret in ENV", "ENV FIRSTSEEN_STATE_DIR=/var/lib/firstseen", "ENV FIRSTSEEN_CLICKHOUSE_PASSWORD=changeme", "SecretsUsedInArgOrEnv"},
		{"legacy ENV syntax", "ENV FIRSTSEEN_STATE_DIR=/var/lib/firstseen", "ENV FIRSTSEEN_STATE_DIR /var/lib/firstseen", "LegacyKeyValueFormat"},
		{"relative WORKDIR", "WORKDIR /src", "WORKDIR src", "WorkdirRelativePath"},
		{"undefined ARG in FROM", "golang:${GO_VERSION}-bookworm", "golang:${GO_RELEASE}-bookworm", "UndefinedArgInFrom"},
		{"two CMDs", `CMD ["run"]`, "CMD [\"run\"]\nCMD [\"demo\"]", "MultipleInstructionsDisallowed"},
		{"unknown instruction", "WORKDIR /src", "WORKDIRR /src", "does not build"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if strings.Count(dt, c.old) != 1 {
				t.Fatalf("the Dockerfile holds %q %d times, want once: update this test", c.old, strings.Count(dt, c.old))
			}
			findings, err := LintDockerfile("broken/Dockerfile", []byte(strings.Replace(dt, c.old, c.new, 1)))
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range findings {
				if strings.Contains(f, c.rule) {
					t.Logf("caught, as it should be: %s", f)
					return
				}
			}
			t.Errorf("no %s finding; got %q", c.rule, findings)
		})
	}
}

// TestDockerfileShape checks what the image must be: a multi-stage build
// whose static binary runs as a numeric non-root user on a small base.
func TestDockerfileShape(t *testing.T) {
	res, err := parser.Parse(bytes.NewReader(readDockerfile(t)))
	if err != nil {
		t.Fatal(err)
	}
	stages, _, err := instructions.Parse(res.AST, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a build stage and a runtime stage", len(stages))
	}
	final := stages[len(stages)-1]
	if !strings.HasPrefix(final.BaseName, "gcr.io/distroless/static") && final.BaseName != "scratch" {
		t.Errorf("final stage FROM %s, want distroless static or scratch", final.BaseName)
	}

	// The build stage: modules in their own layer, then a static build.
	var order []string
	for _, cmd := range stages[0].Commands {
		switch c := cmd.(type) {
		case *instructions.CopyCommand:
			order = append(order, "COPY "+strings.Join(c.SourcePaths, " "))
		case *instructions.RunCommand:
			line := strings.Join(c.CmdLine, " ")
			switch {
			case strings.Contains(line, "go mod download"):
				order = append(order, "go mod download")
			case strings.Contains(line, "go build"):
				order = append(order, "go build")
				for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "./cmd/firstseen"} {
					if !strings.Contains(line, want) {
						t.Errorf("the go build command lacks %s: %s", want, line)
					}
				}
			}
		}
	}
	want := []string{"COPY go.mod go.sum", "go mod download", "COPY .", "go build"}
	if !slices.Equal(order, want) {
		t.Errorf("build stage steps %q, want %q (go.mod and go.sum before the sources, for layer caching)", order, want)
	}

	user, expose := "", []string(nil)
	var entrypoint, cmdline *instructions.ShellDependantCmdLine
	for _, cmd := range final.Commands {
		switch c := cmd.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.ExposeCommand:
			expose = append(expose, c.Ports...)
		case *instructions.EntrypointCommand:
			entrypoint = &c.ShellDependantCmdLine
		case *instructions.CmdCommand:
			cmdline = &c.ShellDependantCmdLine
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if uid == "" || strings.Trim(uid, "0123456789") != "" || strings.Trim(uid, "0") == "" {
		t.Errorf("USER %q: want a numeric user other than 0 (Kubernetes' runAsNonRoot needs a number)", user)
	}
	if !slices.Contains(expose, "9090") {
		t.Errorf("EXPOSE %v lacks 9090", expose)
	}
	if entrypoint == nil || entrypoint.PrependShell || !slices.Equal(entrypoint.CmdLine, []string{"/firstseen"}) {
		t.Errorf(`ENTRYPOINT is not ["/firstseen"]: %+v`, entrypoint)
	}
	if cmdline == nil || cmdline.PrependShell || !slices.Equal(cmdline.CmdLine, []string{"run"}) {
		t.Errorf(`CMD is not ["run"]: %+v`, cmdline)
	}
}

// contextProblems checks a build context: it must hold what the build of
// cmd/firstseen reads and keep out what it does not need.
func contextProblems(t *testing.T, files []string) []string {
	t.Helper()
	in := map[string]bool{}
	for _, f := range files {
		in[f] = true
	}
	var problems []string
	need := []string{"go.mod", "go.sum"}
	cmd := exec.Command("go", "list", "-deps", "-f",
		`{{if and .Module .Module.Main}}{{range .GoFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}{{range .EmbedFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}{{end}}`,
		"./cmd/firstseen")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/firstseen: %v", err)
	}
	root, _ := filepath.Abs(repoRoot)
	for _, f := range strings.Fields(string(out)) {
		rel, err := filepath.Rel(root, f)
		if err != nil {
			t.Fatal(err)
		}
		need = append(need, filepath.ToSlash(rel))
	}
	for _, f := range need {
		if !in[f] {
			problems = append(problems, f+" is excluded by .dockerignore, but the build needs it")
		}
	}
	for _, f := range files {
		for _, keep := range []string{".git/", "bin/", "deploy/", "docs/", "firstseen-state/"} {
			if strings.HasPrefix(f, keep) {
				problems = append(problems, f+" is in the build context: .dockerignore should exclude "+keep)
				break
			}
		}
		if strings.HasSuffix(f, ".test") {
			problems = append(problems, f+" (a test binary) is in the build context")
		}
	}
	return problems
}

func dockerignore(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDockerContext: .dockerignore keeps what the build needs, and only that.
func TestDockerContext(t *testing.T) {
	files, err := ContextFiles(repoRoot, bytes.NewReader(dockerignore(t)))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range contextProblems(t, files) {
		t.Error(p)
	}
}

// TestBrokenDockerContextIsCaught: an ignore file that drops what the
// build needs, or one that lets everything in, is caught.
func TestBrokenDockerContextIsCaught(t *testing.T) {
	for name, c := range map[string]struct {
		ignore []byte
		want   string
	}{
		"go.sum excluded":      {append(dockerignore(t), "go.sum\n"...), "go.sum is excluded"},
		"a package excluded":   {append(dockerignore(t), "operators\n"...), "operators/"},
		"no .dockerignore":     {nil, "should exclude .git/"},
		"binaries let through": {bytes.ReplaceAll(dockerignore(t), []byte("\nbin\n"), []byte("\n")), "should exclude bin/"},
	} {
		t.Run(name, func(t *testing.T) {
			if name == "binaries let through" {
				ensureBinDir(t) // a fresh clone has no bin/ until `make build`
			}
			var r *bytes.Reader
			if c.ignore != nil {
				r = bytes.NewReader(c.ignore)
			}
			var files []string
			var err error
			if r != nil {
				files, err = ContextFiles(repoRoot, r)
			} else {
				files, err = ContextFiles(repoRoot, nil)
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range contextProblems(t, files) {
				if strings.Contains(p, c.want) {
					t.Logf("caught, as it should be: %s", p)
					return
				}
			}
			t.Errorf("no problem mentions %q", c.want)
		})
	}
}

// ensureBinDir makes sure the repository has a bin/ directory with a file
// in it for the duration of the test, so that an ignore file that lets
// binaries through has something to let through.
func ensureBinDir(t *testing.T) {
	t.Helper()
	dir := filepath.Join(repoRoot, "bin")
	if _, err := os.Stat(dir); err == nil {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "firstseen"), []byte("probe"), 0o644); err != nil {
		t.Fatal(err)
	}
}
