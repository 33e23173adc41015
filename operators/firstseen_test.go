package operators

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"testing"
	"time"
)

// memStore is a map-backed Store for unit tests.
type memStore map[UUID]int64

func (m memStore) Get(u *UUID) (int64, bool) { v, ok := m[*u]; return v, ok }
func (m memStore) Set(u *UUID, fs int64)     { m[*u] = fs }

// collector records emitted rows by offset and fails on a duplicate.
type collector struct {
	t    testing.TB
	rows map[int64]Row
	seq  []int64
}

func (c *collector) Emit(r *Row) {
	if _, dup := c.rows[r.Offset]; dup {
		c.t.Fatalf("offset %d emitted twice", r.Offset)
	}
	cp := *r
	cp.Payload = append([]byte(nil), r.Payload...)
	c.rows[r.Offset] = cp
	c.seq = append(c.seq, r.Offset)
}

type ev struct {
	user int
	t    int64
}

const (
	day    = int64(msPerDay)
	minute = int64(60_000)
)

var base = time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC).UnixMilli()

func uuidOf(user int) UUID {
	var u UUID
	u[0], u[1], u[15] = byte(user>>8), byte(user), 0x42
	return u
}

func value(e ev) []byte {
	u := uuidOf(e.user)
	return fmt.Appendf(nil, `{"uuid":%q,"event_time":%d,"n":%d}`, u.String(), e.t, e.user)
}

// workload makes events of users around midnights, where is_new is hard.
func workload(r *rand.Rand, users, events int) []ev {
	out := make([]ev, events)
	for i := range out {
		d := int64(r.IntN(3))
		var off int64
		if r.IntN(2) == 0 { // within 30 minutes of a midnight
			off = day + int64(r.IntN(int(60*minute))) - 30*minute
		} else {
			off = int64(r.IntN(int(day)))
		}
		out[i] = ev{user: r.IntN(users), t: base + d*day + off}
	}
	return out
}

// run feeds arrivals (offset = index) and then flushes.
func run(t testing.TB, cfg Config, boot memStore, arrivals []ev) *collector {
	st := memStore{}
	for k, v := range boot {
		st[k] = v
	}
	c := &collector{t: t, rows: map[int64]Row{}}
	op := New(cfg, 0, st, c)
	for i, e := range arrivals {
		if r := op.Process(&Record{Value: value(e), Offset: int64(i), Timestamp: e.t}); r != OK {
			t.Fatalf("record %d refused: %v", i, r)
		}
	}
	op.AdvanceWatermark(math.MaxInt64)
	if op.HeldCount() != 0 {
		t.Fatalf("%d records still held after the final watermark", op.HeldCount())
	}
	return c
}

// inOrderIsNew is the answer when every record arrives in event-time order.
func inOrderIsNew(evs []ev, idx []int) map[int]bool {
	order := append([]int(nil), idx...)
	sort.SliceStable(order, func(a, b int) bool { return evs[order[a]].t < evs[order[b]].t })
	fs := map[int]int64{}
	out := map[int]bool{}
	for _, i := range order {
		e := evs[i]
		f, ok := fs[e.user]
		if !ok || e.t < f {
			f = e.t
			fs[e.user] = f
		}
		out[i] = floorDiv(f, day) == floorDiv(e.t, day)
	}
	return out
}

// TestShuffledWithinToleranceEqualsInOrder is the core guarantee: however
// on-time records are reordered within the tolerance, every is_new equals
// the event-time-ordered answer.
func TestShuffledWithinToleranceEqualsInOrder(t *testing.T) {
	tol := 10 * time.Minute
	for seed := uint64(1); seed <= 40; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		evs := workload(r, 30, 400)
		idx := make([]int, len(evs))
		for i := range idx {
			idx[i] = i
		}
		want := inOrderIsNew(evs, idx)
		for shuffle := 0; shuffle < 25; shuffle++ {
			// Arrival = event time + a delay in [0, tolerance): never late.
			delay := make([]int64, len(evs))
			for i := range delay {
				delay[i] = r.Int64N(tol.Milliseconds())
			}
			order := append([]int(nil), idx...)
			sort.SliceStable(order, func(a, b int) bool {
				return evs[order[a]].t+delay[order[a]] < evs[order[b]].t+delay[order[b]]
			})
			arrivals := make([]ev, len(order))
			for i, j := range order {
				arrivals[i] = evs[j]
			}
			c := run(t, Config{Tolerance: tol}, nil, arrivals)
			if len(c.rows) != len(evs) {
				t.Fatalf("seed %d: %d rows for %d records", seed, len(c.rows), len(evs))
			}
			for i, j := range order {
				row := c.rows[int64(i)]
				if row.Late {
					t.Fatalf("seed %d shuffle %d: record %d is late but arrived within the tolerance", seed, shuffle, j)
				}
				if row.IsNew != want[j] {
					t.Fatalf("seed %d shuffle %d: record %d (user %d, %s) is_new=%v, in order %v",
						seed, shuffle, j, evs[j].user, time.UnixMilli(evs[j].t).UTC(), row.IsNew, want[j])
				}
			}
		}
	}
}

// oracle is a brute-force model of the documented semantics for any arrival
// order, late records included. It shares no code with the operator.
type oracleRow struct {
	late, isNew bool
	firstSeen   int64
}

func oracle(arrivals []ev, boot map[int]int64, tol int64) []oracleRow {
	n := len(arrivals)
	late := make([]bool, n)
	wAfter := make([]int64, n)
	w, maxT := int64(math.MinInt64), int64(math.MinInt64)
	for i, e := range arrivals {
		late[i] = e.t < w
		if !late[i] {
			maxT = max(maxT, e.t)
			w = max(w, maxT-tol)
		}
		wAfter[i] = w
	}
	// knownMin(u, j): earliest time of u among bootstrap and arrivals[0..j].
	knownMin := func(u, j int) int64 {
		m := int64(math.MaxInt64)
		if b, ok := boot[u]; ok {
			m = b
		}
		for k := 0; k <= j && k < n; k++ {
			if arrivals[k].user == u {
				m = min(m, arrivals[k].t)
			}
		}
		return m
	}
	out := make([]oracleRow, n)
	for i, e := range arrivals {
		start := floorDiv(e.t, day) * day
		if late[i] {
			f := knownMin(e.user, i)
			out[i] = oracleRow{late: true, isNew: f >= start, firstSeen: f}
			continue
		}
		if f := knownMin(e.user, i); f < start {
			out[i] = oracleRow{isNew: false, firstSeen: f}
			continue
		}
		j := i
		for j < n && wAfter[j] < start {
			j++
		}
		f := knownMin(e.user, j) // j == n: decided by the final flush
		out[i] = oracleRow{isNew: f >= start, firstSeen: f}
	}
	return out
}

// TestAnyArrivalOrderMatchesOracle feeds arbitrary disorder, including
// records far beyond the tolerance, with bootstrap state, and compares every
// row with the brute-force oracle.
func TestAnyArrivalOrderMatchesOracle(t *testing.T) {
	tol := int64(10 * minute)
	for seed := uint64(1); seed <= 300; seed++ {
		r := rand.New(rand.NewPCG(seed, 99))
		evs := workload(r, 20, 150)
		delay := make([]int64, len(evs))
		for i := range delay {
			switch r.IntN(10) {
			case 0:
				delay[i] = r.Int64N(6 * tol) // often late
			default:
				delay[i] = r.Int64N(tol)
			}
		}
		sort.SliceStable(evs, func(a, b int) bool { return evs[a].t+delay[a] < evs[b].t+delay[b] })
		boot := map[int]int64{}
		bootStore := memStore{}
		for u := 0; u < 20; u += 7 {
			boot[u] = base + int64(r.IntN(2))*day + r.Int64N(day)
			bootStore[uuidOf(u)] = boot[u]
		}
		want := oracle(evs, boot, tol)
		c := run(t, Config{Tolerance: time.Duration(tol) * time.Millisecond}, bootStore, evs)
		for i := range evs {
			got := c.rows[int64(i)]
			if got.Late != want[i].late || got.IsNew != want[i].isNew || got.FirstSeen != want[i].firstSeen {
				t.Fatalf("seed %d record %d (user %d at %s): got late=%v is_new=%v first_seen=%d, oracle %+v",
					seed, i, evs[i].user, time.UnixMilli(evs[i].t).UTC(), got.Late, got.IsNew, got.FirstSeen, want[i])
			}
		}
	}
}

// heldMap is a HeldWriter that keeps the persisted held set.
type heldMap map[int64]Held

func (m heldMap) PutHeld(h *Held) {
	cp := *h
	cp.Payload = append([]byte(nil), h.Payload...)
	m[h.Offset] = cp
}
func (m heldMap) DeleteHeld(off int64) { delete(m, off) }

// TestRestoreReplaysExactly stops an operator at random points, restores a
// new one from the checkpointed progress and held set, and checks the output
// equals an uninterrupted run.
func TestRestoreReplaysExactly(t *testing.T) {
	tol := 10 * time.Minute
	for seed := uint64(1); seed <= 50; seed++ {
		r := rand.New(rand.NewPCG(seed, 3))
		evs := workload(r, 25, 300)
		sort.SliceStable(evs, func(a, b int) bool { return evs[a].t < evs[b].t })
		for i := range evs { // mild disorder
			if j := i + r.IntN(4); j < len(evs) && evs[j].t-evs[i].t < tol.Milliseconds() {
				evs[i], evs[j] = evs[j], evs[i]
			}
		}
		want := run(t, Config{Tolerance: tol}, nil, evs)

		st := memStore{}
		held := heldMap{}
		c := &collector{t: t, rows: map[int64]Row{}}
		op := New(Config{Tolerance: tol}, 0, st, c)
		cut := r.IntN(len(evs))
		for i := 0; i < cut; i++ {
			op.Process(&Record{Value: value(evs[i]), Offset: int64(i), Timestamp: evs[i].t})
			if r.IntN(20) == 0 {
				op.CheckpointHeld(held)
			}
		}
		op.CheckpointHeld(held)
		list := make([]Held, 0, len(held))
		for _, h := range held {
			list = append(list, h)
		}
		if len(list) != op.HeldCount() {
			t.Fatalf("seed %d: persisted %d held records, operator holds %d", seed, len(list), op.HeldCount())
		}
		op2 := New(Config{Tolerance: tol}, 0, st, c)
		op2.Restore(op.Progress(), list)
		for i := cut; i < len(evs); i++ {
			op2.Process(&Record{Value: value(evs[i]), Offset: int64(i), Timestamp: evs[i].t})
		}
		op2.AdvanceWatermark(math.MaxInt64)
		if len(c.rows) != len(want.rows) {
			t.Fatalf("seed %d: %d rows after restore, %d uninterrupted", seed, len(c.rows), len(want.rows))
		}
		for off, w := range want.rows {
			if g := c.rows[off]; g.IsNew != w.IsNew || g.Late != w.Late || g.FirstSeen != w.FirstSeen || string(g.Payload) != string(w.Payload) {
				t.Fatalf("seed %d offset %d: restored %+v, uninterrupted %+v", seed, off, g, w)
			}
		}
	}
}

func TestReleaseOrderIsMidnightThenOffset(t *testing.T) {
	c := &collector{t: t, rows: map[int64]Row{}}
	op := New(Config{Tolerance: 10 * time.Minute}, 0, memStore{}, c)
	mid := base + day
	// Advance the watermark to just before midnight, then two new users just after it.
	op.Process(&Record{Value: value(ev{1, mid - 11*minute}), Offset: 0})
	op.Process(&Record{Value: value(ev{2, mid + 2*minute}), Offset: 1})
	op.Process(&Record{Value: value(ev{3, mid + 1*minute}), Offset: 2})
	if op.HeldCount() != 2 {
		t.Fatalf("held %d, want 2", op.HeldCount())
	}
	// A record of user 2 from before midnight, still on time: user 2 is not new.
	op.Process(&Record{Value: value(ev{2, mid - 5*minute}), Offset: 3})
	op.Process(&Record{Value: value(ev{4, mid + 10*minute}), Offset: 4}) // W = midnight
	if op.HeldCount() != 0 {
		t.Fatalf("held %d after the watermark passed midnight", op.HeldCount())
	}
	wantSeq := []int64{0, 3, 4, 1, 2} // the arriving record first, then the releases it caused
	if fmt.Sprint(c.seq) != fmt.Sprint(wantSeq) {
		t.Fatalf("emit order %v, want %v", c.seq, wantSeq)
	}
	if c.rows[1].IsNew || !c.rows[2].IsNew || !c.rows[4].IsNew {
		t.Fatalf("is_new wrong: %+v", c.rows)
	}
}

func TestOnlyRecordsNearMidnightWait(t *testing.T) {
	c := &collector{t: t, rows: map[int64]Row{}}
	op := New(Config{Tolerance: 10 * time.Minute}, 0, memStore{}, c)
	op.Process(&Record{Value: value(ev{1, base + 12*60*minute}), Offset: 0}) // noon, new user
	op.Process(&Record{Value: value(ev{1, base + 13*60*minute}), Offset: 1}) // same day
	op.Process(&Record{Value: value(ev{2, base + day + 3*minute}), Offset: 2})
	// noon and 13:00 are emitted at once; the one after midnight waits.
	if len(c.rows) != 2 || op.HeldCount() != 1 {
		t.Fatalf("rows %d held %d, want 2 and 1", len(c.rows), op.HeldCount())
	}
	// A returning user just after midnight is decided at once: not new.
	op.Process(&Record{Value: value(ev{1, base + day + 4*minute}), Offset: 3})
	if _, ok := c.rows[3]; !ok || c.rows[3].IsNew {
		t.Fatalf("returning user after midnight should be emitted at once as not new: %+v", c.rows[3])
	}
}

func TestIdleTicksAdvanceWatermark(t *testing.T) {
	c := &collector{t: t, rows: map[int64]Row{}}
	op := New(Config{Tolerance: 10 * time.Minute, IdleTimeout: time.Minute}, 0, memStore{}, c)
	mid := base + day
	op.Process(&Record{Value: value(ev{1, mid + minute}), Offset: 0})
	if op.HeldCount() != 1 {
		t.Fatal("expected the record to be held")
	}
	now := mid + 2*minute
	op.Tick(now)        // activity since the last tick: not idle
	op.Tick(now + 30e3) // quiet for 30s
	if op.HeldCount() != 1 {
		t.Fatal("released before the idle timeout")
	}
	op.Tick(now + 60e3) // quiet for 1m: the watermark follows the clock, but now-10m is before midnight
	op.Tick(now + 9*minute)
	if op.HeldCount() != 0 || !c.rows[0].IsNew {
		t.Fatalf("idle partition did not release: held %d rows %+v", op.HeldCount(), c.rows)
	}
	if w := op.Progress().Watermark; w != now+9*minute-10*minute {
		t.Fatalf("watermark %d, want now-tolerance %d", w, now+9*minute-10*minute)
	}
	// Records after an idle advance below the new watermark are late.
	op.Process(&Record{Value: value(ev{5, mid - 30*minute}), Offset: 1})
	if !c.rows[1].Late {
		t.Fatal("record below the idle watermark should be late")
	}
}

func TestRefusedRecordsChangeNothing(t *testing.T) {
	st := memStore{}
	c := &collector{t: t, rows: map[int64]Row{}}
	op := New(Config{}, 0, st, c)
	now := base + day
	cases := []struct {
		v    string
		want Reason
	}{
		{`not json`, NotJSON},
		{`[1,2]`, NotObject},
		{`{"event_time":1}`, NoUUID},
		{`{"uuid":null,"event_time":1}`, NoUUID},
		{`{"uuid":"nope","event_time":1}`, BadUUID},
		{`{"uuid":12,"event_time":1}`, BadUUID},
		{`{"uuid":"3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21"}`, NoEventTime},
		{`{"uuid":"3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21","event_time":"yesterday"}`, BadEventTime},
		{`{"uuid":"3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21","event_time":true}`, BadEventTime},
		{`{"uuid":"3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21","event_time":` + strconv.FormatInt(now+61*minute, 10) + `}`, TooFarInFuture},
	}
	for _, tc := range cases {
		if got := op.Process(&Record{Value: []byte(tc.v), Offset: 1, Timestamp: now}); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.v, got, tc.want)
		}
	}
	if len(st) != 0 || len(c.rows) != 0 || op.Progress().Watermark != NoWatermark {
		t.Fatalf("refused records changed state: %v %v %v", st, c.rows, op.Progress())
	}
	// Exactly max-future ahead is accepted.
	ok := `{"uuid":"3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21","event_time":` + strconv.FormatInt(now+60*minute, 10) + `}`
	if got := op.Process(&Record{Value: []byte(ok), Offset: 2, Timestamp: now}); got != OK {
		t.Fatalf("record exactly max-future ahead refused: %v", got)
	}
}

func TestTimezoneDecidesDays(t *testing.T) {
	sh, err := time.LoadLocation("Asia/Shanghai")
	if err != nil {
		t.Skip("no tzdata:", err)
	}
	// 2026-01-05 23:30 UTC is 2026-01-06 07:30 in Shanghai: in UTC the two
	// records are on different days, in Shanghai on the same day.
	first := time.Date(2026, 1, 5, 23, 30, 0, 0, time.UTC).UnixMilli()
	second := time.Date(2026, 1, 6, 1, 0, 0, 0, time.UTC).UnixMilli()
	for _, tc := range []struct {
		loc  *time.Location
		want bool
	}{{time.UTC, false}, {sh, true}} {
		c := run(t, Config{Calendar: NewCalendar(tc.loc)}, nil, []ev{{1, first}, {1, second}})
		if c.rows[1].IsNew != tc.want {
			t.Errorf("%s: second record is_new=%v, want %v", tc.loc, c.rows[1].IsNew, tc.want)
		}
	}
}

type discard struct{ n int }

func (d *discard) Emit(r *Row) { d.n++ }

// TestProcessDoesNotAllocate proves the per-record path (decode, state
// lookup and update, emit) allocates nothing once warm.
func TestProcessDoesNotAllocate(t *testing.T) {
	st := memStore{}
	op := New(Config{}, 0, st, &discard{})
	vals := make([][]byte, 64)
	for i := range vals {
		vals[i] = value(ev{i, base + int64(i)*1000})
		op.Process(&Record{Value: vals[i], Offset: int64(i)})
	}
	rfc := []byte(`{"uuid":"3F1C2B9E-8A47-4C1E-9D2F-0B6A5E4C3D21","event_time":"2026-01-05T10:00:00.123+08:00","page":"/a"}`)
	op.Process(&Record{Value: rfc})
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		op.Process(&Record{Value: vals[i%64], Offset: int64(i)})
		op.Process(&Record{Value: rfc, Offset: int64(i)})
		i++
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per record", allocs)
	}
}

func BenchmarkProcess(b *testing.B) {
	st := memStore{}
	op := New(Config{}, 0, st, &discard{})
	vals := make([][]byte, 1024)
	for i := range vals {
		vals[i] = value(ev{i % 500, base + int64(i)*1000})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		op.Process(&Record{Value: vals[i%1024], Offset: int64(i)})
	}
}

// BenchmarkHoldback measures records of new users just after midnight: each
// is held, then released when the watermark passes the midnight.
func BenchmarkHoldback(b *testing.B) {
	st := memStore{}
	op := New(Config{}, 0, st, &discard{})
	mid := base + day
	vals := make([][]byte, 4096)
	for i := range vals {
		vals[i] = value(ev{i, mid + int64(i)*100})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%len(vals) == 0 {
			clear(st)
			op.Restore(Progress{MaxEventTime: mid - minute, Watermark: mid - 11*minute}, nil)
		}
		op.Process(&Record{Value: vals[i%len(vals)], Offset: int64(i)})
		if i%len(vals) == len(vals)-1 {
			op.AdvanceWatermark(mid + day)
		}
	}
}
