package validate

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
)

// LintDockerfile runs BuildKit's build checks on a Dockerfile: the rules of
// `docker build --check` (https://docs.docker.com/reference/build-checks/),
// by the code that the Docker engine runs for it. Base images are not
// pulled: every FROM resolves offline to an empty linux image of the
// requested platform. It returns a line per finding, none if it is clean;
// a Dockerfile that does not parse is a finding too.
func LintDockerfile(name string, dt []byte) ([]string, error) {
	ctx := context.Background()
	platform := ocispecs.Platform{OS: "linux", Architecture: runtime.GOARCH}
	// The Dockerfile as the frontend receives it: a file of a local source.
	src := llb.Local("dockerfile")
	def, err := src.Marshal(ctx)
	if err != nil {
		return nil, err
	}
	smap := llb.NewSourceMap(&src, name, "Dockerfile", dt)
	smap.Definition = def
	opt := dockerfile2llb.ConvertOpt{
		MetaResolver:   offlineImages{},
		SourceMap:      smap,
		TargetPlatform: &platform,
	}
	opt.BuildPlatforms = []ocispecs.Platform{platform}
	res, err := dockerfile2llb.DockerfileLint(ctx, dt, opt)
	if err != nil {
		return nil, err
	}
	var findings []string
	for _, w := range res.Warnings {
		line := 0
		if w.Location != nil && len(w.Location.Ranges) > 0 {
			line = int(w.Location.Ranges[0].Start.Line)
		}
		findings = append(findings, fmt.Sprintf("%s:%d: %s: %s (%s)", name, line, w.RuleName, w.Detail, w.URL))
	}
	if res.Error != nil {
		line := 0
		if len(res.Error.Location.Ranges) > 0 {
			line = int(res.Error.Location.Ranges[0].Start.Line)
		}
		findings = append(findings, fmt.Sprintf("%s:%d: does not build: %s", name, line, res.Error.Message))
	}
	return findings, nil
}

// offlineImages resolves every image reference to an empty image of the
// requested platform, so that the checks never touch a registry.
type offlineImages struct{}

func (offlineImages) ResolveImageConfig(_ context.Context, ref string, opt sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	p := ocispecs.Platform{OS: "linux", Architecture: runtime.GOARCH}
	if opt.ImageOpt != nil && opt.ImageOpt.Platform != nil {
		p = *opt.ImageOpt.Platform
	}
	cfg, err := json.Marshal(ocispecs.Image{
		Platform: p,
		RootFS:   ocispecs.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromString(ref)}},
	})
	return ref, "", cfg, err
}

// ContextFiles lists the files, relative to root and with forward slashes,
// that `docker build root` sends as its build context: all but those the
// .dockerignore patterns (nil: none) exclude, by Docker's own matcher.
func ContextFiles(root string, dockerignore io.Reader) ([]string, error) {
	var patterns []string
	if dockerignore != nil {
		var err error
		if patterns, err = ignorefile.ReadAll(dockerignore); err != nil {
			return nil, fmt.Errorf(".dockerignore: %w", err)
		}
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, fmt.Errorf(".dockerignore: %w", err)
	}
	var files []string
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		excluded, err := pm.MatchesOrParentMatches(rel)
		if err != nil {
			return err
		}
		if d.IsDir() {
			if excluded && !pm.Exclusions() {
				return filepath.SkipDir // nothing under it can come back
			}
			return nil
		}
		if !excluded && d.Type().IsRegular() {
			files = append(files, rel)
		}
		return nil
	})
	return files, err
}

// CopyFiles copies the files (relative to src, as ContextFiles lists them)
// to dst.
func CopyFiles(src, dst string, files []string) error {
	for _, f := range files {
		from, to := filepath.Join(src, filepath.FromSlash(f)), filepath.Join(dst, filepath.FromSlash(f))
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return err
		}
		data, err := os.ReadFile(from)
		if err != nil {
			return err
		}
		if err := os.WriteFile(to, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
