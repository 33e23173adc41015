package engine

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/state"
)

// control is a message from the coordinator to a task. Exactly one field is
// set. Control messages share one channel so that their order is kept.
type control struct {
	barrier   chan<- *snapshot // hand over the epoch's output
	committed *sinks.Batch     // the epoch committed; its row buffer comes back
	tick      int64            // ms: when the log end the task has caught up with was seen
	release   bool             // recovery is done: process past the limit
	stop      bool
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
}

// taskStore is a task's view of first-seen state: updates of the current
// epoch, then those of the epoch being committed, then the database.
type taskStore struct {
	cur, prev map[operators.UUID]int64
	db        *state.Reader
}

func (s *taskStore) Get(u *operators.UUID) (int64, bool) {
	if v, ok := s.cur[*u]; ok {
		return v, true
	}
	if v, ok := s.prev[*u]; ok {
		return v, true
	}
	return s.db.Get(u)
}

func (s *taskStore) Set(u *operators.UUID, firstSeen int64) { s.cur[*u] = firstSeen }

// counters are a task's running totals, read by the coordinator.
type counters struct {
	records, rows, late, isNew, dead atomic.Int64
}

// task runs one partition.
type task struct {
	partition int32
	topic     string
	dlqTopic  string
	maxRows   int
	maxBytes  int
	db        *state.DB

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

	in    chan []*kgo.Record
	ctl   chan control
	full  chan<- struct{}
	fatal chan<- error

	target int64 // the log end at start: what --until-caught-up must reach

	pos   atomic.Int64 // published next offset
	end   atomic.Int64 // log end (last stable offset) as last seen
	endAt atomic.Int64 // when end was seen, unix ms
	counters
}

func (t *task) setEnd(end int64, at time.Time) {
	t.end.Store(end)
	t.endAt.Store(at.UnixMilli())
}

// caughtUpAt returns the time of the last log end the task has processed
// everything up to. That time, not the wall clock, is what the idle timeout
// runs on: while the broker cannot be reached the log end is not refreshed,
// so an outage never passes for an idle partition.
func (t *task) caughtUpAt() (int64, bool) {
	at := t.endAt.Load()
	return at, t.pos.Load() >= t.end.Load()
}

// bufferFull says whether the task must stop reading until the next
// checkpoint: the rows or bytes it holds for the sink reached their bound.
func (t *task) bufferFull() bool {
	return t.rows.Len() >= t.maxRows || t.rows.Bytes()+t.deadBytes >= t.maxBytes
}

// Emit implements operators.Emitter.
func (t *task) Emit(r *operators.Row) {
	t.rows.Append(r)
	t.counters.rows.Add(1)
	if r.Late {
		t.counters.late.Add(1)
	}
	if r.IsNew {
		t.counters.isNew.Add(1)
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
				m.committed.Reset()
				t.spare = m.committed
				clear(t.store.prev)
				if err := t.store.db.Refresh(); err != nil {
					panic(err) // the database is closed only after every task stopped
				}
			case m.release:
				recs := t.pending
				t.limit, t.pending = -1, nil
				t.process(recs)
			case m.stop:
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
		t.counters.records.Add(1)
		t.rec = operators.Record{Value: r.Value, Offset: r.Offset, Timestamp: r.Timestamp.UnixMilli()}
		if reason := t.op.Process(&t.rec); reason != operators.OK {
			dl := deadLetter(t.dlqTopic, t.topic, r, reason)
			t.dead = append(t.dead, dl)
			t.deadBytes += len(dl.Key) + len(dl.Value)
			t.counters.dead.Add(1)
		}
	}
	t.pos.Store(t.next)
}

func (t *task) snapshot() *snapshot {
	if t.limit >= 0 {
		t.replayAdvances(t.limit) // advances logged at the end of the epoch
	}
	s := &snapshot{task: t, partition: t.partition, rows: t.rows, dead: t.dead, batch: t.db.NewBatch(),
		next: t.next, progress: t.op.Progress(), held: t.op.HeldCount(), advances: t.advances}
	t.advances = nil
	for u, fs := range t.store.cur {
		s.batch.SetUser(&u, fs)
	}
	t.op.CheckpointHeld(heldWriter{s.batch, t.partition})
	s.batch.PutPartition(t.partition, state.PartitionCheckpoint{NextOffset: t.next, Progress: s.progress})
	t.store.prev, t.store.cur = t.store.cur, t.store.prev
	t.rows, t.spare = t.spare, nil
	t.dead, t.deadBytes = nil, 0
	return s
}
