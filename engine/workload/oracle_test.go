package workload

import (
	"math"
	"testing"
	"time"

	"github.com/firstseen/firstseen/operators"
)

type mapStore map[operators.UUID]int64

func (m mapStore) Get(u *operators.UUID) (int64, bool) { v, ok := m[*u]; return v, ok }
func (m mapStore) Set(u *operators.UUID, fs int64)     { m[*u] = fs }

type rowsByOffset map[[2]int64]operators.Row

func (r rowsByOffset) Emit(row *operators.Row) {
	r[[2]int64{int64(row.Partition), row.Offset}] = *row
}

// TestOperatorMatchesOracleOnGeneratedWorkloads drives the operator over
// generated workloads (midnight disorder, late and malformed records, several
// time zones and bootstrap state) and compares every row with the oracle.
func TestOperatorMatchesOracleOnGeneratedWorkloads(t *testing.T) {
	zones := []string{"UTC", "Asia/Shanghai", "America/New_York"}
	for seed := int64(1); seed <= 12; seed++ {
		loc, err := time.LoadLocation(zones[seed%3])
		if err != nil {
			t.Skip(err)
		}
		recs, err := Generate(Config{Users: 400, Days: 3, Partitions: 3, Seed: seed,
			Start: time.Date(2026, 3, 7, 0, 0, 0, 0, time.UTC), LateShare: 0.02, MalformedShare: 0.01})
		if err != nil {
			t.Fatal(err)
		}
		cfg := operators.Config{Tolerance: 10 * time.Minute, Calendar: operators.NewCalendar(loc)}
		boot := map[operators.UUID]int64{}
		store := mapStore{}
		for i := 0; i < len(recs); i += 97 { // some users known from a bootstrap
			var ev operators.Event
			if operators.NewDecoder("uuid", "event_time").Decode(recs[i].Value, &ev) == operators.OK {
				boot[ev.UUID] = ev.EventTime - int64(seed)*3_600_000
				store[ev.UUID] = boot[ev.UUID]
			}
		}
		want := Oracle(recs, cfg, boot)

		rows := rowsByOffset{}
		ops := map[int32]*operators.FirstSeen{}
		next := map[int32]int64{}
		for i := range recs {
			p := recs[i].Partition
			if ops[p] == nil {
				ops[p] = operators.New(cfg, p, store, rows)
			}
			reason := ops[p].Process(&operators.Record{Value: recs[i].Value, Offset: next[p], Timestamp: recs[i].Timestamp.UnixMilli()})
			if reason != want[i].Reason {
				t.Fatalf("seed %d record %d: reason %v, oracle %v", seed, i, reason, want[i].Reason)
			}
			next[p]++
		}
		for _, op := range ops {
			op.AdvanceWatermark(math.MaxInt64)
		}
		valid := 0
		for _, e := range want {
			if e.Reason != operators.OK {
				continue
			}
			valid++
			g, ok := rows[[2]int64{int64(e.Partition), e.Offset}]
			if !ok || g.UUID != e.UUID || g.IsNew != e.IsNew || g.Late != e.Late || g.FirstSeen != e.FirstSeen || g.EventTime != e.EventTime {
				t.Fatalf("seed %d partition %d offset %d: got %+v (present %v), oracle %+v", seed, e.Partition, e.Offset, g, ok, e)
			}
		}
		if len(rows) != valid {
			t.Fatalf("seed %d: %d rows, oracle %d", seed, len(rows), valid)
		}
	}
}
