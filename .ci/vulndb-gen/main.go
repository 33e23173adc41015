// Command vulndb-gen builds the offline Go vulnerability database in
// .ci/vulndb that `make vulncheck` gives govulncheck (-db file://...), since
// vuln.go.dev cannot be reached from CI.
//
// It reads the OSV entries of a snapshot of the golang/vulndb repository
// (data/osv/*.json, a git directory; nothing is fetched), keeps those that
// affect a module of the build lists of the given Go modules (`go list -m
// all`), the standard library ("stdlib") or the go command ("toolchain"),
// and writes them in the layout of the database's v1 API
// (https://go.dev/security/vuln/database#api), which govulncheck reads
// from a directory:
//
//	index/db.json       {"modified": the newest entry's modified time}
//	index/modules.json  per module path, its entries' id, modified time and fixed version
//	index/vulns.json    per entry, its id, modified time and aliases
//	ID/<id>.json        the OSV entry
//
// The entries are copied as they are, except for two fields that
// data/osv leaves zero: modified, the time of the newest commit that
// changed the entry's file, and published (when zero), the time of the
// oldest one, which is how vuln.go.dev sets them. Next to the database it
// writes modules.txt (the module paths it was filtered to), the data's
// LICENSE and NOTICES, and a README.md with the snapshot's commit, date
// and attribution.
//
// Usage, from the repository root:
//
//	cd .ci/vulndb-gen && go run . -repo /path/to/vulndb.git -out ../vulndb ../..
//	cd .ci/vulndb-gen && go run . -check -out ../vulndb ../..
//
// -check generates nothing: it fails when a module of the build lists is
// not in modules.txt (a dependency added since the database was made, so
// the database may lack its entries), and prints the snapshot's age.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/semver"
)

// The pseudo-modules of the Go distribution in the database.
const (
	stdlibModule    = "stdlib"    // the standard library
	toolchainModule = "toolchain" // the go command and the compiler
)

func main() {
	repo := flag.String("repo", "", "golang/vulndb git directory (bare or not) to read data/osv from")
	rev := flag.String("rev", "HEAD", "revision of -repo")
	out := flag.String("out", "", "database directory to write (or, with -check, to check)")
	check := flag.Bool("check", false, "only check that the database in -out covers the modules' build lists")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: vulndb-gen -repo DIR [-rev REV] -out DIR MODULE_DIR...\n       vulndb-gen -check -out DIR MODULE_DIR...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *out == "" || flag.NArg() == 0 || (!*check && *repo == "") {
		flag.Usage()
		os.Exit(2)
	}
	mods, err := buildList(flag.Args())
	if err == nil {
		if *check {
			err = checkDB(*out, mods)
		} else {
			err = generate(*repo, *rev, *out, mods)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vulndb-gen:", err)
		os.Exit(1)
	}
}

// buildList returns the module paths of the build lists of the modules in
// dirs, and stdlib and toolchain, sorted.
func buildList(dirs []string) ([]string, error) {
	mods := []string{stdlibModule, toolchainModule}
	for _, dir := range dirs {
		cmd := exec.Command("go", "list", "-m", "-f", "{{.Path}}", "all")
		cmd.Dir = dir
		cmd.Stderr = os.Stderr
		b, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("go list -m all in %s: %v", dir, err)
		}
		mods = append(mods, strings.Fields(string(b))...)
	}
	slices.Sort(mods)
	return slices.Compact(mods), nil
}

// checkDB fails when a module of mods is not among the modules the
// database in dir was made for.
func checkDB(dir string, mods []string) error {
	b, err := os.ReadFile(filepath.Join(dir, "modules.txt"))
	if err != nil {
		return err
	}
	covered := map[string]bool{}
	for _, m := range strings.Fields(string(b)) {
		covered[m] = true
	}
	var missing []string
	for _, m := range mods {
		if !covered[m] {
			missing = append(missing, m)
		}
	}
	var meta struct {
		Modified time.Time `json:"modified"`
	}
	if b, err := os.ReadFile(filepath.Join(dir, "index", "db.json")); err != nil {
		return err
	} else if err := json.Unmarshal(b, &meta); err != nil {
		return fmt.Errorf("index/db.json: %v", err)
	}
	fmt.Printf("vulndb-gen: %s: %d modules covered, newest entry %s (%d days old)\n",
		dir, len(covered), meta.Modified.Format(time.DateOnly), int(time.Since(meta.Modified).Hours()/24))
	if len(missing) > 0 {
		return fmt.Errorf("the database in %s was not made for %s: regenerate it (see %s/README.md)",
			dir, strings.Join(missing, ", "), dir)
	}
	return nil
}

// git runs git on the repository and returns its standard output.
func git(repo string, stdin io.Reader, args ...string) ([]byte, error) {
	cmd := exec.Command("git", append([]string{"-C", repo}, args...)...)
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return b, nil
}

const osvDir = "data/osv"

// commitDates returns, for each file under data/osv, the committer times
// of the newest and the oldest commit up to rev that changed it.
func commitDates(repo, rev string) (newest, oldest map[string]time.Time, err error) {
	b, err := git(repo, nil, "log", "--format=%x00%cI", "--name-only", rev, "--", osvDir)
	if err != nil {
		return nil, nil, err
	}
	newest, oldest = map[string]time.Time{}, map[string]time.Time{}
	var when time.Time
	for _, line := range strings.Split(string(b), "\n") {
		if d, ok := strings.CutPrefix(line, "\x00"); ok {
			if when, err = time.Parse(time.RFC3339, d); err != nil {
				return nil, nil, err
			}
			continue
		}
		if line == "" {
			continue
		}
		if _, ok := newest[line]; !ok { // git log goes from new to old
			newest[line] = when
		}
		oldest[line] = when
	}
	return newest, oldest, nil
}

// readBlobs returns the contents of the files of rev, by path.
func readBlobs(repo, rev string, files []string) (map[string][]byte, error) {
	var in bytes.Buffer
	for _, f := range files {
		fmt.Fprintf(&in, "%s:%s\n", rev, f)
	}
	b, err := git(repo, &in, "cat-file", "--batch")
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	r := bufio.NewReader(bytes.NewReader(b))
	for _, f := range files {
		header, err := r.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("git cat-file: %s: %v", f, err)
		}
		fields := strings.Fields(header)
		if len(fields) != 3 || fields[1] != "blob" {
			return nil, fmt.Errorf("git cat-file: %s: %q", f, strings.TrimSpace(header))
		}
		size, err := strconv.Atoi(fields[2])
		if err != nil {
			return nil, err
		}
		data := make([]byte, size+1) // and the newline after it
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, fmt.Errorf("git cat-file: %s: %v", f, err)
		}
		out[f] = data[:size]
	}
	return out, nil
}

// entry is an OSV entry with its fields in the order of the OSV schema.
// The nested values are kept as they are; only the times are rewritten.
type entry struct {
	SchemaVersion    string          `json:"schema_version,omitempty"`
	ID               string          `json:"id"`
	Modified         string          `json:"modified"`
	Published        string          `json:"published,omitempty"`
	Withdrawn        json.RawMessage `json:"withdrawn,omitempty"`
	Aliases          json.RawMessage `json:"aliases,omitempty"`
	Related          json.RawMessage `json:"related,omitempty"`
	Summary          json.RawMessage `json:"summary,omitempty"`
	Details          json.RawMessage `json:"details,omitempty"`
	Affected         json.RawMessage `json:"affected"`
	References       json.RawMessage `json:"references,omitempty"`
	Credits          json.RawMessage `json:"credits,omitempty"`
	DatabaseSpecific json.RawMessage `json:"database_specific,omitempty"`
}

// affected is what the index needs of an entry's affected list.
type affected struct {
	Package struct {
		Name string `json:"name"`
	} `json:"package"`
	Ranges []struct {
		Type   string `json:"type"`
		Events []struct {
			Introduced string `json:"introduced"`
			Fixed      string `json:"fixed"`
		} `json:"events"`
	} `json:"ranges"`
}

// latestFix returns the version from which on a module is no longer
// affected according to its ranges: the highest fixed version, unless an
// introduced version above it starts an unfixed range; "" when there is
// none.
func latestFix(a affected) string {
	fixed := ""
	var introduced []string
	for _, r := range a.Ranges {
		if r.Type != "SEMVER" {
			continue
		}
		for _, e := range r.Events {
			if e.Fixed != "" && (fixed == "" || semver.Compare("v"+e.Fixed, "v"+fixed) > 0) {
				fixed = e.Fixed
			}
			if e.Introduced != "" && e.Introduced != "0" {
				introduced = append(introduced, e.Introduced)
			}
		}
	}
	for _, in := range introduced {
		if fixed != "" && semver.Compare("v"+in, "v"+fixed) > 0 {
			return ""
		}
	}
	return fixed
}

type moduleVuln struct {
	ID       string `json:"id"`
	Modified string `json:"modified"`
	Fixed    string `json:"fixed,omitempty"`
}

type module struct {
	Path  string       `json:"path"`
	Vulns []moduleVuln `json:"vulns"`
}

type vuln struct {
	ID       string          `json:"id"`
	Modified string          `json:"modified"`
	Aliases  json.RawMessage `json:"aliases,omitempty"`
}

func generate(repo, rev, out string, mods []string) error {
	commit, err := git(repo, nil, "rev-parse", "--verify", rev+"^{commit}")
	if err != nil {
		return err
	}
	rev = strings.TrimSpace(string(commit))
	date, err := git(repo, nil, "log", "-1", "--format=%cI", rev)
	if err != nil {
		return err
	}
	snapshot, err := time.Parse(time.RFC3339, strings.TrimSpace(string(date)))
	if err != nil {
		return err
	}
	list, err := git(repo, nil, "ls-tree", "--name-only", "-z", rev, osvDir+"/")
	if err != nil {
		return err
	}
	var files []string
	for _, f := range strings.Split(string(list), "\x00") {
		if strings.HasSuffix(f, ".json") {
			files = append(files, f)
		}
	}
	if len(files) == 0 {
		return fmt.Errorf("%s has no %s/*.json at %s", repo, osvDir, rev)
	}
	newest, oldest, err := commitDates(repo, rev)
	if err != nil {
		return err
	}
	blobs, err := readBlobs(repo, rev, append(files, "data/LICENSE", "data/NOTICES"))
	if err != nil {
		return err
	}

	wanted := map[string]bool{}
	for _, m := range mods {
		wanted[m] = true
	}
	entries := map[string][]byte{} // ID/<id>.json
	byModule := map[string]map[string]moduleVuln{}
	var vulns []vuln
	var dbModified string
	for _, f := range files {
		var e entry
		if err := decodeStrict(blobs[f], &e); err != nil {
			return fmt.Errorf("%s: %v", f, err)
		}
		if path.Base(f) != e.ID+".json" {
			return fmt.Errorf("%s holds the entry %q", f, e.ID)
		}
		var affs []affected
		if err := json.Unmarshal(e.Affected, &affs); err != nil {
			return fmt.Errorf("%s: affected: %v", f, err)
		}
		if !slices.ContainsFunc(affs, func(a affected) bool { return wanted[a.Package.Name] }) {
			continue
		}
		if newest[f].IsZero() {
			return fmt.Errorf("%s: no commit changed it up to %s", f, rev)
		}
		e.Modified = newest[f].UTC().Format(time.RFC3339)
		if p, err := time.Parse(time.RFC3339, e.Published); err != nil || p.IsZero() {
			e.Published = oldest[f].UTC().Format(time.RFC3339)
		}
		data, err := json.MarshalIndent(e, "", "  ")
		if err != nil {
			return err
		}
		entries[e.ID] = append(data, '\n')
		vulns = append(vulns, vuln{ID: e.ID, Modified: e.Modified, Aliases: e.Aliases})
		if e.Modified > dbModified { // RFC 3339 in UTC sorts as time
			dbModified = e.Modified
		}
		for _, a := range affs {
			if !wanted[a.Package.Name] {
				continue
			}
			// An entry may name a module in several affected items:
			// one index line, fixed at the latest fix of all, or
			// unfixed if one is.
			fix := latestFix(a)
			if byModule[a.Package.Name] == nil {
				byModule[a.Package.Name] = map[string]moduleVuln{}
			}
			if prev, ok := byModule[a.Package.Name][e.ID]; ok {
				if prev.Fixed == "" || fix == "" {
					fix = ""
				} else if semver.Compare("v"+prev.Fixed, "v"+fix) > 0 {
					fix = prev.Fixed
				}
			}
			byModule[a.Package.Name][e.ID] = moduleVuln{ID: e.ID, Modified: e.Modified, Fixed: fix}
		}
	}

	var modules []module
	for p, vs := range byModule {
		m := module{Path: p}
		for _, v := range vs {
			m.Vulns = append(m.Vulns, v)
		}
		slices.SortFunc(m.Vulns, func(a, b moduleVuln) int { return strings.Compare(a.ID, b.ID) })
		modules = append(modules, m)
	}
	slices.SortFunc(modules, func(a, b module) int { return strings.Compare(a.Path, b.Path) })
	slices.SortFunc(vulns, func(a, b vuln) int { return strings.Compare(a.ID, b.ID) })

	// Start from an empty directory, so entries that no longer apply go.
	for _, d := range []string{"index", "ID"} {
		if err := os.RemoveAll(filepath.Join(out, d)); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(out, d), 0o755); err != nil {
			return err
		}
	}
	write := func(name string, data []byte) error {
		return os.WriteFile(filepath.Join(out, name), data, 0o644)
	}
	writeJSON := func(name string, v any) error {
		data, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		return write(name, append(data, '\n'))
	}
	for id, data := range entries {
		if err := write(filepath.Join("ID", id+".json"), data); err != nil {
			return err
		}
	}
	if err := errors.Join(
		writeJSON("index/db.json", map[string]string{"modified": dbModified}),
		writeJSON("index/modules.json", modules),
		writeJSON("index/vulns.json", vulns),
		write("modules.txt", []byte(strings.Join(mods, "\n")+"\n")),
		write("LICENSE", blobs["data/LICENSE"]),
		write("NOTICES", blobs["data/NOTICES"]),
		write("README.md", readme(rev, snapshot, len(entries), len(modules), len(mods))),
	); err != nil {
		return err
	}
	fmt.Printf("vulndb-gen: wrote %d entries for %d of %d modules to %s (golang/vulndb %.12s, %s)\n",
		len(entries), len(modules), len(mods), out, rev, snapshot.Format(time.DateOnly))
	return nil
}

// decodeStrict decodes one JSON object into v, refusing fields v does not
// have: an entry must not lose a field in the copy.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("more than one JSON value")
	}
	return nil
}

func readme(commit string, snapshot time.Time, entries, modules, wanted int) []byte {
	return fmt.Appendf(nil, `# .ci/vulndb: an offline Go vulnerability database

Generated by .ci/vulndb-gen; do not edit. `+"`make vulncheck`"+` runs govulncheck
with `+"`-db file://$(pwd)/.ci/vulndb`"+`, because vuln.go.dev cannot be reached
from CI.

- Source: the Go Vulnerability Database, https://github.com/golang/vulndb
  (https://vuln.go.dev), data/osv at commit %s
  of %s.
- Contents: the %d entries that affect a module of the build list of
  firstseen's module (`+"`go list -m all`"+`), the standard library (stdlib) or
  the go command (toolchain): %d of the %d module paths in modules.txt have
  entries. Layout: the database's v1 API
  (https://go.dev/security/vuln/database#api), uncompressed.
- Changes to the entries: only "modified" (the newest commit that changed
  the entry's file) and a zero "published" (the oldest one) are filled in,
  as vuln.go.dev fills them.

## License

The entries are from the Go Vulnerability Database by The Go Authors,
licensed under the Creative Commons Attribution 4.0 International License
(CC-BY-4.0, https://creativecommons.org/licenses/by/4.0/; the text is in
LICENSE). They were selected and their timestamps filled in as described
above. The database includes information from other sources, listed in
NOTICES.

## Regenerate

When a dependency is added, `+"`make vulncheck`"+` fails until the database
covers it; to pick up newer advisories, regenerate from a newer snapshot
too:

`+"```"+`sh
git clone --bare https://github.com/golang/vulndb /tmp/vulndb.git
cd .ci/vulndb-gen && go run . -repo /tmp/vulndb.git -out ../vulndb ../..
`+"```"+`
`, commit, snapshot.UTC().Format(time.DateOnly), entries, modules, wanted)
}
