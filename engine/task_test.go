package engine

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
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
	p := &pipeline{cfg: cfg, full: make(chan struct{}, 1), topic: topicInfo{partitions: []int32{0}}}
	tk, err := p.newTask(0, db)
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

// BenchmarkTaskProcess measures the per-record cost in a task over 5000
// records, half of them of users known in Pebble, half of new users.
// cold: none is in the task's memory (its tables are cleared before each
// pass). warm: the steady state of a task whose users are in its cache:
// the same records again and again, the epoch's updates dropped after each
// pass so that half the users are updated again.
func BenchmarkTaskProcess(b *testing.B) {
	for _, warm := range []bool{false, true} {
		name := map[bool]string{false: "cold", true: "warm"}[warm]
		b.Run(name, func(b *testing.B) {
			tk, recs := newTestTask(b, 5000)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += len(recs) {
				tk.next = 0
				tk.rows.Reset()
				tk.store.cur.clear()
				if !warm {
					tk.store.young.clear()
					tk.store.old.clear()
				}
				tk.process(recs)
			}
		})
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

// TestTaskStoreMatchesModel drives a task's store the way the operator
// does (a lookup, then an update when the user is new or earlier), with
// checkpoints in between, and a cache far smaller than the users so that
// generations rotate and uncommitted updates are evicted. Every lookup must
// give what the epoch's updates, then the one being committed, then the
// committed state say.
func TestTaskStoreMatchesModel(t *testing.T) {
	db, err := state.Open(t.TempDir(), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r := rand.New(rand.NewPCG(1, 2))
	users := make([]operators.UUID, 3000)
	for i := range users {
		if i > 0 { // users[0] is the all-zero uuid
			binary.LittleEndian.PutUint64(users[i][:8], r.Uint64())
			binary.LittleEndian.PutUint64(users[i][8:], r.Uint64())
		}
	}
	committed := map[operators.UUID]int64{} // what the reader's view has
	var cur, prev map[operators.UUID]int64
	cur = map[operators.UUID]int64{}
	var pending *state.Batch
	for round := 0; round < 6; round++ {
		// Round 0: a cache larger than all users. Then ever smaller ones,
		// down to a few dozen entries: epochs larger than the cache.
		s, err := newTaskStore(db)
		if err != nil {
			t.Fatal(err)
		}
		defer s.db.Close()
		s.setCacheBytes([]int{1 << 20, 64 << 10, 16 << 10, 4 << 10, 1 << 10, 256}[round] * 24)
		for op := 0; op < 40_000 || pending != nil || len(cur) > 0; op++ {
			switch x := r.IntN(1000); {
			case (x == 0 || op >= 40_000) && pending == nil: // barrier
				pending = db.NewBatch()
				s.writeEpoch(pending)
				prev, cur = cur, map[operators.UUID]int64{}
			case (x == 1 || op >= 40_000) && pending != nil: // commit
				if err := db.Commit(state.Header{}, pending); err != nil {
					t.Fatal(err)
				}
				pending.Close()
				pending = nil
				for u, v := range prev {
					if c, ok := committed[u]; !ok || v < c {
						committed[u] = v
					}
				}
				prev = nil
				if err := s.committed(); err != nil {
					t.Fatal(err)
				}
			default:
				u := &users[r.IntN(len(users))]
				want, wantOK := cur[*u]
				if !wantOK {
					want, wantOK = prev[*u]
				}
				if !wantOK {
					want, wantOK = committed[*u]
				}
				got, ok := s.Get(u)
				if ok != wantOK || got != want {
					t.Fatalf("round %d op %d: Get(%v) = %d %v, want %d %v", round, op, u, got, ok, want, wantOK)
				}
				// A new user, or an earlier time: half the time a random one,
				// half the time just below the known one, so that users are
				// updated again and again, in both epochs in flight.
				ts := r.Int64N(1e6)
				if ok && r.IntN(2) == 0 {
					ts = got - 1
				}
				if !ok || ts < got {
					s.Set(u, ts)
					cur[*u] = ts
				}
			}
		}
	}
}

// TestTaskStoreEpochsLargerThanCache: two epochs in flight that together
// exceed the cache, the second lowering every user's first_seen, must read
// and commit the second epoch's values (a cache rotation once kept the
// first epoch's value, which the operator then wrote back over the lower).
func TestTaskStoreEpochsLargerThanCache(t *testing.T) {
	db, err := state.Open(t.TempDir(), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := newTaskStore(db)
	if err != nil {
		t.Fatal(err)
	}
	defer s.db.Close()
	s.setCacheBytes(0) // the smallest cache: 16 slots a generation
	users := make([]operators.UUID, 20)
	for i := range users {
		users[i][0], users[i][15] = byte(i+1), 0xee
	}
	for i := range users {
		s.Set(&users[i], 1000)
	}
	first := db.NewBatch()
	defer first.Close()
	s.writeEpoch(first) // epoch e handed to the checkpoint, not committed yet
	for i := range users {
		s.Set(&users[i], 500)
	}
	check := func(when string) {
		t.Helper()
		for i := range users {
			if got, ok := s.Get(&users[i]); !ok || got != 500 {
				t.Fatalf("%s: Get(user %d) = %d %v, want 500", when, i, got, ok)
			}
		}
	}
	check("both epochs in flight")
	if err := db.Commit(state.Header{}, first); err != nil {
		t.Fatal(err)
	}
	if err := s.committed(); err != nil {
		t.Fatal(err)
	}
	check("first epoch committed")
	second := db.NewBatch()
	defer second.Close()
	s.writeEpoch(second)
	if err := db.Commit(state.Header{Epoch: 1}, second); err != nil {
		t.Fatal(err)
	}
	if err := s.committed(); err != nil {
		t.Fatal(err)
	}
	check("both committed")
	r, err := db.NewReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i := range users {
		if got, ok := r.Get(&users[i]); !ok || got != 500 {
			t.Fatalf("state holds %d %v for user %d, want 500", got, ok, i)
		}
	}
}

// TestUserTable checks the hash table against a map, through growth, a
// capped size and clears.
func TestUserTable(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var tb userTable
	m := map[[2]uint64]int64{}
	for round := 0; round < 3; round++ {
		for i := 0; i < 20_000; i++ {
			k := [2]uint64{r.Uint64N(30_000), r.Uint64N(2)} // includes the all-zero key
			v := r.Int64()
			h := userHash(k[0], k[1])
			if r.IntN(2) == 0 {
				if !tb.put(h, k[0], k[1], v, 0) {
					t.Fatal("an unlimited table refused a key")
				}
				m[k] = v
			}
			got, ok := tb.get(h, k[0], k[1])
			want, wantOK := m[k]
			if got != want || ok != wantOK {
				t.Fatalf("get %v = %d %v, want %d %v", k, got, ok, want, wantOK)
			}
		}
		if tb.len() != len(m) {
			t.Fatalf("len %d, want %d", tb.len(), len(m))
		}
		n := 0
		tb.eachSlot(func(k0, k1 uint64, v int64) {
			n++
			if m[[2]uint64{k0, k1}] != v {
				t.Fatalf("each: %d %d = %d", k0, k1, v)
			}
		})
		if n != len(m) {
			t.Fatalf("each saw %d of %d", n, len(m))
		}
		tb.clear()
		clear(m)
	}
	// A capped table refuses new keys once full, but updates old ones.
	var c userTable
	added := 0
	for i := uint64(1); ; i++ {
		if !c.put(userHash(i, 0), i, 0, 1, 2048) {
			break
		}
		added++
	}
	if len(c.slots) != 2048 || added != 3*2048/4 {
		t.Fatalf("capped table: %d slots, %d keys", len(c.slots), added)
	}
	if !c.put(userHash(1, 0), 1, 0, 5, 2048) {
		t.Fatal("a full table refused an update of a key it holds")
	}
	if v, _ := c.get(userHash(1, 0), 1, 0); v != 5 {
		t.Fatalf("updated value %d", v)
	}
}
