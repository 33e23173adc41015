package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
)

// genFlags is a small workload with every kind of record.
var genFlags = []string{"generate", "--users", "400", "--days", "3", "--partitions", "3", "--seed", "7",
	"--start", "2026-02-01", "--late-share", "0.01", "--malformed-share", "0.02", "--skew", "0.8"}

func genConfig() workload.Config {
	return workload.Config{Users: 400, Days: 3, Partitions: 3, Seed: 7, Start: time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC),
		LateShare: 0.01, MalformedShare: 0.02, Skew: 0.8}
}

func generated(t *testing.T, cfg workload.Config) []workload.Record {
	t.Helper()
	recs, err := workload.Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func sameRecords(t *testing.T, got, want []workload.Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d records, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := &got[i], &want[i]
		if g.Partition != w.Partition || !bytes.Equal(g.Key, w.Key) || (g.Key == nil) != (w.Key == nil) ||
			!bytes.Equal(g.Value, w.Value) || !g.Timestamp.Equal(w.Timestamp) || g.Kind != w.Kind || g.Day != w.Day {
			t.Fatalf("record %d: got %+v, want %+v", i, *g, *w)
		}
	}
}

func readOracleFile(t *testing.T, path string) []workload.Expected {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	exp, err := workload.ReadOracle(f)
	if err != nil {
		t.Fatal(err)
	}
	return exp
}

func TestGenerateToFile(t *testing.T) {
	dir := t.TempDir()
	file := func(n string) string { return filepath.Join(dir, n) }
	out, _, err := runCLI(t, nil, append(genFlags, "--output", file("w1.jsonl"), "--oracle", file("o1.jsonl"))...)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"generated ", "of 400 users over 3 days from 2026-02-01", "valid", "late", "not_json",
		"future", "day (UTC)", "2026-02-01", "2026-02-03", "new users", "total",
		"wrote ", file("w1.jsonl"), file("o1.jsonl"), "offsets assume the topic was empty"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}

	want := generated(t, genConfig())
	f, err := os.Open(file("w1.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := workload.ReadJSONL(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	sameRecords(t, got, want)
	kinds := map[workload.Kind]bool{}
	for i := range got {
		kinds[got[i].Kind] = true
	}
	if len(kinds) != 9 {
		t.Errorf("the workload has only the kinds %v", kinds)
	}
	if exp := readOracleFile(t, file("o1.jsonl")); !reflect.DeepEqual(exp, workload.Oracle(want, operators.Config{}, nil)) {
		t.Error("the --oracle file differs from workload.Oracle")
	}

	// Same flags, same bytes; another seed, other bytes.
	if _, _, err := runCLI(t, nil, append(genFlags, "--output", file("w2.jsonl"), "--oracle", file("o2.jsonl"))...); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCLI(t, nil, append(genFlags, "--output", file("w3.jsonl"), "--seed", "8")...); err != nil {
		t.Fatal(err)
	}
	read := func(n string) []byte {
		b, err := os.ReadFile(file(n))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if !bytes.Equal(read("w1.jsonl"), read("w2.jsonl")) || !bytes.Equal(read("o1.jsonl"), read("o2.jsonl")) {
		t.Error("the same seed gave different bytes")
	}
	if bytes.Equal(read("w1.jsonl"), read("w3.jsonl")) {
		t.Error("another seed gave the same bytes")
	}

	// "-" writes the workload alone on standard output; the summary goes
	// to standard error.
	stdout, stderr, err := runCLI(t, nil, append(genFlags, "--output", "-")...)
	if err != nil {
		t.Fatal(err)
	}
	if stdout != string(read("w1.jsonl")) || !strings.Contains(stderr, "day (UTC)") {
		t.Errorf("--output -: %d bytes on stdout (want %d); stderr:\n%s", len(stdout), len(read("w1.jsonl")), stderr)
	}
}

// The oracle follows --tolerance (also the generator's), --max-future and
// --timezone.
func TestGenerateOracleFollowsEventFlags(t *testing.T) {
	loc, err := time.LoadLocation("Asia/Shanghai")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "o.jsonl")
	if _, _, err := runCLI(t, nil, append(genFlags, "--output", os.DevNull, "--oracle", path,
		"--tolerance", "5m", "--max-future", "30m", "--timezone", "Asia/Shanghai")...); err != nil {
		t.Fatal(err)
	}
	cfg := genConfig()
	cfg.Tolerance = 5 * time.Minute
	recs := generated(t, cfg)
	want := workload.Oracle(recs, operators.Config{Tolerance: 5 * time.Minute, MaxFuture: 30 * time.Minute, Calendar: operators.NewCalendar(loc)}, nil)
	if got := readOracleFile(t, path); !reflect.DeepEqual(got, want) {
		t.Error("the --oracle file differs from workload.Oracle with the event flags")
	}
	if reflect.DeepEqual(want, workload.Oracle(recs, operators.Config{}, nil)) {
		t.Error("the test is too weak: the flags do not change the answer")
	}
}

// checkAgainstOracle checks that the topic holds exactly recs at the
// partitions and offsets the oracle names.
func checkAgainstOracle(t *testing.T, got map[int32][]*kgo.Record, recs []workload.Record, exp []workload.Expected) {
	t.Helper()
	if len(exp) != len(recs) {
		t.Fatalf("oracle of %d records for %d", len(exp), len(recs))
	}
	dec := operators.NewDecoder("uuid", "event_time")
	for i, e := range exp {
		ps := got[e.Partition]
		if e.Offset >= int64(len(ps)) {
			t.Fatalf("record %d: partition %d has no offset %d", i, e.Partition, e.Offset)
		}
		r, w := ps[e.Offset], &recs[i]
		if !bytes.Equal(r.Key, w.Key) || (r.Key == nil) != (w.Key == nil) || !bytes.Equal(r.Value, w.Value) || !r.Timestamp.Equal(w.Timestamp) {
			t.Fatalf("record %d at %d/%d: key %q value %q ts %v, want %q %q %v", i, e.Partition, e.Offset,
				r.Key, r.Value, r.Timestamp, w.Key, w.Value, w.Timestamp)
		}
		var ev operators.Event
		if reason := dec.Decode(r.Value, &ev); e.Reason != operators.TooFarInFuture && reason != e.Reason || (reason == operators.OK && ev.UUID != e.UUID) {
			t.Fatalf("record %d: decodes to %v %v, oracle says %v %v", i, reason, ev.UUID, e.Reason, e.UUID)
		}
	}
}

func TestGenerateToTopic(t *testing.T) {
	c := fakeKafka(t, 0) // generate creates the topic
	path := filepath.Join(t.TempDir(), "o.jsonl")
	out, _, err := runCLI(t, nil, append(genFlags, "--brokers", c.ListenAddrs()[0], "--topic", "acts", "--oracle", path)...)
	if err != nil {
		t.Fatal(err)
	}
	recs := generated(t, genConfig())
	if !strings.Contains(out, `to topic "acts" (3 partitions)`) || !strings.Contains(out, "records/s") {
		t.Errorf("summary:\n%s", out)
	}
	exp := readOracleFile(t, path)
	checkAgainstOracle(t, consumeTopic(t, c, "acts", len(recs)), recs, exp)
	if !reflect.DeepEqual(exp, workload.Oracle(recs, operators.Config{}, nil)) {
		t.Error("the --oracle file differs from workload.Oracle")
	}

	// Again: the topic is no longer empty, and the oracle's offsets cannot
	// match. It says so.
	out, _, err = runCLI(t, nil, append(genFlags, "--brokers", c.ListenAddrs()[0], "--topic", "acts", "--oracle", path)...)
	if err != nil || !strings.Contains(out, "already holds") {
		t.Errorf("second run: %v\n%s", err, out)
	}
}

// An existing topic keeps its partition count; keyed records go where
// Kafka's default partitioner puts them in it.
func TestGenerateToTopicWithOtherPartitionCount(t *testing.T) {
	c := fakeKafka(t, 5, "acts")
	path := filepath.Join(t.TempDir(), "o.jsonl")
	out, _, err := runCLI(t, nil, append(genFlags, "--brokers", c.ListenAddrs()[0], "--topic", "acts", "--oracle", path)...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `topic "acts" has 5 partitions, not 3`) {
		t.Errorf("no note about the partition count:\n%s", out)
	}
	recs := generated(t, genConfig())
	for i := range recs {
		if r := &recs[i]; r.Key != nil {
			r.Partition = workload.Partition(r.Key, 5)
		} else {
			r.Partition %= 5
		}
	}
	exp := readOracleFile(t, path)
	if !reflect.DeepEqual(exp, workload.Oracle(recs, operators.Config{}, nil)) {
		t.Error("the --oracle file differs from workload.Oracle over the repartitioned records")
	}
	got := consumeTopic(t, c, "acts", len(recs))
	checkAgainstOracle(t, got, recs, exp)
	if len(got) != 5 {
		t.Errorf("records on %d partitions, want 5", len(got))
	}
}

// generate --output F, then produce F, is generate --topic: the same
// records at the same partitions and offsets, the ones the oracle names.
func TestGenerateOutputThenProduceIsGenerateToTopic(t *testing.T) {
	c := fakeKafka(t, 3, "viafile", "direct")
	b := c.ListenAddrs()[0]
	dir := t.TempDir()
	wfile, ofile := filepath.Join(dir, "w.jsonl"), filepath.Join(dir, "o.jsonl")
	if _, _, err := runCLI(t, nil, append(genFlags, "--output", wfile, "--oracle", ofile)...); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, nil, "produce", "--brokers", b, "--topic", "viafile", "--batch", "50", "--log-level", "error", wfile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "workload JSON Lines") {
		t.Errorf("produce did not recognize the workload format:\n%s", out)
	}
	if _, _, err := runCLI(t, nil, append(genFlags, "--brokers", b, "--topic", "direct")...); err != nil {
		t.Fatal(err)
	}
	recs := generated(t, genConfig())
	exp := readOracleFile(t, ofile)
	viaFile := consumeTopic(t, c, "viafile", len(recs))
	direct := consumeTopic(t, c, "direct", len(recs))
	checkAgainstOracle(t, viaFile, recs, exp)
	checkAgainstOracle(t, direct, recs, exp)
	unkeyed := 0
	for i := range recs {
		if recs[i].Key == nil {
			unkeyed++
		}
	}
	if unkeyed == 0 {
		t.Error("the test is too weak: no unkeyed records")
	}
}

func TestGenerateRefusals(t *testing.T) {
	out := filepath.Join(t.TempDir(), "w.jsonl")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"generate"}, "give --topic"},
		{[]string{"generate", "--topic", "t", "--output", out}, "not both"},
		{[]string{"generate", "--output", out, "--oracle", out}, "--output and --oracle must differ"},
		{[]string{"generate", "--output", out, "--users", "0"}, "--users 0 must be at least 1"},
		{[]string{"generate", "--output", out, "--days", "0"}, "--days 0"},
		{[]string{"generate", "--output", out, "--new-share", "1.5"}, "--new-share 1.5"},
		{[]string{"generate", "--output", out, "--late-share", "-0.1"}, "--late-share -0.1"},
		{[]string{"generate", "--output", out, "--malformed-share", "1"}, "--malformed-share 1 must be at least 0 and below 1"},
		{[]string{"generate", "--output", out, "--skew", "-1"}, "--skew -1"},
		{[]string{"generate", "--output", out, "--records-per-user", "0"}, "--records-per-user 0"},
		{[]string{"generate", "--output", out, "--partitions", "0"}, "--partitions 0"},
		{[]string{"generate", "--output", out, "--start", "05.01.2026"}, `--start "05.01.2026" is not a date`},
		{[]string{"generate", "--output", out, "--timezone", "Mars/Olympus"}, "--timezone"},
		{[]string{"generate", "--topic", "t", "--brokers", "kafka"}, `"kafka" is not host:port`},
		{[]string{"generate", "--output", out, "extra"}, "takes no arguments"},
	}
	for _, tc := range cases {
		_, _, err := runCLI(t, nil, tc.args...)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &ue) {
			t.Errorf("%v: got %v, want a usage error containing %q", tc.args, err, tc.want)
		}
	}
	// A topic from the environment does not conflict with --output on the
	// command line: the command line wins.
	t.Setenv("FIRSTSEEN_TOPIC", "t")
	if _, _, err := runCLI(t, nil, "generate", "--users", "20", "--output", out); err != nil {
		t.Errorf("FIRSTSEEN_TOPIC with --output: %v", err)
	}
	// Zero shares mean none, not the defaults.
	if _, _, err := runCLI(t, nil, "generate", "--users", "300", "--late-share", "0", "--malformed-share", "0", "--output", out); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(out)
	recs, err := workload.ReadJSONL(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		if recs[i].Kind != workload.Valid {
			t.Fatalf("record %d is %v with --late-share 0 --malformed-share 0", i, recs[i].Kind)
		}
	}
}

func TestGenerateHelp(t *testing.T) {
	out, _, err := runCLI(t, nil, "generate", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--users ", "--days ", "--new-share ", "--skew ", "--records-per-user ", "--late-share ",
		"--malformed-share ", "--partitions ", "--seed ", "--start ", "--output ", "--oracle ", "--brokers ", "--topic ",
		"--tolerance ", "--max-future ", "--timezone ", "--uuid-field ", "--time-field ", "assume the topic was empty"} {
		if !strings.Contains(out, want) {
			t.Errorf("generate --help lacks %q", want)
		}
	}
}
