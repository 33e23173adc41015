package engine_test

import (
	"context"
	"errors"
	"sort"
	"testing"
	"time"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/engine/enginetest"
	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/sinks/clickhouse"
)

var errCrash = errors.New("simulated crash")

// crashingSink passes writes through until the one that would complete
// total rows: of that one it stores the first keep rows and then fails for
// good, as a process killed in the middle of an insert (keep < len) or
// between the insert and the checkpoint commit (keep = len).
type crashingSink struct {
	*clickhouse.Sink
	total, written int
	keep           func(n int) int
}

func (s *crashingSink) Write(ctx context.Context, b *sinks.Batch) error {
	if s.written+b.Len() < s.total {
		if err := s.Sink.Write(ctx, b); err != nil {
			return err
		}
		s.written += b.Len()
		return nil
	}
	var part sinks.Batch
	var r operators.Row
	part.Epoch = b.Epoch
	for i := range s.keep(b.Len()) {
		b.Row(i, &r)
		part.Append(&r)
	}
	if err := s.Sink.Write(ctx, &part); err != nil {
		return err
	}
	return errCrash
}

// TestRecoveryAfterCrashDuringWrite kills the run at a checkpoint, after part
// or all of its rows reached ClickHouse, then restarts on the same state.
// The table must equal the oracle: nothing lost, nothing twice. The crashed
// epoch includes an idle partition's watermark advance, which the replay
// must repeat.
func TestRecoveryAfterCrashDuringWrite(t *testing.T) {
	for _, tc := range []struct {
		name string
		keep func(n int) int
	}{
		{"half landed", func(n int) int { return n / 2 }},
		{"all landed", func(n int) int { return n }},
		{"none landed", func(n int) int { return 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, 3, workload.Config{Users: 600, Days: 2, Seed: 11,
				Start: time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC), LateShare: 0.01, MalformedShare: 0.01})
			// End the stream just after midnight, so that the last records are
			// held until the idle partitions' watermarks follow the clock.
			cut := sort.Search(len(f.recs), func(i int) bool {
				return f.recs[i].Timestamp.After(time.Date(2026, 4, 2, 0, 4, 0, 0, time.UTC))
			})
			recs := f.recs[:cut]
			f.produce(t, recs)
			opCfg := operators.Config{Tolerance: 10 * time.Minute, IdleTimeout: 500 * time.Millisecond}
			want := workload.Oracle(recs, opCfg, nil)
			cfg := f.config(t, opCfg)
			cfg.CheckpointInterval, cfg.MaxEpochRows = 2*time.Second, 400
			cfg.IsRetryable = func(err error) bool { return !errors.Is(err, errCrash) }

			// First run: crashes at the last write, the one that holds the
			// records released when the partitions went idle.
			first := cfg
			first.Sink = &crashingSink{Sink: f.sink, total: enginetest.ValidCount(want), keep: tc.keep}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if _, err := engine.Run(ctx, first); !errors.Is(err, errCrash) {
				t.Fatalf("first run: %v, want the simulated crash", err)
			}

			// Second run, bounded: it must finish the crashed epoch from the
			// intent, replaying the idle advance, and then find nothing to do.
			second := cfg
			second.UntilCaughtUp = true
			st, err := engine.Run(ctx, second)
			if err != nil {
				t.Fatal(err)
			}
			if st.Held != 0 {
				t.Errorf("%d records still held: the replay did not repeat the idle advance", st.Held)
			}
			enginetest.CheckTable(t, f.sink.Conn(), f.sink.Table(), want)
		})
	}
}

// TestRecoveryAtEveryCrashPoint stops a checkpoint at each of its crash
// points, then restarts, on the same state directory (a restarted process)
// or on an empty one (another replica taking over, or a lost volume: all
// it knows comes from the changelog): the table and the dead-letter topic
// must hold every record exactly once.
func TestRecoveryAtEveryCrashPoint(t *testing.T) {
	for _, tc := range []struct{ point, dir string }{
		{"before sink write", "same"}, {"after sink write", "same"}, {"after dead letters", "same"}, {"after changelog", "same"},
		{"before sink write", "new"}, {"after sink write", "new"}, {"after dead letters", "new"}, {"after changelog", "new"},
	} {
		point := tc.point
		t.Run(point+", "+tc.dir+" state dir", func(t *testing.T) {
			f := newFixture(t, 2, workload.Config{Users: 1500, Days: 2, Seed: 21,
				Start: time.Date(2026, 7, 1, 0, 0, 0, 0, time.UTC), LateShare: 0.01, MalformedShare: 0.02})
			want := workload.Oracle(f.recs, operators.Config{}, nil)
			cfg := f.config(t, operators.Config{})
			cfg.CheckpointInterval, cfg.MaxEpochRows, cfg.UntilCaughtUp = 50*time.Millisecond, 500, true
			half := len(f.recs) / 2
			f.produce(t, f.recs[:half])

			// Crash at the first checkpoint that has something to write.
			crashed := 0
			first := cfg
			first.Testing = &engine.TestingKnobs{CrashAt: func(p string) error {
				if p == "before sink write" {
					crashed++
				}
				if p == point && crashed == 1 {
					return errCrash
				}
				return nil
			}}
			if _, err := engine.Run(context.Background(), first); !errors.Is(err, errCrash) {
				t.Fatalf("first run: %v, want the simulated crash (%d checkpoints with output)", err, crashed)
			}
			f.produce(t, f.recs[half:])
			if tc.dir == "new" {
				cfg.StateDir = t.TempDir()
			}
			if _, err := engine.Run(context.Background(), cfg); err != nil {
				t.Fatal(err)
			}
			f.check(t, want)
		})
	}
}
