package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/state"
)

// stSeed makes partition part's database in stateDir as a processor leaves
// it: users, and a checkpoint at offset next.
func stSeed(t *testing.T, stateDir string, part int32, users map[operators.UUID]int64, next int64) {
	t.Helper()
	db, err := state.Open(engine.PartitionDir(stateDir, part), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	b := db.NewBatch()
	defer b.Close()
	for u, fs := range users {
		b.SetUser(&u, fs)
	}
	b.PutPartition(part, state.PartitionCheckpoint{NextOffset: next, ChangelogNext: int64(len(users)),
		Progress: operators.Progress{MaxEventTime: 1_800_000_000_000, Watermark: 1_800_000_000_000 - 600_000}})
	h := state.Header{Epoch: uint64(3 + part), Topic: "activity", Group: "firstseen", Tolerance: 10 * time.Minute,
		Timezone: "UTC", Time: time.UnixMilli(1_800_000_000_000 + int64(part))}
	if err := db.Commit(h, b); err != nil {
		t.Fatal(err)
	}
}

// stFixture is a processor's state directory with three partitions; one
// user's records were on two partitions (so both hold it).
func stFixture(t *testing.T) (dir string, users []map[operators.UUID]int64, shared operators.UUID, all map[operators.UUID]int64) {
	t.Helper()
	dir = t.TempDir()
	r := rand.New(rand.NewPCG(11, 12))
	all = map[operators.UUID]int64{}
	shared = bsUUID(r)
	for p := range int32(3) {
		m := map[operators.UUID]int64{shared: 5_000_000 - int64(p)*1000}
		for range 100 + 50*int(p) {
			m[bsUUID(r)] = 1_700_000_000_000 + r.Int64N(1e10)
		}
		for u, fs := range m {
			if old, ok := all[u]; !ok || fs < old {
				all[u] = fs
			}
		}
		users = append(users, m)
		stSeed(t, dir, p, m, 1000*int64(p+1))
	}
	return dir, users, shared, all
}

func TestStateStatsSumsPartitions(t *testing.T) {
	dir, users, _, _ := stFixture(t)
	out, err := execute(t, "state", "stats", "--state-dir", dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	total := len(users[0]) + len(users[1]) + len(users[2])
	for _, want := range []string{
		fmt.Sprintf("users            %d\n", total),
		"partitions       0, 1, 2\n",
		"checkpoint       epoch 5 at ",
		"topic            activity (group firstseen)",
		"time zone        UTC, tolerance 10m0s",
		"partition  users  next offset  watermark",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stats lacks %q:\n%s", want, out)
		}
	}
	for p := range 3 {
		row := regexp.MustCompile(fmt.Sprintf(`(?m)^%d +%d +%d +2027-01-15T07:50:00.000Z +2027-01-15T08:00:00.000Z +0 +%d$`,
			p, len(users[p]), 1000*(p+1), len(users[p])))
		if !row.MatchString(out) {
			t.Errorf("stats has no row %s:\n%s", row, out)
		}
	}
	if strings.Contains(out, "snapshot") || strings.Contains(out, "unfinished") {
		t.Errorf("stats of a free state:\n%s", out)
	}
	// bytes per user is the sum over the partitions.
	if !regexp.MustCompile(`bytes per user   [0-9]+\.[0-9]`).MatchString(out) {
		t.Errorf("no bytes per user:\n%s", out)
	}
}

func TestStateGetFindsThePartition(t *testing.T) {
	dir, users, shared, _ := stFixture(t)
	var one operators.UUID
	for u := range users[2] {
		if u != shared {
			one = u
			break
		}
	}
	unknown := bsUUID(rand.New(rand.NewPCG(99, 99)))
	out, err := execute(t, "state", "get", "--state-dir", dir, "--partitions", "3",
		strings.ToUpper(one.String()), strings.ReplaceAll(shared.String(), "-", ""), unknown.String())
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "uuid") || !strings.Contains(lines[0], "partition  home") {
		t.Fatalf("get output:\n%s", out)
	}
	want := []string{
		fmt.Sprintf("%s %s %d 2 %d", one, time.UnixMilli(users[2][one]).UTC().Format("2006-01-02T15:04:05.000Z07:00"),
			one.KeyGroup(), operators.PartitionOf(&one, 3)),
		// Found on every partition: the earliest time, and all three.
		fmt.Sprintf("%s 1970-01-01T01:23:18.000Z %d 0,1,2 %d", shared, shared.KeyGroup(), operators.PartitionOf(&shared, 3)),
		fmt.Sprintf("%s unknown %d - %d", unknown, unknown.KeyGroup(), operators.PartitionOf(&unknown, 3)),
	}
	for i, w := range want {
		if got := strings.Join(strings.Fields(lines[i+1]), " "); got != w {
			t.Errorf("line %d: %q\nwant %q", i+1, got, w)
		}
	}
	// Without --partitions there is no home column; a bad uuid is a usage
	// error.
	out, err = execute(t, "state", "get", "--state-dir", dir, one.String())
	if err != nil || strings.Contains(out, "home") || !strings.Contains(out, " 2\n") {
		t.Errorf("get without --partitions: %v\n%s", err, out)
	}
	if _, err := execute(t, "state", "get", "--state-dir", dir, "nope"); err == nil {
		t.Error("a bad uuid is accepted")
	}
}

func TestStateExportMergesPartitions(t *testing.T) {
	dir, _, _, all := stFixture(t)
	outFile := filepath.Join(t.TempDir(), "users.csv")
	if out, err := execute(t, "state", "export", "--state-dir", dir, "--output", outFile); err != nil ||
		!strings.Contains(out, fmt.Sprintf("exported %d users of 3 partitions", len(all))) {
		t.Fatalf("export: %v\n%s", err, out)
	}
	b, err := os.ReadFile(outFile)
	if err != nil {
		t.Fatal(err)
	}
	// Every user once, with its earliest time, in key order (key group,
	// then uuid): the order of one database's keys.
	type kv struct {
		key []byte
		s   string
	}
	var want []kv
	for u, fs := range all {
		k := []byte{byte(u.KeyGroup() >> 8), byte(u.KeyGroup())}
		want = append(want, kv{append(k, u[:]...), fmt.Sprintf("%s,%s\n", u, time.UnixMilli(fs).UTC().Format("2006-01-02T15:04:05.000Z07:00"))})
	}
	slices.SortFunc(want, func(a, b kv) int { return bytes.Compare(a.key, b.key) })
	var exp strings.Builder
	exp.WriteString("uuid,first_seen\n")
	for _, w := range want {
		exp.WriteString(w.s)
	}
	if string(b) != exp.String() {
		t.Errorf("export differs from the merged users (%d bytes, want %d):\n%.400s", len(b), exp.Len(), b)
	}
	// One partition: the same.
	one := t.TempDir()
	users := map[operators.UUID]int64{}
	for u, fs := range all {
		if len(users) < 50 {
			users[u] = fs
		}
	}
	stSeed(t, one, 4, users, 10)
	out, err := execute(t, "state", "export", "--state-dir", one)
	if err != nil || strings.Count(out, "\n") != 1+50+1 { // header, users, the count line (same buffer here)
		t.Errorf("export of one partition: %v\n%s", err, out)
	}
}

func TestStateReadsSnapshotsOfHeldPartitions(t *testing.T) {
	dir, users, _, _ := stFixture(t)
	// A processor holds partition 1 and has published a snapshot of it.
	db, err := state.Open(engine.PartitionDir(dir, 1), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.PublishSnapshot(); err != nil {
		t.Fatal(err)
	}
	out, err := execute(t, "state", "stats", "--state-dir", dir)
	if err != nil || !strings.Contains(out, "source           the newest snapshot of partitions 1 (a processor holds them)") ||
		!strings.Contains(out, fmt.Sprintf("users            %d\n", len(users[0])+len(users[1])+len(users[2]))) {
		t.Fatalf("stats with a held partition: %v\n%s", err, out)
	}
	var u operators.UUID
	for u = range users[1] {
		break
	}
	out, err = execute(t, "state", "get", "--state-dir", dir, u.String())
	if err != nil || !strings.Contains(out, "(partitions 1 read from the newest snapshot: a processor holds them)") {
		t.Fatalf("get with a held partition: %v\n%s", err, out)
	}
	// Without a snapshot yet, it says so.
	db2, err := state.Open(engine.PartitionDir(dir, 2), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	if out, err := execute(t, "state", "stats", "--state-dir", dir); err == nil || !strings.Contains(err.Error(), "partition 2") ||
		!strings.Contains(err.Error(), "no snapshot yet") {
		t.Fatalf("a held partition without a snapshot: %v\n%s", err, out)
	}
}

func TestStateRefusesOtherLayouts(t *testing.T) {
	empty := t.TempDir()
	os.MkdirAll(filepath.Join(empty, "partition-x"), 0o755) // not a partition
	for _, cmd := range []string{"stats", "export"} {
		if _, err := execute(t, "state", cmd, "--state-dir", empty); err == nil || !strings.Contains(err.Error(), "no partition-N directories") {
			t.Errorf("%s of an empty dir: %v", cmd, err)
		}
	}
	// A state of the single-database layout.
	old := t.TempDir()
	db, err := state.Open(old, state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := execute(t, "state", "get", "--state-dir", old, bsUsers[0].uuid); err == nil || !strings.Contains(err.Error(), "older firstseen") {
		t.Errorf("get of the old layout: %v", err)
	}
	if _, err := execute(t, "state", "stats", "--state-dir", filepath.Join(old, "missing")); err == nil {
		t.Error("stats of a missing dir succeeded")
	}
}
