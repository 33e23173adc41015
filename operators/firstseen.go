package operators

import (
	"math"
	"sort"
	"time"
)

// NoWatermark is the watermark of a partition that has seen no record yet.
const NoWatermark int64 = math.MinInt64

// Row is one enriched output record.
type Row struct {
	UUID      UUID
	EventTime int64 // epoch ms
	EventDate int32 // days since 1970-01-01, in the calendar's zone
	FirstSeen int64 // epoch ms: first_seen(user) as known when the row was decided
	IsNew     bool
	Late      bool
	Partition int32
	Offset    int64
	Timestamp int64  // the Kafka record's timestamp, epoch ms
	Payload   []byte // valid only during Emit
}

// Emitter receives the operator's rows. The *Row and its Payload are only
// valid during the call.
type Emitter interface {
	Emit(r *Row)
}

// Store is the keyed first-seen state of the operator's users.
type Store interface {
	Get(u *UUID) (firstSeen int64, ok bool)
	Set(u *UUID, firstSeen int64)
}

// Record is one input record as the source delivers it.
type Record struct {
	Value     []byte
	Offset    int64
	Timestamp int64 // Kafka record timestamp, epoch ms; <= 0 when absent
}

// Config is the operator's configuration. Durations are whole milliseconds.
type Config struct {
	// Tolerance is how far out of order records may arrive and still be on
	// time (default 10m).
	Tolerance time.Duration
	// MaxFuture refuses records whose event time is further than this ahead
	// of their Kafka timestamp (default 1h). The Kafka timestamp, not the
	// process's clock, is the reference so that replay decides the same way.
	MaxFuture time.Duration
	// IdleTimeout is how long a caught-up partition may receive nothing
	// before its watermark follows the wall clock (default 1m).
	IdleTimeout time.Duration
	// Calendar defines days. Nil means UTC.
	Calendar *Calendar
	// UUIDField and TimeField name the input members (default "uuid" and
	// "event_time").
	UUIDField, TimeField string
	// Partitions is the source topic's partition count. When it is above
	// one, the operator counts the records that are not on their uuid's
	// partition (PartitionOf): their user's state is split (Misplaced).
	Partitions int
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Tolerance == 0 {
		c.Tolerance = 10 * time.Minute
	}
	if c.MaxFuture == 0 {
		c.MaxFuture = time.Hour
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = time.Minute
	}
	if c.Calendar == nil {
		c.Calendar = NewCalendar(time.UTC)
	}
	if c.UUIDField == "" {
		c.UUIDField = "uuid"
	}
	if c.TimeField == "" {
		c.TimeField = "event_time"
	}
	return c
}

// Held is a record waiting for the watermark to pass Release, the midnight
// that starts its day.
type Held struct {
	Offset    int64
	EventTime int64
	Timestamp int64
	Release   int64
	UUID      UUID
	Payload   []byte
}

// Progress is the part of a partition's position that a checkpoint stores
// besides the held records.
type Progress struct {
	MaxEventTime int64 // NoWatermark before the first record
	Watermark    int64 // NoWatermark before the first record
}

// HeldWriter receives the changes to the held set since the last call to
// [FirstSeen.CheckpointHeld].
type HeldWriter interface {
	PutHeld(h *Held)
	DeleteHeld(offset int64)
}

type heldEntry struct {
	offset, eventTime, timestamp, release int64
	uuid                                  UUID
	payloadAt, payloadLen                 int32
	persisted                             bool
}

// FirstSeen is the first-seen enrichment of one source partition. It is not
// safe for concurrent use: one goroutine owns it.
type FirstSeen struct {
	partition int32
	tol       int64
	maxFuture int64
	idle      int64
	cal       *Calendar
	dec       *Decoder
	store     Store
	out       Emitter
	parts     int   // Config.Partitions
	misplaced int64 // records not on their uuid's partition

	maxEvent  int64
	watermark int64

	held      []heldEntry // sorted by (release, offset)
	slab      []byte      // payloads of held records
	unpersist []int64     // offsets of persisted held records released since the last checkpoint

	active     bool  // a record arrived since the last tick
	quietSince int64 // wall time of the first tick with no record, or 0

	ev  Event
	row Row
}

// New returns the operator for one partition.
func New(cfg Config, partition int32, store Store, out Emitter) *FirstSeen {
	cfg = cfg.WithDefaults()
	return &FirstSeen{
		partition: partition,
		tol:       cfg.Tolerance.Milliseconds(),
		maxFuture: cfg.MaxFuture.Milliseconds(),
		idle:      cfg.IdleTimeout.Milliseconds(),
		cal:       cfg.Calendar.Clone(),
		dec:       NewDecoder(cfg.UUIDField, cfg.TimeField),
		store:     store,
		out:       out,
		parts:     cfg.Partitions,
		maxEvent:  NoWatermark,
		watermark: NoWatermark,
	}
}

// Process decodes and enriches one record. It returns OK, or the reason the
// record belongs in the dead-letter topic; a refused record changes nothing.
func (o *FirstSeen) Process(rec *Record) Reason {
	if r := o.dec.Decode(rec.Value, &o.ev); r != OK {
		return r
	}
	t := o.ev.EventTime
	if rec.Timestamp > 0 && t-rec.Timestamp > o.maxFuture {
		return TooFarInFuture
	}
	o.active = true
	u := &o.ev.UUID
	if o.parts > 1 && PartitionOf(u, o.parts) != o.partition {
		o.misplaced++
	}
	fs, known := o.store.Get(u)
	if !known || t < fs {
		fs = t
		o.store.Set(u, t)
	}
	dayStart, day := o.cal.Day(t)
	if t < o.watermark {
		o.emit(u, t, day, fs, fs >= dayStart, true, rec.Offset, rec.Timestamp, o.ev.Payload)
		return OK
	}
	if t > o.maxEvent {
		o.maxEvent = t
	}
	w := max(o.watermark, o.maxEvent-o.tol)
	switch {
	case fs < dayStart: // active on an earlier day: final
		o.emit(u, t, day, fs, false, false, rec.Offset, rec.Timestamp, o.ev.Payload)
	case w >= dayStart: // no on-time record can land before this day any more
		o.emit(u, t, day, fs, true, false, rec.Offset, rec.Timestamp, o.ev.Payload)
	default:
		o.hold(rec, dayStart)
	}
	o.AdvanceWatermark(w)
	return OK
}

// AdvanceWatermark raises the watermark to w (never lowers it) and releases
// the held records it decides.
func (o *FirstSeen) AdvanceWatermark(w int64) {
	if w <= o.watermark {
		return
	}
	o.watermark = w
	n := 0
	for n < len(o.held) && o.held[n].release <= w {
		h := &o.held[n]
		fs, _ := o.store.Get(&h.uuid)
		_, day := o.cal.Day(h.eventTime)
		o.emit(&h.uuid, h.eventTime, day, fs, fs >= h.release, false, h.offset, h.timestamp,
			o.slab[h.payloadAt:h.payloadAt+h.payloadLen])
		if h.persisted {
			o.unpersist = append(o.unpersist, h.offset)
		}
		n++
	}
	if n > 0 {
		o.held = append(o.held[:0], o.held[n:]...)
		if len(o.held) == 0 {
			o.slab = o.slab[:0]
		}
	}
}

// Tick tells the operator the wall-clock time while its partition is caught
// up with the log. The engine must not tick a partition that has unread
// records: back-pressure is not idleness. After IdleTimeout of ticks with no
// record, the watermark follows now minus the tolerance.
func (o *FirstSeen) Tick(now int64) {
	if o.active || o.quietSince == 0 {
		o.active = false
		o.quietSince = now
		return
	}
	if now-o.quietSince >= o.idle {
		o.AdvanceWatermark(now - o.tol)
	}
}

// Progress returns the partition's event-time position.
func (o *FirstSeen) Progress() Progress {
	return Progress{MaxEventTime: o.maxEvent, Watermark: o.watermark}
}

// Misplaced is the number of records processed that were not on their
// uuid's partition (see Config.Partitions).
func (o *FirstSeen) Misplaced() int64 { return o.misplaced }

// HeldCount is the number of records waiting for the watermark.
func (o *FirstSeen) HeldCount() int { return len(o.held) }

// CheckpointHeld writes the changes to the held set since the last call:
// records held since then, and persisted records released since then.
func (o *FirstSeen) CheckpointHeld(w HeldWriter) {
	for _, off := range o.unpersist {
		w.DeleteHeld(off)
	}
	o.unpersist = o.unpersist[:0]
	var h Held
	for i := range o.held {
		e := &o.held[i]
		if e.persisted {
			continue
		}
		o.toHeld(e, &h)
		w.PutHeld(&h)
		e.persisted = true
	}
}

// Restore sets the operator to a checkpointed position. held may be in any
// order; their payloads are copied.
func (o *FirstSeen) Restore(p Progress, held []Held) {
	o.maxEvent, o.watermark = p.MaxEventTime, p.Watermark
	o.held, o.slab, o.unpersist = o.held[:0], o.slab[:0], o.unpersist[:0]
	for i := range held {
		o.insertHeld(heldEntry{
			offset: held[i].Offset, eventTime: held[i].EventTime, timestamp: held[i].Timestamp,
			release: held[i].Release, uuid: held[i].UUID, persisted: true,
		}, held[i].Payload)
	}
}

// EachHeld calls fn for every held record in release order; h is only valid
// during the call.
func (o *FirstSeen) EachHeld(fn func(h *Held)) {
	var h Held
	for i := range o.held {
		o.toHeld(&o.held[i], &h)
		fn(&h)
	}
}

func (o *FirstSeen) toHeld(e *heldEntry, h *Held) {
	*h = Held{Offset: e.offset, EventTime: e.eventTime, Timestamp: e.timestamp, Release: e.release,
		UUID: e.uuid, Payload: o.slab[e.payloadAt : e.payloadAt+e.payloadLen]}
}

func (o *FirstSeen) hold(rec *Record, release int64) {
	o.insertHeld(heldEntry{
		offset: rec.Offset, eventTime: o.ev.EventTime, timestamp: rec.Timestamp,
		release: release, uuid: o.ev.UUID,
	}, o.ev.Payload)
}

func (o *FirstSeen) insertHeld(e heldEntry, payload []byte) {
	e.payloadAt, e.payloadLen = int32(len(o.slab)), int32(len(payload))
	o.slab = append(o.slab, payload...)
	n := len(o.held)
	if n == 0 || less(&o.held[n-1], &e) {
		o.held = append(o.held, e)
		return
	}
	i := sort.Search(n, func(i int) bool { return less(&e, &o.held[i]) })
	o.held = append(o.held, heldEntry{})
	copy(o.held[i+1:], o.held[i:])
	o.held[i] = e
}

func less(a, b *heldEntry) bool {
	return a.release < b.release || (a.release == b.release && a.offset < b.offset)
}

func (o *FirstSeen) emit(u *UUID, t int64, day int32, fs int64, isNew, late bool, offset, ts int64, payload []byte) {
	o.row = Row{UUID: *u, EventTime: t, EventDate: day, FirstSeen: fs, IsNew: isNew, Late: late,
		Partition: o.partition, Offset: offset, Timestamp: ts, Payload: payload}
	o.out.Emit(&o.row)
}
