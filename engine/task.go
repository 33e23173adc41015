package engine

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/state"
)

// control is a message from the coordinator to a task. Exactly one field is
// set. Control messages share one channel so that their order is kept.
type control struct {
	barrier   chan<- *snapshot // hand over the epoch's output (nil while replaying an unfinished epoch)
	committed *committed       // the epoch committed
	tick      int64            // ms: when the log end the task has caught up with was seen
	sizes     *sizes           // the task's share of the caches and buffers changed
	stop      bool
	stopped   chan struct{} // closed once the task has stopped (with stop)
}

// committed tells a task that its epoch is durable.
type committed struct {
	rows          *sinks.Batch // its row buffer comes back
	changelogNext int64        // where the partition's changelog now ends
}

// sizes is a task's share of the memory bounds, which change with the
// number of partitions the process owns.
type sizes struct {
	cache, buffer int
}

// snapshot is what a task hands over at a barrier.
type snapshot struct {
	task      *task
	partition int32
	rows      *sinks.Batch
	dead      []*kgo.Record
	batch     *state.Batch
	next      int64
	progress  operators.Progress
	advances  []state.WatermarkAdvance
	held      int
	// changed: the checkpoint changes the partition's state or position,
	// so the changelog gets its records and a new checkpoint record.
	changed bool
	// unsure is set when this epoch finishes one that an earlier writer
	// left unfinished: rows and dead letters of it may have landed, the
	// dead letters after deadLetterEnds.
	unsure         *sinks.Attempt
	deadLetterEnds map[int32]int64
	changelogNext  int64
}

// taskStore is a task's view of first-seen state: updates of the current
// epoch (cur), those of the epoch being committed (prev), a bounded cache of
// values the task has read or written, then the database.
//
// The cache is what keeps most lookups out of Pebble: a Pebble lookup of a
// known user costs 3-5 µs with every block cached, 13-15 µs in a 10M-user
// state whose blocks are not (state.BenchmarkReaderGetEpochs,
// BenchmarkReaderGetBulk), a probe of these tables tens of nanoseconds, and
// a user's records come back many times while it is active: a task whose
// users are cached spends 0.21 µs a record, decoding included, against
// 0.75 µs when they are not, half of them new (BenchmarkTaskProcess/warm
// and /cold; 1.55 µs with the Go maps and no cache before). It holds
// committed values read from Pebble and the task's own
// updates, which are never higher than the committed value: first_seen only
// moves earlier, and only this task writes its partition's users. A value in
// the cache is therefore the one a fresh Pebble view would give, as long as
// producers key records by uuid. A user whose records reach two
// partitions (mis-keyed producers, partitions added to the topic) may keep
// the value this task last saw until it leaves the cache, where a fresh
// view would see the other partition's earlier first_seen after its next
// checkpoint; its is_new may then be decided without the other partition's
// records, which the README already allows for such users. first_seen in
// the state is still the minimum of both.
//
// The cache is two generations of fixed capacity: entries go into young;
// when young is full it becomes old and the former old is dropped; a hit in
// old moves the entry back into young. Eviction is a clear, so the tables
// need no per-entry bookkeeping and no deletion. Uncommitted updates (cur,
// prev) are kept in the cache too (see remember), so a lookup searches two
// tables, then the state's user filter, then Pebble.
type taskStore struct {
	cur, prev  userTable // updates of this epoch / of the epoch being committed
	young, old userTable // the cache
	cacheSlots int       // the capacity of one cache generation, in slots
	// dirtyEvicted > 0: updates in cur or prev may be missing from the
	// cache, for that many more commits (see remember).
	dirtyEvicted int
	db           *state.Reader
}

// userCacheBytes bounds the memory of all tasks' caches together; each task
// gets an equal share (setCacheBytes). 64 MiB hold 2M users (24 bytes a
// slot, at most 3/4 of the slots filled, two generations): every user of
// the 1M-user benchmark stays cached, and with 10M users in the state the
// most active ones do, for a small part of the process's memory.
const userCacheBytes = 64 << 20

// newTaskStore returns a task's store over db. The first one starts the
// build of the state's user filter (state.DB.EnableUserFilter), which makes
// the lookup of a new user cheap.
func newTaskStore(db *state.DB) (taskStore, error) {
	db.EnableUserFilter()
	r, err := db.NewReader()
	s := taskStore{db: r}
	s.setCacheBytes(userCacheBytes)
	return s, err
}

// setCacheBytes sets the memory the cache may use (both generations).
func (s *taskStore) setCacheBytes(n int) {
	s.cacheSlots = max(n/2/int(unsafe.Sizeof(userSlot{})), 16)
}

func (s *taskStore) Get(u *operators.UUID) (int64, bool) {
	k0, k1 := binary.LittleEndian.Uint64(u[:8]), binary.LittleEndian.Uint64(u[8:])
	h := userHash(k0, k1)
	if s.dirtyEvicted > 0 {
		// Uncommitted updates that did not fit in the cache: they are
		// the newest values, so they come first.
		if v, ok := s.cur.get(h, k0, k1); ok {
			s.remember(h, k0, k1, v)
			return v, true
		}
		if v, ok := s.prev.get(h, k0, k1); ok {
			s.remember(h, k0, k1, v)
			return v, true
		}
	}
	if v, ok := s.young.get(h, k0, k1); ok {
		return v, true
	}
	if v, ok := s.old.get(h, k0, k1); ok {
		s.remember(h, k0, k1, v)
		return v, true
	}
	v, ok := s.db.Get(u)
	if ok {
		s.remember(h, k0, k1, v)
	}
	return v, ok
}

func (s *taskStore) Set(u *operators.UUID, firstSeen int64) {
	k0, k1 := binary.LittleEndian.Uint64(u[:8]), binary.LittleEndian.Uint64(u[8:])
	h := userHash(k0, k1)
	s.cur.put(h, k0, k1, firstSeen, 0)
	s.remember(h, k0, k1, firstSeen)
}

// remember puts a value into the cache's young generation, rotating the
// generations when young is full.
func (s *taskStore) remember(h, k0, k1 uint64, v int64) {
	if s.young.put(h, k0, k1, v, s.cacheSlots) {
		return
	}
	s.young, s.old = s.old, s.young
	s.young.clear()
	// Uncommitted updates stay in the cache, so that a lookup need not
	// search cur and prev: rotation drops only the generation before old,
	// and they are now in young. Only if they do not fit (an epoch larger
	// than the cache) must lookups search cur and prev until those epochs
	// are committed.
	fits := true
	for _, t := range [2]*userTable{&s.prev, &s.cur} { // cur last: its values are newer
		t.eachSlot(func(k0, k1 uint64, v int64) {
			fits = fits && s.young.put(userHash(k0, k1), k0, k1, v, s.cacheSlots)
		})
	}
	if !fits || !s.young.put(h, k0, k1, v, s.cacheSlots) {
		// The two epochs do not fit. young may now hold a value of prev
		// that cur supersedes, and old values that cur supersedes: drop
		// the whole cache rather than keep a stale first_seen, and search
		// cur and prev first until both epochs are committed. What the
		// cache holds from here on was read through cur and prev, or set.
		s.young.clear()
		s.old.clear()
		s.dirtyEvicted = 2
	}
}

// writeEpoch adds the current epoch's updates to b and makes them the epoch
// being committed. prev must be empty (cleared by committed).
func (s *taskStore) writeEpoch(b *state.Batch) {
	b.ReserveUsers(s.cur.len())
	s.cur.each(func(u *operators.UUID, v int64) { b.SetUser(u, v) })
	s.prev, s.cur = s.cur, s.prev
}

// committed: the epoch being committed is in the database now.
func (s *taskStore) committed() error {
	s.prev.clear()
	if s.dirtyEvicted > 0 {
		s.dirtyEvicted--
	}
	return s.db.Refresh()
}

// userHash mixes both halves of a uuid (time-ordered uuids have
// predictable leading bytes).
func userHash(k0, k1 uint64) uint64 {
	h := (k0 ^ 0x9e3779b97f4a7c15) * 0xff51afd7ed558ccd
	h ^= h >> 32
	h = (h ^ k1) * 0xc4ceb9fe1a85ec53
	return h ^ h>>29
}

// userTable is an open-addressing hash table from uuid to first_seen with
// linear probing, and no deletion (it is cleared as a whole). A slot is 24
// bytes without pointers, which the garbage collector does not scan; the
// Go maps this replaces cost 1.0-1.2 s of the end-to-end benchmark's 27.6 s
// (runtime.mapaccess2) for fewer lookups. The all-zero uuid, which
// marks an empty slot, is kept aside.
type userTable struct {
	slots []userSlot
	n     int
	zero  bool // the all-zero uuid is present, with value zeroV
	zeroV int64
}

type userSlot struct {
	k0, k1 uint64
	v      int64
}

// userTableMinSlots is a new table's size.
const userTableMinSlots = 1024

func (t *userTable) len() int {
	if t.zero {
		return t.n + 1
	}
	return t.n
}

// index maps a hash to a slot; any table size works.
func (t *userTable) index(h uint64) int {
	hi, _ := bits.Mul64(h, uint64(len(t.slots)))
	return int(hi)
}

func (t *userTable) get(h, k0, k1 uint64) (int64, bool) {
	if k0|k1 == 0 {
		return t.zeroV, t.zero
	}
	if t.n == 0 {
		return 0, false
	}
	for i := t.index(h); ; {
		s := &t.slots[i]
		if s.k0 == k0 && s.k1 == k1 {
			return s.v, true
		}
		if s.k0|s.k1 == 0 {
			return 0, false
		}
		if i++; i == len(t.slots) {
			i = 0
		}
	}
}

// put sets the value of a key. A table grows to hold 3/4 of its slots
// filled; limit > 0 caps its slots, and put reports false, changing
// nothing, when a new key does not fit.
func (t *userTable) put(h, k0, k1 uint64, v int64, limit int) bool {
	if k0|k1 == 0 {
		t.zero, t.zeroV = true, v
		return true
	}
	if 4*(t.n+1) > 3*len(t.slots) {
		if limit > 0 && len(t.slots) >= limit {
			if _, ok := t.get(h, k0, k1); !ok {
				return false
			}
		} else {
			t.grow(limit)
		}
	}
	for i := t.index(h); ; {
		s := &t.slots[i]
		if s.k0 == k0 && s.k1 == k1 {
			s.v = v
			return true
		}
		if s.k0|s.k1 == 0 {
			*s = userSlot{k0, k1, v}
			t.n++
			return true
		}
		if i++; i == len(t.slots) {
			i = 0
		}
	}
}

func (t *userTable) grow(limit int) {
	n := max(2*len(t.slots), userTableMinSlots)
	if limit > 0 {
		n = min(n, limit)
	}
	old := t.slots
	t.slots, t.n = make([]userSlot, n), 0
	for i := range old {
		if s := &old[i]; s.k0|s.k1 != 0 {
			t.put(userHash(s.k0, s.k1), s.k0, s.k1, s.v, 0)
		}
	}
}

// clear empties the table, keeping its memory.
func (t *userTable) clear() {
	if t.n > 0 {
		clear(t.slots)
	}
	t.n, t.zero = 0, false
}

// each calls fn for every entry.
func (t *userTable) each(fn func(u *operators.UUID, v int64)) {
	var u operators.UUID
	t.eachSlot(func(k0, k1 uint64, v int64) {
		binary.LittleEndian.PutUint64(u[:8], k0)
		binary.LittleEndian.PutUint64(u[8:], k1)
		fn(&u, v)
	})
}

// eachSlot calls fn for every entry, with the uuid's halves.
func (t *userTable) eachSlot(fn func(k0, k1 uint64, v int64)) {
	if t.zero {
		fn(0, 0, t.zeroV)
	}
	if t.n == 0 {
		return
	}
	for i := range t.slots {
		if s := &t.slots[i]; s.k0|s.k1 != 0 {
			fn(s.k0, s.k1, s.v)
		}
	}
}

// task runs one partition.
type task struct {
	partition int32
	topic     string
	dlqTopic  string
	maxRows   int
	maxBytes  int
	db        *state.DB // the partition's own database

	// changelogNext is where the partition's changelog ends after the last
	// checkpoint; checkpointed is that checkpoint's position.
	changelogNext int64
	checkpointed  state.PartitionCheckpoint
	epochSeen     uint64       // the highest epoch in the partition's checkpoint or intent
	misplaced     atomic.Int64 // op.Misplaced, published
	replaying     atomic.Bool  // limit >= 0, published

	op        *operators.FirstSeen
	store     taskStore
	rows      *sinks.Batch
	spare     *sinks.Batch
	dead      []*kgo.Record
	deadBytes int
	next      int64 // first offset not processed
	rec       operators.Record

	// advances logs this epoch's wall-clock watermark moves for the intent.
	advances []state.WatermarkAdvance
	// While recovering an unfinished epoch, the task stops at limit
	// (otherwise -1), re-applies the epoch's logged advances at the same
	// offsets instead of reacting to ticks, and keeps what it fetched past
	// the limit in pending.
	limit   int64
	replay  []state.WatermarkAdvance
	pending []*kgo.Record
	// unsure and deadLetterEnds describe the unfinished epoch being
	// replayed (see snapshot.unsure).
	unsure         *sinks.Attempt
	deadLetterEnds map[int32]int64

	in    chan []*kgo.Record
	ctl   chan control
	full  chan<- struct{}
	fatal chan<- error

	target int64 // the log end at start: what --until-caught-up must reach

	// pub is what the task publishes for the coordinator, metrics and
	// logs: its counters, position (NextOffset), log end (LogEnd, seen at
	// endAt, unix ms) and watermark.
	pub   PartitionStatus
	endAt atomic.Int64
}

func (t *task) setEnd(end int64, at time.Time) {
	t.pub.LogEnd.Store(end)
	t.endAt.Store(at.UnixMilli())
}

// caughtUpAt returns the time of the last log end the task has processed
// everything up to. That time, not the wall clock, is what the idle timeout
// runs on: while the broker cannot be reached the log end is not refreshed,
// so an outage never passes for an idle partition.
func (t *task) caughtUpAt() (int64, bool) {
	at := t.endAt.Load()
	return at, t.pub.NextOffset.Load() >= t.pub.LogEnd.Load()
}

// bufferFull says whether the task must stop reading until the next
// checkpoint: the rows or bytes it holds for the sink reached their bound.
func (t *task) bufferFull() bool {
	return t.rows.Len() >= t.maxRows || t.rows.Bytes()+t.deadBytes >= t.maxBytes
}

// Emit implements operators.Emitter.
func (t *task) Emit(r *operators.Row) {
	t.rows.Append(r)
	t.pub.Rows.Add(1)
	if r.Late {
		t.pub.Late.Add(1)
	}
	if r.IsNew {
		t.pub.New.Add(1)
	}
}

type heldWriter struct {
	b *state.Batch
	p int32
}

func (w heldWriter) PutHeld(h *operators.Held) { w.b.PutHeld(w.p, h) }
func (w heldWriter) DeleteHeld(offset int64)   { w.b.DeleteHeld(w.p, offset) }

// run is the task's goroutine. It returns when told to stop.
func (t *task) run() {
	defer t.store.db.Close()
	for {
		if t.limit < 0 && t.pending != nil {
			recs := t.pending // the unfinished epoch is checkpointed: go on
			t.pending = nil
			t.process(recs)
			continue
		}
		in := t.in
		if t.pending != nil {
			in = nil // recovering: wait for the unfinished epoch to be rewritten
		} else if t.bufferFull() {
			in = nil // back-pressure: wait for the next checkpoint
			select {
			case t.full <- struct{}{}:
			default:
			}
		}
		select {
		case recs := <-in:
			t.process(recs)
		case m := <-t.ctl:
			switch {
			case m.barrier != nil:
				m.barrier <- t.snapshot()
			case m.committed != nil:
				m.committed.rows.Reset()
				t.spare = m.committed.rows
				t.changelogNext = m.committed.changelogNext
				if err := t.store.committed(); err != nil {
					panic(err) // the database is closed only after the task stopped
				}
			case m.sizes != nil:
				t.store.setCacheBytes(m.sizes.cache)
				t.maxBytes = m.sizes.buffer
			case m.stop:
				if m.stopped != nil {
					defer close(m.stopped)
				}
				return
			default:
				t.tick(m.tick)
			}
		}
	}
}

// tick passes the wall clock to the operator and logs a watermark move it
// causes, so that a replay of this epoch can repeat it.
func (t *task) tick(now int64) {
	if t.limit >= 0 {
		return // recovering: the logged advances stand in for the clock
	}
	before := t.op.Progress().Watermark
	t.op.Tick(now)
	if w := t.op.Progress().Watermark; w != before {
		t.advances = append(t.advances, state.WatermarkAdvance{At: t.next, Watermark: w})
		t.publish() // the watermark moved, and may have released held records
	}
}

// replayAdvances re-applies the logged advances made before offset upTo.
func (t *task) replayAdvances(upTo int64) {
	for len(t.replay) > 0 && t.replay[0].At <= upTo {
		a := t.replay[0]
		t.replay = t.replay[1:]
		t.op.AdvanceWatermark(a.Watermark)
		t.advances = append(t.advances, a)
	}
}

func (t *task) process(recs []*kgo.Record) {
	for i, r := range recs {
		if r.Offset < t.next {
			// The log restarted below what was already processed: the topic
			// was recreated, or an unclean leader election lost records.
			// Going on would silently skip or mix records.
			select {
			case t.fatal <- fmt.Errorf("partition %d: the log went back from offset %d to %d: was the topic recreated or truncated? "+
				"The state no longer matches it; start with a new --state-dir", t.partition, t.next, r.Offset):
			default:
			}
			t.pending = recs[i:] // stop reading; the run is ending
			return
		}
		if t.limit >= 0 {
			if r.Offset >= t.limit {
				t.pending = recs[i:]
				t.next = max(t.next, t.limit) // offsets missing below the limit cannot be replayed
				break
			}
			t.replayAdvances(r.Offset)
		}
		t.next = r.Offset + 1
		if r.Attrs.IsControl() {
			continue
		}
		t.pub.Records.Add(1)
		t.rec = operators.Record{Value: r.Value, Offset: r.Offset, Timestamp: r.Timestamp.UnixMilli()}
		if reason := t.op.Process(&t.rec); reason != operators.OK {
			dl := deadLetter(t.dlqTopic, t.topic, r, reason)
			t.dead = append(t.dead, dl)
			t.deadBytes += len(dl.Key) + len(dl.Value)
			t.pub.DeadLettered.Add(1)
		}
	}
	t.publish()
}

// publish makes the task's position, watermark, held count and misplaced
// count visible to other goroutines (once a fetch, not once a record).
func (t *task) publish() {
	t.pub.NextOffset.Store(t.next)
	t.pub.Held.Store(int64(t.op.HeldCount()))
	if w := t.op.Progress().Watermark; w != operators.NoWatermark {
		t.pub.Watermark.Store(w)
	}
	t.misplaced.Store(t.op.Misplaced())
}

// snapshot hands over the epoch's output and state changes. A task
// replaying an unfinished epoch hands over nothing until it has replayed
// all of it: that epoch is then checkpointed whole, as unsure.
func (t *task) snapshot() *snapshot {
	if t.limit >= 0 {
		if t.next < t.limit {
			return nil
		}
		t.replayAdvances(t.limit) // advances logged at the end of the epoch
	}
	s := &snapshot{task: t, partition: t.partition, rows: t.rows, dead: t.dead, batch: t.db.NewBatch(),
		next: t.next, progress: t.op.Progress(), held: t.op.HeldCount(), advances: t.advances,
		unsure: t.unsure, deadLetterEnds: t.deadLetterEnds, changelogNext: t.changelogNext}
	t.advances = nil
	t.store.writeEpoch(s.batch)
	t.op.CheckpointHeld(heldWriter{s.batch, t.partition})
	pc := state.PartitionCheckpoint{NextOffset: t.next, Progress: s.progress, ChangelogNext: t.changelogNext}
	s.batch.PutPartition(t.partition, pc)
	moved := pc.NextOffset != t.checkpointed.NextOffset || pc.Progress != t.checkpointed.Progress
	s.changed = s.batch.Changed() || moved || s.rows.Len() > 0 || len(s.dead) > 0 || s.unsure != nil
	t.checkpointed = pc
	t.rows, t.spare = t.spare, nil
	t.dead, t.deadBytes = nil, 0
	t.limit, t.unsure, t.deadLetterEnds = -1, nil, nil // the pending records go into the next epoch
	t.replaying.Store(false)
	return s
}
