package main

import (
	"bytes"
	"compress/gzip"
	"context"
	encbin "encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks/clickhouse/chtest"
	"github.com/firstseen/firstseen/state"
)

// bsEnv is what a bootstrap test runs against: an in-process Kafka cluster
// with the input topic, the consumer group of the (stopped) replicas, and
// the changelog topic they restore from.
type bsEnv struct {
	c         *kfake.Cluster
	brokers   []string
	topic     string
	parts     int
	group     string
	changelog string
	work      string // --work-dir; empty again after every bootstrap
}

func newBsEnv(t testing.TB, parts int) *bsEnv {
	t.Helper()
	c := fakeKafka(t, parts, "activity")
	return &bsEnv{c: c, brokers: c.ListenAddrs(), topic: "activity", parts: parts, group: "firstseen",
		changelog: "firstseen-state", work: t.TempDir()}
}

// args is a bootstrap command line for the environment.
func (e *bsEnv) args(args ...string) []string {
	return append([]string{"bootstrap", "--brokers", strings.Join(e.brokers, ","), "--topic", e.topic,
		"--work-dir", e.work, "--log-level", "error"}, args...)
}

func (e *bsEnv) admin(t testing.TB) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

// bsLoad bootstraps with the given arguments, failing the test on an error,
// and returns the summary's numbers and stderr. The work directory must be
// left empty.
func bsLoad(t *testing.T, e *bsEnv, stdin io.Reader, args ...string) (map[string]float64, string) {
	t.Helper()
	out, errs, err := runCLI(t, stdin, e.args(args...)...)
	if err != nil {
		t.Fatalf("bootstrap %v: %v\nstderr:\n%s", args, err, errs)
	}
	bsWorkEmpty(t, e)
	return bsSummary(t, out), errs
}

func bsWorkEmpty(t *testing.T, e *bsEnv) {
	t.Helper()
	if left, _ := os.ReadDir(e.work); len(left) != 0 {
		t.Errorf("bootstrap left %d entries in --work-dir (%s)", len(left), left[0].Name())
	}
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
		"lowered (now earlier)", "unchanged", "users in state after", "written to changelog", "partitions",
		"bytes on disk per user", "users/s"} {
		if _, ok := m[k]; !ok {
			t.Fatalf("summary has no %q:\n%s", k, out)
		}
	}
	if !strings.Contains(out, "elapsed") {
		t.Fatalf("summary has no elapsed time:\n%s", out)
	}
	if m["written to changelog"] != m["new users"]+m["lowered (now earlier)"] {
		t.Errorf("%v records written to the changelog, but %v new and %v lowered users", m["written to changelog"],
			m["new users"], m["lowered (now earlier)"])
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

// bsRestore restores the given partitions of the changelog into a fresh
// directory, as a replica that gains them does, and returns it.
func bsRestore(t testing.TB, e *bsEnv, parts ...int32) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := engine.Restore(ctx, engine.Config{Brokers: e.brokers, Topic: e.topic, Group: e.group,
		ChangelogTopic: e.changelog, StateDir: dir}, parts); err != nil {
		t.Fatal(err)
	}
	return dir
}

func bsAllParts(e *bsEnv) []int32 {
	parts := make([]int32, e.parts)
	for i := range parts {
		parts[i] = int32(i)
	}
	return parts
}

// bsUsersOf reads every user of a partition's restored database.
func bsUsersOf(t testing.TB, dir string, part int32) map[operators.UUID]int64 {
	t.Helper()
	db, err := state.Open(engine.PartitionDir(dir, part), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
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

// bsState restores the changelog and returns every user, checking that
// each is on its partition (operators.PartitionOf).
func bsState(t testing.TB, e *bsEnv) map[operators.UUID]int64 {
	t.Helper()
	dir := bsRestore(t, e, bsAllParts(e)...)
	all := map[operators.UUID]int64{}
	for _, p := range bsAllParts(e) {
		for u, fs := range bsUsersOf(t, dir, p) {
			if want := operators.PartitionOf(&u, e.parts); want != p {
				t.Errorf("user %s restored on partition %d, but its records are on partition %d", u, p, want)
			}
			all[u] = fs
		}
	}
	return all
}

// bsCheck restores the changelog as the replicas do and checks that it
// holds exactly want, each user on its partition, looking every user up
// with state.Reader.Get.
func bsCheck(t *testing.T, e *bsEnv, want map[operators.UUID]int64) {
	t.Helper()
	dir := bsRestore(t, e, bsAllParts(e)...)
	var total int64
	for _, p := range bsAllParts(e) {
		db, err := state.Open(engine.PartitionDir(dir, p), state.Options{})
		if err != nil {
			t.Fatal(err)
		}
		r, err := db.NewReader()
		if err != nil {
			t.Fatal(err)
		}
		for u, w := range want {
			if operators.PartitionOf(&u, e.parts) != p {
				continue
			}
			if got, ok := r.Get(&u); !ok || got != w {
				t.Errorf("partition %d: user %s: first_seen %d (present %v), want %d", p, u, got, ok, w)
			}
		}
		n, err := db.Users()
		if err != nil {
			t.Fatal(err)
		}
		total += n
		r.Close()
		db.Close()
	}
	if total != int64(len(want)) {
		t.Errorf("the restored state holds %d users, want %d", total, len(want))
	}
}

// bsEnsureChangelog creates the changelog topic as the replicas do.
func bsEnsureChangelog(t testing.TB, e *bsEnv, parts int) {
	t.Helper()
	compact := "compact"
	_, err := e.admin(t).CreateTopic(context.Background(), int32(parts), 1, map[string]*string{"cleanup.policy": &compact}, e.changelog)
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		t.Fatal(err)
	}
}

// bsProduce writes records to the changelog, each to its partition.
func bsProduce(t testing.TB, e *bsEnv, recs ...*kgo.Record) {
	t.Helper()
	bsEnsureChangelog(t, e, e.parts)
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, r := range recs {
		r.Topic = e.changelog
	}
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func bsUserRecord(u operators.UUID, firstSeen int64, parts int) *kgo.Record {
	return &kgo.Record{Partition: operators.PartitionOf(&u, parts), Key: append([]byte{'u'}, u[:]...),
		Value: encbin.AppendVarint(nil, firstSeen)}
}

// bsSeed writes users to the changelog as the replicas' checkpoints do.
func bsSeed(t testing.TB, e *bsEnv, users map[operators.UUID]int64) {
	t.Helper()
	var recs []*kgo.Record
	for u, fs := range users {
		recs = append(recs, bsUserRecord(u, fs, e.parts))
	}
	bsProduce(t, e, recs...)
}

// bsChangelogEnd is the number of records in the changelog (0 if it does
// not exist).
func bsChangelogEnd(t testing.TB, e *bsEnv) int64 {
	t.Helper()
	ends, err := e.admin(t).ListEndOffsets(context.Background(), e.changelog)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil {
			n += o.Offset
		}
	})
	return n
}

// bsChangelogUsers reads the whole changelog and returns its users as
// compaction leaves them (each user's last record), checking what
// compaction relies on: each user is on its partition, and no record of a
// user is higher than an earlier one.
func bsChangelogUsers(t testing.TB, e *bsEnv) map[operators.UUID]int64 {
	t.Helper()
	last := map[operators.UUID]int64{}
	ends, err := e.admin(t).ListEndOffsets(context.Background(), e.changelog)
	if err != nil {
		t.Fatal(err)
	}
	offsets := map[int32]kgo.Offset{}
	left := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			offsets[o.Partition] = kgo.NewOffset().AtStart()
			left[o.Partition] = o.Offset
		}
	})
	if len(offsets) == 0 {
		return last
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{e.changelog: offsets}))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("reading the changelog: %v", err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if r.Offset+1 >= left[r.Partition] {
				delete(left, r.Partition)
			}
			if len(r.Key) != 17 || r.Key[0] != 'u' {
				return
			}
			u := operators.UUID(r.Key[1:])
			v, n := encbin.Varint(r.Value)
			if n <= 0 || n != len(r.Value) {
				t.Fatalf("changelog partition %d offset %d: bad value %x", r.Partition, r.Offset, r.Value)
			}
			if p := operators.PartitionOf(&u, e.parts); p != r.Partition {
				t.Errorf("user %s written to changelog partition %d, its records are on %d", u, r.Partition, p)
			}
			if old, ok := last[u]; ok && v > old {
				t.Errorf("user %s: changelog record at offset %d (%d) is higher than an earlier one (%d)", u, r.Offset, v, old)
			}
			last[u] = v
		})
	}
	return last
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
					t.Parallel()
					e := newBsEnv(t, 3)
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
					sum, errs := bsLoad(t, e, stdin, args...)
					if errs != "" {
						t.Errorf("stderr: %s", errs)
					}
					bsExpect(t, sum, map[string]float64{"rows read": 5, "loaded (valid)": 5, "rejected": 0, "new users": 5,
						"users in state after": 5, "written to changelog": 5, "partitions": 3})
					if how == "extension" {
						bsCheck(t, e, bsWant) // as the replicas restore it
					} else if got := bsChangelogUsers(t, e); !maps.Equal(got, bsWant) {
						t.Errorf("the changelog holds %v\nwant %v", got, bsWant)
					}
				})
			}
		}
	}
}

func TestBootstrapMergeRule(t *testing.T) {
	e := newBsEnv(t, 3)
	r := rand.New(rand.NewPCG(1, 2))
	earlier, later, same, fresh, dup := bsUUID(r), bsUUID(r), bsUUID(r), bsUUID(r), bsUUID(r)
	bsSeed(t, e, map[operators.UUID]int64{earlier: 2_000_000, later: 2_000_000, same: 2_000_000})
	csv := fmt.Sprintf("uuid,first_seen\n%s,1000000\n%s,3000000\n%s,2000000\n%s,5000000\n%s,9000\n%s,7000\n%s,8000\n",
		&earlier, &later, &same, &fresh, &dup, &dup, &dup)
	in := bsWrite(t, filepath.Join(t.TempDir(), "u.csv"), []byte(csv), false)
	want := map[operators.UUID]int64{earlier: 1_000_000, later: 2_000_000, same: 2_000_000, fresh: 5_000_000, dup: 7000}

	// Only the new and the lowered users are written.
	before := bsChangelogEnd(t, e)
	sum, _ := bsLoad(t, e, nil, in)
	bsExpect(t, sum, map[string]float64{"rows read": 7, "loaded (valid)": 7, "duplicates in input": 2, "new users": 2,
		"lowered (now earlier)": 1, "unchanged": 2, "users in state after": 5, "written to changelog": 3})
	if n := bsChangelogEnd(t, e) - before; n != 3 {
		t.Errorf("the load wrote %d changelog records, want 3 (2 new, 1 lowered)", n)
	}
	bsCheck(t, e, want)

	// Loading the same file again writes nothing.
	before = bsChangelogEnd(t, e)
	sum, _ = bsLoad(t, e, nil, in)
	bsExpect(t, sum, map[string]float64{"new users": 0, "lowered (now earlier)": 0, "unchanged": 5, "users in state after": 5,
		"written to changelog": 0})
	if n := bsChangelogEnd(t, e) - before; n != 0 {
		t.Errorf("loading the same input again wrote %d changelog records", n)
	}
	bsCheck(t, e, want)

	// Later times never make a user newer, and are not written; of a mix,
	// only the earlier and the new users are.
	other := bsUUID(r)
	csv = fmt.Sprintf("uuid,first_seen\n%s,2000001\n%s,9999999\n%s,7001\n%s,1999999\n%s,4000\n%s,123456\n",
		&earlier, &fresh, &dup, &later, &dup, &other)
	before = bsChangelogEnd(t, e)
	sum, _ = bsLoad(t, e, nil, bsWrite(t, filepath.Join(t.TempDir(), "mixed.csv"), []byte(csv), false))
	bsExpect(t, sum, map[string]float64{"new users": 1, "lowered (now earlier)": 2, "unchanged": 2, "users in state after": 6,
		"written to changelog": 3})
	if n := bsChangelogEnd(t, e) - before; n != 3 {
		t.Errorf("the mixed load wrote %d changelog records, want 3 (later and dup lowered, one new)", n)
	}
	want[later], want[dup], want[other] = 1_999_999, 4000, 123456
	bsCheck(t, e, want)
	if got := bsChangelogUsers(t, e); !maps.Equal(got, want) {
		t.Errorf("after compaction the changelog would hold %v\nwant %v", got, want)
	}
}

// TestBootstrapReachesEveryReplica: replicas that each own some partitions
// restore exactly the loaded users of their partitions.
func TestBootstrapReachesEveryReplica(t *testing.T) {
	e := newBsEnv(t, 4)
	r := rand.New(rand.NewPCG(6, 6))
	want := map[operators.UUID]int64{}
	var b strings.Builder
	b.WriteString("uuid,first_seen\n")
	for range 2000 {
		u := bsUUID(r)
		want[u] = 1_600_000_000_000 + r.Int64N(1e9)
		fmt.Fprintf(&b, "%s,%d\n", &u, want[u])
	}
	sum, _ := bsLoad(t, e, strings.NewReader(b.String()), "-")
	bsExpect(t, sum, map[string]float64{"new users": 2000, "written to changelog": 2000, "partitions": 4})
	// Replica A owns partitions 0 and 3, replica B 1 and 2.
	for _, owned := range [][]int32{{0, 3}, {1, 2}} {
		dir := bsRestore(t, e, owned...)
		for _, p := range owned {
			got := bsUsersOf(t, dir, p)
			n := 0
			for u, fs := range want {
				if operators.PartitionOf(&u, e.parts) != p {
					continue
				}
				n++
				if got[u] != fs {
					t.Errorf("partition %d: user %s = %d, want %d", p, u, got[u], fs)
				}
			}
			if len(got) != n || n == 0 {
				t.Errorf("partition %d restored %d users, want %d", p, len(got), n)
			}
		}
	}
}

func TestBootstrapReportsBadRows(t *testing.T) {
	e := newBsEnv(t, 2)
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
	sum, errs := bsLoad(t, e, nil, in)
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
	bsCheck(t, e, map[operators.UUID]int64{mustUUID(t, good): 1714550399999})

	// Only --max-reported of them are shown; all are counted.
	sum, errs = bsLoad(t, e, nil, "--max-reported", "2", in)
	if n := strings.Count(errs, "u.csv: line "); n != 2 || !strings.Contains(errs, "5 more bad rows not shown") {
		t.Errorf("--max-reported 2: %d reported:\n%s", n, errs)
	}
	bsExpect(t, sum, map[string]float64{"rejected": 7})

	// JSON Lines: the stream's decoder's reasons, with line numbers.
	jl := "{\"uuid\":\"" + good + "\",\"first_seen\":1}\nnot json\n[1]\n{\"first_seen\":1}\n{\"uuid\":\"x\",\"first_seen\":1}\n{\"uuid\":\"" + good + "\"}\n{\"uuid\":\"" + good + "\",\"first_seen\":\"soon\"}\n"
	sum, errs = bsLoad(t, newBsEnv(t, 2), strings.NewReader(jl), "--format", "jsonl", "-")
	bsExpect(t, sum, map[string]float64{"rows read": 7, "loaded (valid)": 1, "rejected": 6})
	for _, want := range []string{"stdin: line 2: not JSON", "stdin: line 3: not a JSON object", "stdin: line 4: no \"uuid\" member",
		"stdin: line 5: bad uuid", "stdin: line 6: no \"first_seen\" member", "stdin: line 7: bad first_seen"} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
}

func TestBootstrapStrictWritesNothing(t *testing.T) {
	e := newBsEnv(t, 3)
	r := rand.New(rand.NewPCG(3, 3))
	old := bsUUID(r)
	bsSeed(t, e, map[operators.UUID]int64{old: 5000})
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
	before := bsChangelogEnd(t, e)
	_, _, err := runCLI(t, nil, e.args("--strict", in)...)
	var ue usageError
	if err == nil || !strings.Contains(err.Error(), "line 5003") || !strings.Contains(err.Error(), "nothing was written") || errors.As(err, &ue) {
		t.Fatalf("--strict: %v; want a runtime error naming line 5003", err)
	}
	if n := bsChangelogEnd(t, e) - before; n != 0 {
		t.Errorf("--strict wrote %d changelog records", n)
	}
	bsCheck(t, e, map[operators.UUID]int64{old: 5000})
	bsWorkEmpty(t, e)
}

func TestBootstrapUsageErrors(t *testing.T) {
	dir := t.TempDir()
	csv := bsWrite(t, filepath.Join(dir, "u.csv"), []byte("id,ts\n3f1c2b9e-8a47-4b5e-9c1d-0123456789ab,1\n"), false)
	// No broker listens there: a usage error comes before Kafka is asked.
	e := &bsEnv{brokers: []string{"127.0.0.1:1"}, topic: "activity", work: t.TempDir()}
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
		{[]string{"--topic", "", csv}, "--topic is required"},
		{[]string{"--brokers", "kafka", csv}, `--brokers: "kafka" is not host:port`},
		{[]string{"--group", "", csv}, "--group is empty"},
		{[]string{"--changelog-topic", "activity", csv}, "must differ from --topic"},
		{[]string{"--work-dir", filepath.Join(dir, "missing"), csv}, "--work-dir"},
		{[]string{filepath.Join(dir, "missing.csv")}, "no such file"},
		{[]string{csv}, `the header has no column "uuid" (--uuid-column) or "first_seen" (--first-seen-column); it has ["id" "ts"]`},
		{[]string{"--uuid-column", "id", csv}, `no column "first_seen"`},
		{[]string{"--users-query", "SELECT 1", "--clickhouse-addr", "nohost"}, "not host:port"},
	} {
		_, _, err := runCLI(t, nil, e.args(tc.args...)...)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &ue) {
			t.Errorf("%v: got %v, want a usage error containing %q", tc.args, err, tc.want)
		}
	}
	bsWorkEmpty(t, e)
	// The right columns given by flag: loads.
	e = newBsEnv(t, 2)
	sum, _ := bsLoad(t, e, nil, "--uuid-column", "id", "--first-seen-column", "ts", csv)
	bsExpect(t, sum, map[string]float64{"new users": 1})
}

// TestBootstrapKafkaErrors: a missing input topic, and a changelog of
// another partition count, are refused with what to do.
func TestBootstrapKafkaErrors(t *testing.T) {
	e := newBsEnv(t, 3)
	in := bsWrite(t, filepath.Join(t.TempDir(), "u.csv"), bsContent("csv"), false)
	_, _, err := runCLI(t, nil, e.args("--topic", "nope", in)...)
	if err == nil || !strings.Contains(err.Error(), `topic "nope" does not exist`) {
		t.Errorf("missing topic: %v", err)
	}
	bsEnsureChangelog(t, e, 2)
	_, _, err = runCLI(t, nil, e.args(in)...)
	if err == nil || !strings.Contains(err.Error(), `the changelog topic "firstseen-state" has 2 partitions, but the input topic "activity" has 3`) {
		t.Errorf("changelog of 2 partitions: %v", err)
	}
	// Another group has its own changelog, created by bootstrap as the
	// replicas create it.
	sum, _ := bsLoad(t, e, nil, "--group", "other", in)
	bsExpect(t, sum, map[string]float64{"new users": 5})
	td, err := e.admin(t).ListTopics(context.Background(), "other-state")
	if err != nil || len(td["other-state"].Partitions) != 3 {
		t.Fatalf("other-state: %v %+v", err, td)
	}
	cfgs, err := e.admin(t).DescribeTopicConfigs(context.Background(), "other-state")
	if err != nil {
		t.Fatal(err)
	}
	c, err := cfgs.On("other-state", nil)
	if err != nil {
		t.Fatal(err)
	}
	compacted := false
	for _, kv := range c.Configs {
		compacted = compacted || kv.Key == "cleanup.policy" && kv.Value != nil && *kv.Value == "compact"
	}
	if !compacted {
		t.Errorf("the changelog bootstrap created is not compacted: %+v", c.Configs)
	}
	e.group, e.changelog = "other", "other-state"
	bsCheck(t, e, bsWant)
	// --changelog-topic names it.
	sum, _ = bsLoad(t, e, nil, "--group", "other", "--changelog-topic", "users-state", in)
	bsExpect(t, sum, map[string]float64{"new users": 5})
	e.changelog = "users-state"
	bsCheck(t, e, bsWant)
}

// TestBootstrapRepartitioned: with --repartition the replicas process the
// re-keyed internal topic, whose partition count decides the users'
// partitions; when it does not exist yet, the replicas will create it with
// the input's count.
func TestBootstrapRepartitioned(t *testing.T) {
	in := bsWrite(t, filepath.Join(t.TempDir(), "u.csv"), bsContent("csv"), false)
	e := newBsEnv(t, 2)
	sum, _ := bsLoad(t, e, nil, "--repartition", in)
	bsExpect(t, sum, map[string]float64{"new users": 5, "partitions": 2})
	bsCheck(t, e, bsWant)

	e = newBsEnv(t, 2)
	if _, err := e.admin(t).CreateTopic(context.Background(), 5, 1, nil, "firstseen-repartition"); err != nil {
		t.Fatal(err)
	}
	sum, _ = bsLoad(t, e, nil, "--repartition", in)
	bsExpect(t, sum, map[string]float64{"new users": 5, "partitions": 5})
	e.parts, e.topic = 5, "firstseen-repartition"
	bsCheck(t, e, bsWant)
	_, _, err := runCLI(t, nil, e.args("--repartition", "--repartition-topic", "firstseen-state", in)...)
	var ue usageError
	if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), "--repartition-topic") {
		t.Errorf("a repartition topic named as the changelog: %v", err)
	}
}

// bsJoinGroup starts a consumer in the group, as a replica is, and waits
// until the group lists it.
func bsJoinGroup(t testing.TB, e *bsEnv) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumerGroup(e.group), kgo.ConsumeTopics(e.topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	adm := e.admin(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		cl.PollFetches(ctx)
		cancel()
		gs, err := adm.DescribeGroups(context.Background(), e.group)
		if err == nil && len(gs[e.group].Members) > 0 {
			return cl
		}
		if time.Now().After(deadline) {
			t.Fatalf("the consumer did not join group %s: %v %+v", e.group, err, gs)
		}
	}
}

const bsRefusal = "stop the replicas (scale the StatefulSet to 0) first; when they start they restore the loaded users from the changelog"

func TestBootstrapRefusesWhileReplicasRun(t *testing.T) {
	e := newBsEnv(t, 3)
	in := bsWrite(t, filepath.Join(t.TempDir(), "u.csv"), bsContent("csv"), false)
	replica := bsJoinGroup(t, e)
	before := bsChangelogEnd(t, e)
	_, _, err := runCLI(t, nil, e.args(in)...)
	var ue usageError
	if err == nil || !strings.Contains(err.Error(), bsRefusal) || !strings.Contains(err.Error(), `consumer group "firstseen" has 1 active member`) || errors.As(err, &ue) {
		t.Fatalf("got %v\nwant a refusal saying %q", err, bsRefusal)
	}
	if n := bsChangelogEnd(t, e) - before; n != 0 {
		t.Errorf("%d changelog records written while a replica runs", n)
	}
	bsWorkEmpty(t, e)
	replica.Close() // leaves the group
	sum, _ := bsLoad(t, e, nil, in)
	bsExpect(t, sum, map[string]float64{"new users": 5})
	bsCheck(t, e, bsWant)

	// A replica that starts while the input is read: checked again before
	// anything is written.
	e2 := newBsEnv(t, 2)
	defer func() { bootstrapHooks.beforeWrite = nil }()
	bootstrapHooks.beforeWrite = func() { bsJoinGroup(t, e2) }
	_, _, err = runCLI(t, nil, e2.args(in)...)
	if err == nil || !strings.Contains(err.Error(), bsRefusal) || !strings.Contains(err.Error(), "nothing was written") {
		t.Fatalf("a replica started during the load: %v", err)
	}
	if n := bsChangelogEnd(t, e2); n != 0 {
		t.Errorf("%d changelog records written while a replica runs", n)
	}
	bsWorkEmpty(t, e2)
}

func TestBootstrapRefusesUnfinishedCheckpoint(t *testing.T) {
	e := newBsEnv(t, 2)
	r := rand.New(rand.NewPCG(7, 7))
	u := bsUUID(r)
	k, v := state.EncodeChangelogIntent(&state.Intent{Epoch: 7, Writer: "firstseen-0",
		Partitions: map[int32]state.IntentPartition{1: {Next: 10}}})
	rec := bsUserRecord(u, 5000, e.parts)
	bsProduce(t, e, rec, &kgo.Record{Partition: 1, Key: k, Value: v})
	in := bsWrite(t, filepath.Join(t.TempDir(), "u.csv"), bsContent("csv"), false)
	before := bsChangelogEnd(t, e)
	_, _, err := runCLI(t, nil, e.args(in)...)
	if err == nil || !strings.Contains(err.Error(), "partition 1's last checkpoint is unfinished (epoch 7") ||
		!strings.Contains(err.Error(), "nothing was written") {
		t.Fatalf("got %v, want a refusal naming the unfinished checkpoint", err)
	}
	if n := bsChangelogEnd(t, e) - before; n != 0 {
		t.Errorf("%d changelog records written", n)
	}
	bsWorkEmpty(t, e)
}

// TestBootstrapRandomAgainstOracle loads random inputs (duplicates, every
// uuid spelling and time form, bad rows) into a random existing state of a
// random number of partitions, with tiny thresholds so that the loads
// spill, split buckets by key group and parse in many chunks, and compares
// the restored state with a brute-force model; every load writes exactly
// its new and lowered users, and no changelog record is higher than an
// earlier one of its user.
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
		e := newBsEnv(t, 1+r.IntN(5))
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
		if len(existing) > 0 {
			bsSeed(t, e, existing)
		}
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
			changed := map[operators.UUID]bool{}
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
					changed[u] = true
				}
			}
			in := bsWrite(t, filepath.Join(t.TempDir(), "users."+format), b.Bytes(), r.IntN(2) == 0)
			before := bsChangelogEnd(t, e)
			sum, _ := bsLoad(t, e, nil, "--max-reported", "0", in)
			bsExpect(t, sum, map[string]float64{"rows read": float64(rows), "rejected": float64(bad),
				"loaded (valid)": float64(rows - bad), "users in state after": float64(len(oracle)),
				"written to changelog": float64(len(changed)), "partitions": float64(e.parts)})
			if n := bsChangelogEnd(t, e) - before; n != int64(len(changed)) {
				t.Fatalf("round %d load %d: %d changelog records written, %d users new or lowered", round, load, n, len(changed))
			}
			got := bsState(t, e)
			if len(got) != len(oracle) {
				t.Fatalf("round %d load %d: %d users, oracle %d", round, load, len(got), len(oracle))
			}
			for u, w := range oracle {
				if got[u] != w {
					t.Fatalf("round %d load %d (%s): user %s = %d, oracle %d", round, load, format, u, got[u], w)
				}
			}
		}
		// What compaction keeps of the changelog (each user's last record)
		// is the oracle too.
		if got := bsChangelogUsers(t, e); !maps.Equal(got, oracle) {
			t.Fatalf("round %d: the changelog's last records per user differ from the oracle (%d users, oracle %d)", round, len(got), len(oracle))
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
	_, errs := bsLoad(t, newBsEnv(t, 2), strings.NewReader(b.String()), "--max-reported", "1000", "-")
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
		"brokers", "topic", "group", "changelog-topic", "work-dir",
		"clickhouse-addr", "clickhouse-database", "clickhouse-user", "clickhouse-password-file", "log-level", "log-format",
		"kafka-tls", "kafka-sasl-mechanism", "kafka-user", "kafka-password-file", "clickhouse-tls", "config"} {
		if !strings.Contains(out, "--"+f+" ") {
			t.Errorf("bootstrap --help does not document --%s", f)
		}
	}
	for _, f := range []string{"state-dir", "timezone", "sink", "dlq-topic", "until-caught-up"} {
		if strings.Contains(out, "--"+f+" ") {
			t.Errorf("bootstrap --help shows --%s, which it ignores", f)
		}
	}
	for _, s := range []string{"min(stored, loaded)", "never", "changelog", "<group>-state", "replicas", "StatefulSet",
		"restore", "gzip", "RFC 3339", "epoch"} {
		if !strings.Contains(out, s) {
			t.Errorf("bootstrap --help does not mention %q", s)
		}
	}
	// run's flags are accepted (one set of flags serves both) and ignored;
	// --state-dir says it is no longer used.
	e := newBsEnv(t, 2)
	in := bsWrite(t, filepath.Join(t.TempDir(), "u.csv"), bsContent("csv"), false)
	t.Setenv("FIRSTSEEN_TIMEZONE", "Asia/Shanghai")
	out, errs, err := runCLI(t, nil, e.args("--state-dir", filepath.Join(t.TempDir(), "state"), "--tolerance", "5m",
		"--clickhouse-table", "x", "--dlq-topic", "d", "--until-caught-up", "--sink", "file", "--sink-path", "rows",
		"--shutdown-timeout", "10s", "--snapshot-interval", "0", "--checkpoint-interval", "1s", "--buffer-mib", "8", in)...)
	if err != nil {
		t.Fatalf("bootstrap with run's flags: %v\n%s", err, errs)
	}
	// cobra prints it where the command's output goes (stderr, unless a
	// test redirects it).
	if !strings.Contains(out+errs, "Flag --state-dir has been deprecated, bootstrap no longer uses it") {
		t.Errorf("--state-dir is not reported as unused:\n%s%s", out, errs)
	}
	bsExpect(t, bsSummary(t, out), map[string]float64{"new users": 5})
	bsCheck(t, e, bsWant)
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
			e := newBsEnv(t, 3)
			sum, errs := bsLoad(t, e, nil, flags(tc.query)...)
			bsExpect(t, sum, map[string]float64{"rows read": 301, "loaded (valid)": 300, "rejected": 1, "new users": 300})
			if !strings.Contains(errs, "--users-query: row 301: ") {
				t.Errorf("the bad row is not reported: %s", errs)
			}
			bsCheck(t, e, want)
		})
	}
	t.Run("Nullable", func(t *testing.T) {
		sum, errs := bsLoad(t, newBsEnv(t, 3), nil, flags("SELECT ns, dt FROM users ORDER BY ns")...)
		bsExpect(t, sum, map[string]float64{"rows read": 301, "loaded (valid)": 150, "rejected": 151})
		if !strings.Contains(errs, "uuid is NULL") {
			t.Errorf("NULL uuids not reported: %s", errs)
		}
	})
	t.Run("merge with existing state", func(t *testing.T) {
		e := newBsEnv(t, 3)
		var some operators.UUID
		for u := range want {
			some = u
			break
		}
		bsSeed(t, e, map[operators.UUID]int64{some: 1000})
		sum, _ := bsLoad(t, e, nil, flags("SELECT id, ms FROM users WHERE ms > 0")...)
		bsExpect(t, sum, map[string]float64{"new users": 299, "unchanged": 1, "lowered (now earlier)": 0, "written to changelog": 299})
		w := map[operators.UUID]int64{}
		for u, v := range want {
			w[u] = v
		}
		w[some] = 1000
		bsCheck(t, e, w)
	})
	t.Run("wrong columns", func(t *testing.T) {
		e := newBsEnv(t, 3)
		for q, msg := range map[string]string{
			"SELECT id FROM users":                "returns 1 column(s)",
			"SELECT id, toFloat64(ms) FROM users": "the second column",
			"SELECT ms, dt FROM users":            "the first column",
		} {
			_, _, err := runCLI(t, nil, e.args(flags(q)...)...)
			var ue usageError
			if err == nil || !strings.Contains(err.Error(), msg) || !errors.As(err, &ue) {
				t.Errorf("%s: %v, want a usage error with %q", q, err, msg)
			}
		}
		_, _, err := runCLI(t, nil, e.args(flags("SELECT nope FROM users")...)...)
		if err == nil || !strings.Contains(err.Error(), "--users-query") {
			t.Errorf("a failing query: %v", err)
		}
		if n := bsChangelogEnd(t, e); n != 0 {
			t.Errorf("%d changelog records written", n)
		}
		bsWorkEmpty(t, e)
	})
}

// TestBootstrapBenchmark10M loads a generated CSV of 10 million users into
// an empty state through the changelog of an in-process broker (kfake,
// which holds the records in memory) and reports the speed and the size of
// the scratch copy on disk. Run it with
// FIRSTSEEN_BENCH_BOOTSTRAP=1 go test -run BootstrapBenchmark10M -v ./cmd/firstseen/
// (FIRSTSEEN_BENCH_BOOTSTRAP_ROWS changes the size,
// FIRSTSEEN_BENCH_BOOTSTRAP_PARTITIONS the input topic's partitions, default 12).
func TestBootstrapBenchmark10M(t *testing.T) {
	if os.Getenv("FIRSTSEEN_BENCH_BOOTSTRAP") != "1" {
		t.Skip("set FIRSTSEEN_BENCH_BOOTSTRAP=1 to run")
	}
	rows, parts := 10_000_000, 12
	if s := os.Getenv("FIRSTSEEN_BENCH_BOOTSTRAP_ROWS"); s != "" {
		rows, _ = strconv.Atoi(s)
	}
	if s := os.Getenv("FIRSTSEEN_BENCH_BOOTSTRAP_PARTITIONS"); s != "" {
		parts, _ = strconv.Atoi(s)
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "users.csv")
	start := time.Now()
	if err := writeBenchCSV(in, rows); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(in)
	t.Logf("generated %d rows, %.0f MB, in %s", rows, float64(fi.Size())/1e6, time.Since(start).Round(time.Millisecond))
	e := newBsEnv(t, parts)
	start = time.Now()
	sum, _ := bsLoad(t, e, nil, in)
	elapsed := time.Since(start)
	t.Logf("bootstrap: %d users into %d partitions in %s: %.0f users/s; %.1f bytes on disk per user; peak RSS of the test process (with the broker) %s",
		rows, parts, elapsed.Round(time.Millisecond), float64(rows)/elapsed.Seconds(), sum["bytes on disk per user"], peakRSS())
	bsExpect(t, sum, map[string]float64{"new users": float64(rows), "users in state after": float64(rows),
		"written to changelog": float64(rows)})
	if n := bsChangelogEnd(t, e); n != int64(rows) {
		t.Errorf("changelog holds %d records, want %d", n, rows)
	}
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
// changelog is restored while the rest arrives.
func TestBootstrapStartsOnASlowPipe(t *testing.T) {
	e := newBsEnv(t, 2)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, _, err := runCLI(t, pr, e.args("-")...)
		done <- err
	}()
	fmt.Fprintf(pw, "uuid\tfirst_seen\n%s\t1000\n", bsUsers[0].uuid)
	deadline := time.Now().Add(10 * time.Second)
	for { // the scratch copy's partitions, once restored, hold a loader's directory
		if m, _ := filepath.Glob(filepath.Join(e.work, "*", "partition-1", "load-tmp-*")); len(m) > 0 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("bootstrap ended before its input did: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("bootstrap did not restore the changelog while its input was still coming")
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Fprintf(pw, "%s\t2000\n", bsUsers[1].uuid)
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	bsWorkEmpty(t, e)
	bsCheck(t, e, map[operators.UUID]int64{mustUUID(t, bsUsers[0].uuid): 1000, mustUUID(t, bsUsers[1].uuid): 2000})
}
