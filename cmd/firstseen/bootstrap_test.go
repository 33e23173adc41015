package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks/clickhouse/chtest"
	"github.com/firstseen/firstseen/state"
)

// bsLoad bootstraps stateDir with the given arguments, failing the test on
// an error, and returns the summary's numbers and stderr.
func bsLoad(t *testing.T, stdin io.Reader, stateDir string, args ...string) (map[string]float64, string) {
	t.Helper()
	out, errs, err := runCLI(t, stdin, append([]string{"bootstrap", "--state-dir", stateDir, "--log-level", "error"}, args...)...)
	if err != nil {
		t.Fatalf("bootstrap %v: %v\nstderr:\n%s", args, err, errs)
	}
	return bsSummary(t, out), errs
}

var bsSummaryLine = regexp.MustCompile(`(?m)^  ([a-z/() ]+?) +([0-9.]+)`)

func bsSummary(t *testing.T, out string) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	for _, l := range bsSummaryLine.FindAllStringSubmatch(out, -1) {
		v, err := strconv.ParseFloat(l[2], 64)
		if err != nil {
			t.Fatalf("summary line %q: %v", l[0], err)
		}
		m[l[1]] = v
	}
	for _, k := range []string{"rows read", "loaded (valid)", "rejected", "duplicates in input", "new users",
		"lowered (now earlier)", "unchanged", "users in state after", "bytes on disk per user", "users/s"} {
		if _, ok := m[k]; !ok {
			t.Fatalf("summary has no %q:\n%s", k, out)
		}
	}
	if !strings.Contains(out, "elapsed") {
		t.Fatalf("summary has no elapsed time:\n%s", out)
	}
	return m
}

func bsExpect(t *testing.T, got map[string]float64, want map[string]float64) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("summary %q = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}

// bsOpen opens the state in dir; the caller closes it.
func bsOpen(t *testing.T, dir string) *state.DB {
	t.Helper()
	db, err := state.Open(dir, state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// bsState reads every user of the state in dir.
func bsState(t *testing.T, dir string) map[operators.UUID]int64 {
	t.Helper()
	db := bsOpen(t, dir)
	defer db.Close()
	m := map[operators.UUID]int64{}
	if err := db.EachUser(func(u operators.UUID, fs int64) error {
		m[u] = fs
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return m
}

// bsCheck looks every user of want up with state.Reader.Get, and checks
// that the state holds no other user.
func bsCheck(t *testing.T, dir string, want map[operators.UUID]int64) {
	t.Helper()
	db := bsOpen(t, dir)
	defer db.Close()
	r, err := db.NewReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for u, w := range want {
		if got, ok := r.Get(&u); !ok || got != w {
			t.Errorf("user %s: first_seen %d (present %v), want %d", u, got, ok, w)
		}
	}
	if n, err := db.Users(); err != nil || n != int64(len(want)) {
		t.Errorf("state holds %d users (%v), want %d", n, err, len(want))
	}
}

// bsSeed writes users into a state through the processor's path (a
// checkpoint batch).
func bsSeed(t *testing.T, dir string, users map[operators.UUID]int64) {
	t.Helper()
	db := bsOpen(t, dir)
	defer db.Close()
	b := db.NewBatch()
	defer b.Close()
	for u, fs := range users {
		b.SetUser(&u, fs)
	}
	if err := db.Commit(state.Header{Epoch: 1, Topic: "activity"}, b); err != nil {
		t.Fatal(err)
	}
}

func bsUUID(r *rand.Rand) operators.UUID {
	var u operators.UUID
	for i := range u {
		u[i] = byte(r.Uint32())
	}
	return u
}

func mustUUID(t *testing.T, s string) operators.UUID {
	t.Helper()
	u, ok := operators.ParseUUID([]byte(s))
	if !ok {
		t.Fatalf("bad test uuid %q", s)
	}
	return u
}

func bsWrite(t *testing.T, path string, content []byte, gz bool) string {
	t.Helper()
	if gz {
		content = gzipped(t, content)
	}
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func ms(s string) int64 {
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return tm.UnixMilli()
}

// The same five users in every format; their spellings exercise what the
// stream accepts: canonical, upper case and undashed uuids, RFC 3339 with
// a zone or an offset and fraction, epoch milliseconds.
var (
	bsUsers = []struct {
		uuid, time string
	}{
		{"3f1c2b9e-8a47-4b5e-9c1d-0123456789ab", "1714550400000"},
		{"3F1C2B9E-8A47-4B5E-9C1D-0123456789AC", "2024-05-01T08:00:00Z"},
		{"3f1c2b9e8a474b5e9c1d0123456789ad", "2024-05-01T08:00:00.123+08:00"},
		{"00000000-0000-0000-0000-000000000001", "1"},
		{"ffffffff-ffff-ffff-ffff-ffffffffffff", "2106-02-07T06:28:15.999Z"},
	}
	bsWant = func() map[operators.UUID]int64 {
		m := map[operators.UUID]int64{}
		for i, u := range bsUsers {
			v, ok := operators.ParseUUID([]byte(u.uuid))
			if !ok {
				panic(u.uuid)
			}
			m[v] = []int64{1714550400000, ms("2024-05-01T08:00:00Z"), ms("2024-05-01T00:00:00.123Z"), 1, operators.MaxEventTime}[i]
		}
		return m
	}()
)

func bsContent(format string) []byte {
	var b bytes.Buffer
	switch format {
	case "csv":
		// A BOM, CRLF, an extra column before and after, quoting, spaces.
		b.WriteString("\xef\xbb\xbfname,uuid,\"first_seen\",note\r\n")
		for i, u := range bsUsers {
			if i%2 == 0 {
				fmt.Fprintf(&b, "\"n, %d\",%s,%s,\"a \"\"quote\"\"\nand a line break\"\r\n", i, u.uuid, u.time)
			} else {
				fmt.Fprintf(&b, "n%d, \"%s\" , %s ,\r\n", i, u.uuid, u.time)
			}
		}
	case "tsv":
		b.WriteString("uuid\tfirst_seen\tnote\n")
		for _, u := range bsUsers {
			fmt.Fprintf(&b, "%s\t%s\tx\n\n", u.uuid, u.time) // blank lines are skipped
		}
	case "jsonl":
		for i, u := range bsUsers {
			tm := u.time
			if _, err := strconv.ParseInt(tm, 10, 64); err != nil || i == 0 {
				tm = strconv.Quote(tm) // epoch ms as a string, like the stream accepts
			}
			fmt.Fprintf(&b, "{\"other\":[1,{\"a\":2}],\"uuid\":%q,\"first_seen\":%s}\n", u.uuid, tm)
		}
		b.WriteString("  \n")
	}
	return b.Bytes()
}

func TestBootstrapEachFileFormat(t *testing.T) {
	for _, format := range []string{"csv", "tsv", "jsonl"} {
		for _, gz := range []bool{false, true} {
			for _, how := range []string{"extension", "sniffed", "flag", "stdin"} {
				name := fmt.Sprintf("%s/gzip=%v/%s", format, gz, how)
				t.Run(name, func(t *testing.T) {
					dir := t.TempDir()
					content := bsContent(format)
					var stdin io.Reader
					var args []string
					switch how {
					case "extension":
						ext := "." + format
						if format == "jsonl" {
							ext = ".ndjson"
						}
						if gz {
							ext += ".gz"
						}
						args = []string{bsWrite(t, filepath.Join(dir, "users"+ext), content, gz)}
					case "sniffed":
						args = []string{"--input", bsWrite(t, filepath.Join(dir, "users.data"), content, gz)}
					case "flag":
						args = []string{"--format", format, bsWrite(t, filepath.Join(dir, "users.txt.gz"), content, gz)}
					case "stdin":
						if gz {
							var b bytes.Buffer
							w := gzip.NewWriter(&b)
							w.Write(content)
							w.Close()
							content = b.Bytes()
						}
						stdin, args = bytes.NewReader(content), []string{"-"}
					}
					st := filepath.Join(dir, "state")
					sum, errs := bsLoad(t, stdin, st, args...)
					if errs != "" {
						t.Errorf("stderr: %s", errs)
					}
					bsExpect(t, sum, map[string]float64{"rows read": 5, "loaded (valid)": 5, "rejected": 0, "new users": 5, "users in state after": 5})
					bsCheck(t, st, bsWant)
				})
			}
		}
	}
}

func TestBootstrapMergeRule(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(1, 2))
	earlier, later, same, fresh, dup := bsUUID(r), bsUUID(r), bsUUID(r), bsUUID(r), bsUUID(r)
	bsSeed(t, dir, map[operators.UUID]int64{earlier: 2_000_000, later: 2_000_000, same: 2_000_000})
	csv := fmt.Sprintf("uuid,first_seen\n%s,1000000\n%s,3000000\n%s,2000000\n%s,5000000\n%s,9000\n%s,7000\n%s,8000\n",
		&earlier, &later, &same, &fresh, &dup, &dup, &dup)
	in := bsWrite(t, filepath.Join(t.TempDir(), "u.csv"), []byte(csv), false)
	want := map[operators.UUID]int64{earlier: 1_000_000, later: 2_000_000, same: 2_000_000, fresh: 5_000_000, dup: 7000}

	sum, _ := bsLoad(t, nil, dir, in)
	bsExpect(t, sum, map[string]float64{"rows read": 7, "loaded (valid)": 7, "duplicates in input": 2, "new users": 2,
		"lowered (now earlier)": 1, "unchanged": 2, "users in state after": 5})
	bsCheck(t, dir, want)

	// Loading the same file again changes nothing.
	sum, _ = bsLoad(t, nil, dir, in)
	bsExpect(t, sum, map[string]float64{"new users": 0, "lowered (now earlier)": 0, "unchanged": 5, "users in state after": 5})
	bsCheck(t, dir, want)

	// Later times never make a user newer.
	csv = fmt.Sprintf("uuid,first_seen\n%s,2000001\n%s,9999999\n%s,7001\n", &earlier, &fresh, &dup)
	sum, _ = bsLoad(t, nil, dir, bsWrite(t, filepath.Join(t.TempDir(), "later.csv"), []byte(csv), false))
	bsExpect(t, sum, map[string]float64{"new users": 0, "lowered (now earlier)": 0, "unchanged": 3})
	bsCheck(t, dir, want)
}

func TestBootstrapReportsBadRows(t *testing.T) {
	dir := t.TempDir()
	good := "3f1c2b9e-8a47-4b5e-9c1d-0123456789ab"
	csv := strings.Join([]string{
		"uuid,first_seen,comment",                   // 1
		good + ",1714550400000,ok",                  // 2
		"not-a-uuid,1714550400000,x",                // 3
		good + ",2024-05-01 08:00:00,no zone",       // 4
		"",                                          // 5: blank, skipped
		good + ",0,before the epoch range",          // 6
		"\"" + good + "\",yesterday,\"two\nlines\"", // 7-8
		good,                       // 9: one column
		",1714550400000,",          // 10: empty uuid
		good + ",,",                // 11: empty time
		good + ",1714550399999,ok", // 12
	}, "\n")
	in := bsWrite(t, filepath.Join(t.TempDir(), "u.csv"), []byte(csv), false)
	sum, errs := bsLoad(t, nil, dir, in)
	bsExpect(t, sum, map[string]float64{"rows read": 9, "loaded (valid)": 2, "rejected": 7, "duplicates in input": 1, "new users": 1})
	for _, want := range []string{
		"u.csv: line 3: bad uuid \"not-a-uuid\"",
		"u.csv: line 4: bad first_seen \"2024-05-01 08:00:00\"", "append Z for UTC",
		"u.csv: line 6: bad first_seen \"0\"",
		"u.csv: line 7: bad first_seen \"yesterday\"",
		"u.csv: line 9: 1 columns, the header has 3",
		"u.csv: line 10: empty uuid",
		"u.csv: line 11: empty first_seen",
	} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
	bsCheck(t, dir, map[operators.UUID]int64{mustUUID(t, good): 1714550399999})

	// Only --max-reported of them are shown; all are counted.
	sum, errs = bsLoad(t, nil, dir, "--max-reported", "2", in)
	if n := strings.Count(errs, "u.csv: line "); n != 2 || !strings.Contains(errs, "5 more bad rows not shown") {
		t.Errorf("--max-reported 2: %d reported:\n%s", n, errs)
	}
	bsExpect(t, sum, map[string]float64{"rejected": 7})

	// JSON Lines: the stream's decoder's reasons, with line numbers.
	jl := "{\"uuid\":\"" + good + "\",\"first_seen\":1}\nnot json\n[1]\n{\"first_seen\":1}\n{\"uuid\":\"x\",\"first_seen\":1}\n{\"uuid\":\"" + good + "\"}\n{\"uuid\":\"" + good + "\",\"first_seen\":\"soon\"}\n"
	sum, errs = bsLoad(t, strings.NewReader(jl), t.TempDir(), "--format", "jsonl", "-")
	bsExpect(t, sum, map[string]float64{"rows read": 7, "loaded (valid)": 1, "rejected": 6})
	for _, want := range []string{"stdin: line 2: not JSON", "stdin: line 3: not a JSON object", "stdin: line 4: no \"uuid\" member",
		"stdin: line 5: bad uuid", "stdin: line 6: no \"first_seen\" member", "stdin: line 7: bad first_seen"} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
}

func TestBootstrapStrictAppliesNothing(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(3, 3))
	old := bsUUID(r)
	bsSeed(t, dir, map[operators.UUID]int64{old: 5000})
	var b strings.Builder
	b.WriteString("uuid,first_seen\n")
	fmt.Fprintf(&b, "%s,1000\n", &old)
	for range 5000 {
		fmt.Fprintf(&b, "%s,1000\n", bsUUID(r))
	}
	b.WriteString("oops,1000\n") // line 5003
	for range 100 {
		fmt.Fprintf(&b, "%s,1000\n", bsUUID(r))
	}
	in := bsWrite(t, filepath.Join(t.TempDir(), "u.csv"), []byte(b.String()), false)
	_, _, err := runCLI(t, nil, "bootstrap", "--state-dir", dir, "--strict", "--log-level", "error", in)
	var ue usageError
	if err == nil || !strings.Contains(err.Error(), "line 5003") || !strings.Contains(err.Error(), "nothing was applied") || errors.As(err, &ue) {
		t.Fatalf("--strict: %v; want a runtime error naming line 5003", err)
	}
	bsCheck(t, dir, map[operators.UUID]int64{old: 5000})
	if left, _ := filepath.Glob(filepath.Join(dir, "load-tmp-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestBootstrapUsageErrors(t *testing.T) {
	dir := t.TempDir()
	csv := bsWrite(t, filepath.Join(dir, "u.csv"), []byte("id,ts\n3f1c2b9e-8a47-4b5e-9c1d-0123456789ab,1\n"), false)
	st := filepath.Join(dir, "state")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{}, "nothing to load"},
		{[]string{csv, "--users-query", "SELECT 1"}, "not both"},
		{[]string{csv, "other.csv"}, "one input file"},
		{[]string{"--input", "a.csv", "b.csv"}, "given twice"},
		{[]string{"--format", "xml", csv}, `--format "xml"`},
		{[]string{"--max-reported", "-1", csv}, "--max-reported"},
		{[]string{"--uuid-column", "x", "--first-seen-column", "x", csv}, "must be set and differ"},
		{[]string{filepath.Join(dir, "missing.csv")}, "no such file"},
		{[]string{csv}, `the header has no column "uuid" (--uuid-column) or "first_seen" (--first-seen-column); it has ["id" "ts"]`},
		{[]string{"--uuid-column", "id", csv}, `no column "first_seen"`},
		{[]string{"--users-query", "SELECT 1", "--clickhouse-addr", "nohost"}, "not host:port"},
	} {
		_, _, err := runCLI(t, nil, append([]string{"bootstrap", "--state-dir", st, "--log-level", "error"}, tc.args...)...)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &ue) {
			t.Errorf("%v: got %v, want a usage error containing %q", tc.args, err, tc.want)
		}
	}
	if _, err := os.Stat(st); !os.IsNotExist(err) {
		t.Errorf("a usage error created the state directory: %v", err)
	}
	// The right columns given by flag: loads.
	sum, _ := bsLoad(t, nil, st, "--uuid-column", "id", "--first-seen-column", "ts", csv)
	bsExpect(t, sum, map[string]float64{"new users": 1})
}

func TestBootstrapRefusesStateInUse(t *testing.T) {
	dir := t.TempDir()
	db := bsOpen(t, dir) // as a running processor holds it
	defer db.Close()
	in := bsWrite(t, filepath.Join(t.TempDir(), "u.csv"), bsContent("csv"), false)
	_, _, err := runCLI(t, nil, "bootstrap", "--state-dir", dir, "--log-level", "error", in)
	want := fmt.Sprintf("state dir %s is in use by a running firstseen process: stop it (SIGTERM takes a final checkpoint), run bootstrap, start it again", dir)
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	var ue usageError
	if errors.As(err, &ue) {
		t.Error("a state in use is not a usage error")
	}
	if n, _ := db.Users(); n != 0 {
		t.Errorf("%d users loaded into a state in use", n)
	}
	db.Close()
	bsLoad(t, nil, dir, in) // once it is free, it loads
	bsCheck(t, dir, bsWant)
}

func TestBootstrapRefusesUnfinishedCheckpoint(t *testing.T) {
	dir := t.TempDir()
	db := bsOpen(t, dir)
	if err := db.WriteIntent(&state.Intent{Epoch: 7, Partitions: map[int32]state.IntentPartition{0: {Next: 10}}}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	in := bsWrite(t, filepath.Join(t.TempDir(), "u.csv"), bsContent("csv"), false)
	_, _, err := runCLI(t, nil, "bootstrap", "--state-dir", dir, "--log-level", "error", in)
	if err == nil || !strings.Contains(err.Error(), "unfinished checkpoint (epoch 7") {
		t.Fatalf("got %v, want a refusal naming the unfinished checkpoint", err)
	}
	bsCheck(t, dir, map[operators.UUID]int64{})
}

// TestBootstrapRandomAgainstOracle loads random inputs (duplicates, every
// uuid spelling and time form, bad rows) into a random existing state, with
// tiny thresholds so that the load spills, splits buckets by key group and
// parses in many chunks, and compares the state with a brute-force model.
func TestBootstrapRandomAgainstOracle(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 5))
	defer func(c int) { fileChunkSize = c }(fileChunkSize)
	defer func(f func(*state.Loader)) { bootstrapTuneLoader = f }(bootstrapTuneLoader)
	bootstrapTuneLoader = func(l *state.Loader) {
		l.MemRecords = 1 + r.IntN(3000)
		if r.IntN(2) == 0 {
			l.UnitRecords = 50 + r.IntN(300)
		}
		l.Workers = 1 + r.IntN(3)
	}
	for round := range 3 {
		dir := t.TempDir()
		oracle := map[operators.UUID]int64{}
		var pool []operators.UUID
		pick := func() operators.UUID {
			if len(pool) > 0 && r.IntN(2) == 0 {
				return pool[r.IntN(len(pool))]
			}
			u := bsUUID(r)
			pool = append(pool, u)
			return u
		}
		existing := map[operators.UUID]int64{}
		for range r.IntN(3000) {
			u := pick()
			existing[u] = 1 + r.Int64N(operators.MaxEventTime)
			oracle[u] = existing[u]
		}
		bsSeed(t, dir, existing)
		for load := range 2 {
			fileChunkSize = 64 + r.IntN(4096)
			format := []string{"csv", "tsv", "jsonl"}[r.IntN(3)]
			var b bytes.Buffer
			if format == "csv" {
				b.WriteString("x,first_seen,uuid\n")
			} else if format == "tsv" {
				b.WriteString("first_seen\tuuid\n")
			}
			rows, bad := 0, 0
			for range r.IntN(8000) {
				u := pick()
				t := 1000 + r.Int64N(operators.MaxEventTime-1000) // stays valid in whole seconds
				us := u.String()
				switch r.IntN(3) {
				case 1:
					us = strings.ToUpper(us)
				case 2:
					us = strings.ReplaceAll(us, "-", "")
				}
				ts := strconv.FormatInt(t, 10)
				if r.IntN(2) == 0 {
					t -= t % 1000 // whole seconds: RFC 3339 with an offset
					ts = time.UnixMilli(t).In(time.FixedZone("", 3600*(r.IntN(25)-12))).Format(time.RFC3339)
				}
				isBad := r.IntN(50) == 0
				if isBad {
					us = us[:10]
				}
				rows++
				switch format {
				case "csv":
					if r.IntN(4) == 0 {
						fmt.Fprintf(&b, "\"a,\"\"b\nc\",\"%s\",%s\n", ts, us)
					} else {
						fmt.Fprintf(&b, "y,%s,%s\n", ts, us)
					}
				case "tsv":
					fmt.Fprintf(&b, "%s\t%s\n", ts, us)
				case "jsonl":
					fmt.Fprintf(&b, "{\"uuid\":%q,\"first_seen\":%q}\n", us, ts)
				}
				if isBad {
					bad++
					continue
				}
				if old, ok := oracle[u]; !ok || t < old {
					oracle[u] = t
				}
			}
			in := bsWrite(t, filepath.Join(t.TempDir(), "users."+format), b.Bytes(), r.IntN(2) == 0)
			sum, _ := bsLoad(t, nil, dir, "--max-reported", "0", in)
			bsExpect(t, sum, map[string]float64{"rows read": float64(rows), "rejected": float64(bad),
				"loaded (valid)": float64(rows - bad), "users in state after": float64(len(oracle))})
			got := bsState(t, dir)
			if len(got) != len(oracle) {
				t.Fatalf("round %d load %d: %d users, oracle %d", round, load, len(got), len(oracle))
			}
			for u, w := range oracle {
				if got[u] != w {
					t.Fatalf("round %d load %d (%s): user %s = %d, oracle %d", round, load, format, u, got[u], w)
				}
			}
		}
	}
}

// TestBootstrapLineNumbersAcrossChunks: records, quoted line breaks and a
// record longer than a chunk straddle chunk boundaries; every bad row is
// still reported at its line.
func TestBootstrapLineNumbersAcrossChunks(t *testing.T) {
	defer func(c int) { fileChunkSize = c }(fileChunkSize)
	fileChunkSize = 100
	var b strings.Builder
	b.WriteString("uuid,first_seen,note\n")
	line := 2
	var wantBad []int
	r := rand.New(rand.NewPCG(9, 9))
	for i := range 400 {
		u := bsUUID(r)
		switch i % 7 {
		case 3:
			fmt.Fprintf(&b, "%s,bad,\"x\ny\nz\"\n", &u)
			wantBad = append(wantBad, line)
			line += 3
		case 5:
			fmt.Fprintf(&b, "%s,1000,\"%s\"\n", &u, strings.Repeat("long ", 100))
			line++
		default:
			fmt.Fprintf(&b, "%s,1000,\n", &u)
			line++
		}
	}
	_, errs := bsLoad(t, strings.NewReader(b.String()), t.TempDir(), "--max-reported", "1000", "-")
	var got []int
	for _, m := range regexp.MustCompile(`line (\d+):`).FindAllStringSubmatch(errs, -1) {
		n, _ := strconv.Atoi(m[1])
		got = append(got, n)
	}
	if fmt.Sprint(got) != fmt.Sprint(wantBad) {
		t.Errorf("bad lines reported %v\nwant %v", got, wantBad)
	}
}

func TestBootstrapHelpExplainsFlagsAndRules(t *testing.T) {
	out, _, err := runCLI(t, nil, "bootstrap", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"input", "format", "uuid-column", "first-seen-column", "users-query", "max-reported", "strict",
		"state-dir", "clickhouse-addr", "clickhouse-database", "clickhouse-user", "clickhouse-password", "log-level", "log-format"} {
		if !strings.Contains(out, "--"+f+" ") {
			t.Errorf("bootstrap --help does not document --%s", f)
		}
	}
	for _, s := range []string{"min(stored, loaded)", "never", "running", "SIGTERM", "gzip", "RFC 3339", "epoch"} {
		if !strings.Contains(out, s) {
			t.Errorf("bootstrap --help does not mention %q", s)
		}
	}
	// run's flags are accepted (one set of flags serves both) and ignored.
	dir := t.TempDir()
	in := bsWrite(t, filepath.Join(dir, "u.csv"), bsContent("csv"), false)
	t.Setenv("FIRSTSEEN_TOPIC", "activity")
	bsLoad(t, nil, filepath.Join(dir, "state"), "--brokers", "kafka:9092", "--timezone", "Asia/Shanghai", "--tolerance", "5m",
		"--clickhouse-table", "x", "--group", "g", "--until-caught-up", "--sink", "file", "--sink-path", "rows.jsonl",
		"--shutdown-timeout", "10s", "--snapshot-interval", "0", in)
}

func TestBootstrapParseUUIDAgreesWithOperators(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	alphabet := "0123456789abcdefABCDEF-gG {}x"
	for i := range 300_000 {
		u := bsUUID(r)
		s := []byte(u.String())
		switch i % 4 {
		case 1:
			s = bytes.ToUpper(s)
		case 2:
			s = bytes.ReplaceAll(s, []byte("-"), nil)
		}
		if i%3 == 0 { // a mutation or two
			for range 1 + r.IntN(2) {
				if len(s) == 0 {
					break
				}
				switch r.IntN(3) {
				case 0:
					s[r.IntN(len(s))] = alphabet[r.IntN(len(alphabet))]
				case 1:
					s = s[:r.IntN(len(s))]
				case 2:
					s = append(s, alphabet[r.IntN(len(alphabet))])
				}
			}
		}
		got, gok := parseUUID(s)
		want, wok := operators.ParseUUID(s)
		if got != want || gok != wok {
			t.Fatalf("%q: parseUUID %v %v, operators.ParseUUID %v %v", s, got, gok, want, wok)
		}
	}
}

func TestBootstrapTimeParsingMatchesTheStream(t *testing.T) {
	dec := operators.NewDecoder("u", "t")
	var ev operators.Event
	for _, s := range []string{"1", "0", "-5", "1714550400000", "1714550400000.9", "1.7145504e12", "4294967295999", "4294967296000",
		"2024-05-01T08:00:00Z", "2024-05-01t08:00:00z", "2024-05-01 08:00:00+02:00", "2024-05-01T08:00:00.123456-07:30",
		"2024-05-01T08:00:00", "2024-02-30T00:00:00Z", "1969-12-31T23:59:59Z", "yesterday", "", "12ab", "1e400", "00001",
		"999999999999999999", "9999999999999999999", "2016-12-31T23:59:60Z", "１"} {
		got, ok := operators.ParseEventTime([]byte(s))
		// The stream's verdict: the value as a JSON string, or as a number.
		want, wok := int64(0), false
		for _, js := range []string{strconv.Quote(s), s} {
			if dec.Decode([]byte(`{"u":"00000000000000000000000000000000","t":`+js+`}`), &ev) == operators.OK {
				want, wok = ev.EventTime, true
				break
			}
		}
		if ok != wok || ok && got != want {
			t.Errorf("%q: %d %v, the stream says %d %v", s, got, ok, want, wok)
		}
	}
}

func TestBootstrapFromClickHouse(t *testing.T) {
	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	conn := chtest.Conn(t, addr)
	ctx := context.Background()
	if err := conn.Exec(ctx, "CREATE TABLE "+db+".users (id UUID, sid String, dt DateTime('UTC'), ms UInt64, s String, ns Nullable(String)) ENGINE = Memory"); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(8, 8))
	want := map[operators.UUID]int64{}
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".users (id, sid, dt, ms, s, ns)")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		u := bsUUID(r)
		sec := 1_600_000_000 + r.Int64N(100_000_000)
		want[u] = sec * 1000
		var ns *string
		if i%2 == 0 {
			s := u.String()
			ns = &s
		}
		if err := batch.Append(u.String(), strings.ToUpper(u.String()), time.Unix(sec, 0), uint64(sec*1000),
			time.Unix(sec, 0).UTC().Format(time.RFC3339), ns); err != nil {
			t.Fatal(err)
		}
	}
	// Bad rows: a time of 0 (1970-01-01, the "unset" value), a bad string.
	if err := batch.Append("00000000-0000-0000-0000-000000000001", "zz", time.Unix(0, 0), uint64(0), "never", (*string)(nil)); err != nil {
		t.Fatal(err)
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}
	flags := func(q string) []string {
		return []string{"--clickhouse-addr", addr, "--clickhouse-database", db, "--users-query", q}
	}
	for _, tc := range []struct{ name, query string }{
		{"UUID and DateTime", "SELECT id, dt FROM users"},
		{"String and UInt64", "SELECT sid, ms FROM users"},
		{"String and String", "SELECT toString(id) AS u, s, 'extra' FROM users"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sum, errs := bsLoad(t, nil, dir, flags(tc.query)...)
			bsExpect(t, sum, map[string]float64{"rows read": 301, "loaded (valid)": 300, "rejected": 1, "new users": 300})
			if !strings.Contains(errs, "--users-query: row 301: ") {
				t.Errorf("the bad row is not reported: %s", errs)
			}
			bsCheck(t, dir, want)
		})
	}
	t.Run("Nullable", func(t *testing.T) {
		sum, errs := bsLoad(t, nil, t.TempDir(), flags("SELECT ns, dt FROM users ORDER BY ns")...)
		bsExpect(t, sum, map[string]float64{"rows read": 301, "loaded (valid)": 150, "rejected": 151})
		if !strings.Contains(errs, "uuid is NULL") {
			t.Errorf("NULL uuids not reported: %s", errs)
		}
	})
	t.Run("merge with existing state", func(t *testing.T) {
		dir := t.TempDir()
		var some operators.UUID
		for u := range want {
			some = u
			break
		}
		bsSeed(t, dir, map[operators.UUID]int64{some: 1000})
		sum, _ := bsLoad(t, nil, dir, flags("SELECT id, ms FROM users WHERE ms > 0")...)
		bsExpect(t, sum, map[string]float64{"new users": 299, "unchanged": 1, "lowered (now earlier)": 0})
		w := map[operators.UUID]int64{}
		for u, v := range want {
			w[u] = v
		}
		w[some] = 1000
		bsCheck(t, dir, w)
	})
	t.Run("wrong columns", func(t *testing.T) {
		for q, msg := range map[string]string{
			"SELECT id FROM users":                "returns 1 column(s)",
			"SELECT id, toFloat64(ms) FROM users": "the second column",
			"SELECT ms, dt FROM users":            "the first column",
		} {
			_, _, err := runCLI(t, nil, append([]string{"bootstrap", "--state-dir", t.TempDir(), "--log-level", "error"}, flags(q)...)...)
			var ue usageError
			if err == nil || !strings.Contains(err.Error(), msg) || !errors.As(err, &ue) {
				t.Errorf("%s: %v, want a usage error with %q", q, err, msg)
			}
		}
		_, _, err := runCLI(t, nil, append([]string{"bootstrap", "--state-dir", t.TempDir(), "--log-level", "error"}, flags("SELECT nope FROM users")...)...)
		if err == nil || !strings.Contains(err.Error(), "--users-query") {
			t.Errorf("a failing query: %v", err)
		}
	})
}

// TestBootstrapBenchmark10M loads a generated CSV of 10 million users into
// an empty state and reports the speed and the size on disk. It takes about
// a minute (half of it writing the CSV); run it with
// FIRSTSEEN_BENCH_BOOTSTRAP=1 go test -run BootstrapBenchmark10M -v ./cmd/firstseen/
// (FIRSTSEEN_BENCH_BOOTSTRAP_ROWS changes the size).
func TestBootstrapBenchmark10M(t *testing.T) {
	if os.Getenv("FIRSTSEEN_BENCH_BOOTSTRAP") != "1" {
		t.Skip("set FIRSTSEEN_BENCH_BOOTSTRAP=1 to run")
	}
	rows := 10_000_000
	if s := os.Getenv("FIRSTSEEN_BENCH_BOOTSTRAP_ROWS"); s != "" {
		rows, _ = strconv.Atoi(s)
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "users.csv")
	start := time.Now()
	if err := writeBenchCSV(in, rows); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(in)
	t.Logf("generated %d rows, %.0f MB, in %s", rows, float64(fi.Size())/1e6, time.Since(start).Round(time.Millisecond))
	st := filepath.Join(dir, "state")
	start = time.Now()
	sum, _ := bsLoad(t, nil, st, in)
	elapsed := time.Since(start)
	t.Logf("bootstrap: %d users in %s: %.0f users/s; %.1f bytes on disk per user; peak RSS of the test process %s",
		rows, elapsed.Round(time.Millisecond), float64(rows)/elapsed.Seconds(), sum["bytes on disk per user"], peakRSS())
	bsExpect(t, sum, map[string]float64{"new users": float64(rows), "users in state after": float64(rows)})
}

// writeBenchCSV writes rows random users with epoch-millisecond times.
func writeBenchCSV(path string, rows int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bytes.NewBuffer(make([]byte, 0, 1<<20))
	w.WriteString("uuid,first_seen\n")
	r := rand.New(rand.NewPCG(1, 2))
	for i := range rows {
		u := bsUUID(r)
		b := u.AppendCanonical(w.AvailableBuffer())
		b = append(b, ',')
		b = strconv.AppendInt(b, 1_600_000_000_000+r.Int64N(200_000_000_000), 10)
		b = append(b, '\n')
		w.Write(b)
		if w.Len() > 1<<20-64 || i == rows-1 {
			if _, err := f.Write(w.Bytes()); err != nil {
				f.Close()
				return err
			}
			w.Reset()
		}
	}
	return f.Close()
}

func peakRSS() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			return strings.TrimSpace(strings.TrimPrefix(l, "VmHWM:"))
		}
	}
	return "unknown"
}

// TestBootstrapStartsOnASlowPipe: with --format auto on stdin, the format is
// sniffed from the first line without waiting for more input, and the
// state is open (locked) while the rest arrives.
func TestBootstrapStartsOnASlowPipe(t *testing.T) {
	dir := t.TempDir()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, _, err := runCLI(t, pr, "bootstrap", "--state-dir", dir, "--log-level", "error", "-")
		done <- err
	}()
	fmt.Fprintf(pw, "uuid\tfirst_seen\n%s\t1000\n", bsUsers[0].uuid)
	deadline := time.Now().Add(10 * time.Second)
	for { // Pebble creates LOCK when it takes the lock
		if _, err := os.Stat(filepath.Join(dir, "LOCK")); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("bootstrap ended before its input did: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("bootstrap did not open the state while its input was still coming")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := state.Open(dir, state.Options{}); !state.IsLocked(err) {
		t.Fatalf("the state is not locked by the running bootstrap: %v", err)
	}
	fmt.Fprintf(pw, "%s\t2000\n", bsUsers[1].uuid)
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	bsCheck(t, dir, map[operators.UUID]int64{mustUUID(t, bsUsers[0].uuid): 1000, mustUUID(t, bsUsers[1].uuid): 2000})
}
