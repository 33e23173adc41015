package engine

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/state"
)

// newTestTask returns a partition task over a real Pebble state that knows
// users 0..known-1.
func newTestTask(t testing.TB, known int) (*task, []*kgo.Record) {
	db, err := state.Open(t.TempDir(), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	base := time.Date(2026, 1, 5, 12, 0, 0, 0, time.UTC).UnixMilli()
	b := db.NewBatch()
	recs := make([]*kgo.Record, 0, 2*known)
	for i := 0; i < 2*known; i++ {
		var u operators.UUID
		u[0], u[1], u[2] = byte(i>>16), byte(i>>8), byte(i)
		if i < known {
			b.SetUser(&u, base-86_400_000)
		}
		v := fmt.Appendf(nil, `{"uuid":%q,"event_time":%d,"page":"/p/%d"}`, u.String(), base+int64(i), i)
		recs = append(recs, &kgo.Record{Value: v, Offset: int64(i), Timestamp: time.UnixMilli(base + int64(i))})
	}
	if err := db.Commit(state.Header{}, b); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Topic: "t", Operator: operators.Config{}}
	cfg.setDefaults()
	p := &pipeline{cfg: cfg, db: db, full: make(chan struct{}, 1)}
	tk, err := p.newTask(0, state.PartitionCheckpoint{}, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tk.store.db.Close() })
	return tk, recs
}

// TestPerRecordPathDoesNotAllocate covers what a record goes through in a
// task: decode, the state lookup (memory, then Pebble with bloom filters),
// the state update and the append to the sink's columnar buffer.
func TestPerRecordPathDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("Pebble's -race invariant checks allocate; make test runs this test without -race")
	}
	tk, recs := newTestTask(t, 500)
	run := func() {
		tk.next = 0
		tk.rows.Reset()
		tk.process(recs)
	}
	run() // warm: new users enter the epoch's map, buffers grow
	run()
	if allocs := testing.AllocsPerRun(50, run); allocs != 0 {
		t.Fatalf("%.2f allocations per %d records", allocs, len(recs))
	}
	if tk.rows.Len() != len(recs) {
		t.Fatalf("%d rows for %d records", tk.rows.Len(), len(recs))
	}
}

// BenchmarkTaskProcess measures the per-record cost in a task: half the
// users are known in Pebble, half are new.
func BenchmarkTaskProcess(b *testing.B) {
	tk, recs := newTestTask(b, 5000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += len(recs) {
		tk.next = 0
		tk.rows.Reset()
		clear(tk.store.cur)
		tk.process(recs)
	}
}

// TestLogGoingBackIsFatal: a record below the next offset means the log was
// truncated under the checkpoint; the task reports it and stops reading.
func TestLogGoingBackIsFatal(t *testing.T) {
	tk, recs := newTestTask(t, 1)
	fatal := make(chan error, 1)
	tk.fatal = fatal
	tk.process(recs[1:])
	tk.process(recs[:1])
	select {
	case err := <-fatal:
		if want := "the log went back from offset 2 to 0"; !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not say %q", err, want)
		}
	default:
		t.Fatal("no fatal error")
	}
	if tk.pending == nil {
		t.Fatal("the task goes on reading after the log went back")
	}
}
