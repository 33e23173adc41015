package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firstseen/firstseen/engine/enginetest"
	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks/filesink"
)

// TestBootstrapThenRun: users loaded from the user table are returning
// users: none of their rows is new, and every row equals the oracle given
// the same bootstrap state. Then `state export` and `bootstrap` of the
// export into a new state give an identical state.
func TestBootstrapThenRun(t *testing.T) {
	broker := enginetest.StartBroker(t, "logs", 3)
	recs, err := workload.Generate(workload.Config{Users: 2000, Days: 2, Partitions: 3, Seed: 9,
		Start: time.Date(2026, 8, 10, 0, 0, 0, 0, time.UTC), LateShare: 0.005, MalformedShare: 0.005})
	if err != nil {
		t.Fatal(err)
	}
	// Every third user is in the user table, first seen a month earlier.
	boot := map[operators.UUID]int64{}
	var csv bytes.Buffer
	csv.WriteString("uuid,first_seen\n")
	dec := operators.NewDecoder("uuid", "event_time")
	for i := range recs {
		var ev operators.Event
		if dec.Decode(recs[i].Value, &ev) != operators.OK || ev.UUID[15]%3 != 0 {
			continue
		}
		if _, dup := boot[ev.UUID]; !dup {
			boot[ev.UUID] = ev.EventTime - 30*24*3600*1000
			fmt.Fprintf(&csv, "%s,%s\n", strings.ToUpper(ev.UUID.String()), time.UnixMilli(boot[ev.UUID]).UTC().Format(time.RFC3339Nano))
		}
	}
	dir := t.TempDir()
	users := filepath.Join(dir, "users.csv")
	if err := os.WriteFile(users, csv.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	st := filepath.Join(dir, "state")
	if out, err := execute(t, "bootstrap", "--brokers", broker.ListenAddrs()[0], "--topic", "logs", "--log-level", "error", users); err != nil {
		t.Fatalf("bootstrap: %v\n%s", err, out)
	}
	enginetest.Produce(t, broker.ListenAddrs(), "logs", recs)
	rows := filepath.Join(dir, "rows")
	if out, err := execute(t, "run", "--brokers", broker.ListenAddrs()[0], "--topic", "logs", "--state-dir", st,
		"--sink", "file", "--sink-path", rows, "--until-caught-up", "--checkpoint-interval", "200ms", "--log-level", "error"); err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
	lines, err := filesink.ReadDir(rows)
	if err != nil {
		t.Fatal(err)
	}
	got := map[[2]int64]filesink.Line{}
	returning := 0
	for _, l := range lines {
		got[[2]int64{int64(l.Partition), l.Offset}] = l
		u, _ := operators.ParseUUID([]byte(l.UUID))
		if _, ok := boot[u]; ok {
			returning++
			if l.IsNew {
				t.Errorf("bootstrapped user %s is new at %s", l.UUID, l.EventTime)
			}
		}
	}
	if returning == 0 {
		t.Fatal("no rows of bootstrapped users: the test proves nothing")
	}
	want := workload.Oracle(recs, operators.Config{}, boot)
	if n := enginetest.ValidCount(want); n != len(lines) {
		t.Fatalf("%d rows, want %d", len(lines), n)
	}
	for _, e := range want {
		if e.Reason != operators.OK {
			continue
		}
		l := got[[2]int64{int64(e.Partition), e.Offset}]
		if l.UUID != e.UUID.String() || l.IsNew != e.IsNew || l.Late != e.Late {
			t.Fatalf("partition %d offset %d: got %+v, want %+v", e.Partition, e.Offset, l, e)
		}
	}

	// Round trip: export, bootstrap the export into a new state, export again.
	a, b := filepath.Join(dir, "a.csv"), filepath.Join(dir, "b.csv")
	if out, err := execute(t, "state", "export", "--state-dir", st, "--output", a); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	st2 := filepath.Join(dir, "state2")
	// Into another group's changelog; a run of that group restores it.
	if out, err := execute(t, "bootstrap", "--brokers", broker.ListenAddrs()[0], "--topic", "logs", "--group", "copy",
		"--log-level", "error", a); err != nil {
		t.Fatalf("bootstrap of the export: %v\n%s", err, out)
	}
	if out, err := execute(t, "run", "--brokers", broker.ListenAddrs()[0], "--topic", "logs", "--group", "copy", "--state-dir", st2,
		"--sink", "file", "--sink-path", filepath.Join(dir, "rows2"), "--until-caught-up", "--checkpoint-interval", "200ms",
		"--log-level", "error"); err != nil {
		t.Fatalf("run of the copy: %v\n%s", err, out)
	}
	if out, err := execute(t, "state", "export", "--state-dir", st2, "--output", b); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	ea, _ := os.ReadFile(a)
	eb, _ := os.ReadFile(b)
	if len(ea) < 1000 || !bytes.Equal(ea, eb) {
		t.Fatalf("export -> bootstrap -> export differs (%d and %d bytes)", len(ea), len(eb))
	}
	if n := bytes.Count(ea, []byte("\n")) - 1; n < 2000 {
		t.Fatalf("export has %d users, want all 2000", n)
	}
}

// TestStateCommandsWhileRunning: state get and stats work while a processor
// holds the state, from its snapshot.
func TestStateCommandsWhileRunning(t *testing.T) {
	broker := enginetest.StartBroker(t, "logs", 2)
	recs, err := workload.Generate(workload.Config{Users: 300, Days: 2, Partitions: 2, Seed: 3,
		Start: time.Date(2026, 8, 10, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	enginetest.Produce(t, broker.ListenAddrs(), "logs", recs)
	dir := t.TempDir()
	p := start(t, "run", nil, "run", "--brokers", broker.ListenAddrs()[0], "--topic", "logs", "--state-dir", dir,
		"--sink", "file", "--sink-path", filepath.Join(t.TempDir(), "rows"), "--checkpoint-interval", "200ms",
		"--snapshot-interval", "1s", "--log-format", "json")
	p.waitOutput(t, `"msg":"starting"`, 30*time.Second)
	var out string
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err = execute(t, "state", "stats", "--state-dir", dir)
		if err == nil && strings.Contains(out, "users            300") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("state stats while running: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(out, "newest snapshot") || !strings.Contains(out, "next offset") {
		t.Fatalf("stats output:\n%s", out)
	}
	key := string(recs[0].Key)
	out, err = execute(t, "state", "get", "--state-dir", dir, strings.ReplaceAll(strings.ToUpper(key), "-", ""))
	if err != nil || !strings.Contains(out, key) || strings.Contains(out, "unknown") {
		t.Fatalf("state get: %v\n%s", err, out)
	}
	stopGracefully(t, p, 30*time.Second)
}
