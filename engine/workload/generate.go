// Package workload generates deterministic synthetic user-activity logs: the
// input firstseen reads from Kafka. The demo produces a workload to Kafka,
// the integration tests compare the processor's output over one with an
// oracle's, and the benchmark measures throughput on one.
//
// A workload is a slice of [Record]s in produce order (by Kafka timestamp).
// Most are valid JSON objects carrying a user's uuid and an event_time in
// one of the encodings the decoder accepts; a configurable share is
// delivered late on purpose ([Late]) and another is malformed, spread over
// every reason the processor refuses a record for ([Kind.Malformed]). The
// same [Config], seed included, always yields the same bytes, whatever the
// machine or GOMAXPROCS.
//
// The traffic's shape:
//
//   - Users have random version-4 uuids. Activity is Zipf-skewed: a few heavy
//     users produce many records, most produce a handful.
//   - A user is first active on the first day of the window, or, for a share
//     of users, on a uniformly chosen later day; later records fall on that
//     day or after it.
//   - Event times are uniform over a day, except for a spike of activity in
//     the 20 minutes around each midnight, including users whose first two
//     records straddle a midnight: the interesting case for is_new.
//   - A valid record arrives (its Kafka timestamp) a delay after its event
//     time that is shorter than the tolerance, so it is on time. Delays are
//     longer within 15 minutes of a midnight, so that records from the last
//     minutes of a day often arrive after records of the next day.
//   - A late record arrives 2 to 4 tolerances after its event time, after
//     newer traffic has moved the watermark past it.
//   - Keys are canonical lower-case uuids, and partitions are chosen the way
//     Kafka's default partitioner chooses them ([Partition]).
//
// [WriteJSONL] and [ReadJSONL] store a workload as JSON Lines.
package workload

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/firstseen/firstseen/operators"
)

// Config describes a workload. The zero value of a field means its default
// (see [Config.WithDefaults]).
type Config struct {
	// Users is the number of distinct users (default 5000).
	Users int
	// Days is the number of calendar days the event times cover (default 2).
	Days int
	// Start is the midnight (UTC) that starts the first day (default
	// 2026-01-05 00:00 UTC). It must be a UTC midnight.
	Start time.Time
	// RecordsPerUser is the mean number of valid records per user (default
	// 5). When it is at least 1, every user has at least one record.
	RecordsPerUser float64
	// Skew is the Zipf exponent of per-user activity (default 1.1): the user
	// of rank k gets a share of the records proportional to k^-Skew. A
	// negative value makes all users equally active.
	Skew float64
	// NewShare is the share of users whose first activity falls on day 2..D
	// of the window, uniformly, rather than on day 1 (default 0.3; negative
	// means none).
	NewShare float64
	// Tolerance is the processor's out-of-order tolerance (default 10m). It
	// must be at least a millisecond.
	Tolerance time.Duration
	// LateShare is the share of valid records delivered late on purpose:
	// more than Tolerance after newer records (default 0.002; negative means
	// none).
	LateShare float64
	// MalformedShare is the share of all records that are malformed (default
	// 0.003; negative means none). It must be below 1.
	MalformedShare float64
	// Partitions is the number of Kafka partitions (default 4).
	Partitions int
	// Seed selects the workload; every seed is valid.
	Seed int64
}

// defaultStart is the default first day of a workload.
var defaultStart = time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Users == 0 {
		c.Users = 5000
	}
	if c.Days == 0 {
		c.Days = 2
	}
	if c.Start.IsZero() {
		c.Start = defaultStart
	}
	if c.RecordsPerUser == 0 {
		c.RecordsPerUser = 5
	}
	if c.Skew == 0 {
		c.Skew = 1.1
	}
	if c.NewShare == 0 {
		c.NewShare = 0.3
	}
	if c.Tolerance == 0 {
		c.Tolerance = 10 * time.Minute
	}
	if c.LateShare == 0 {
		c.LateShare = 0.002
	}
	if c.MalformedShare == 0 {
		c.MalformedShare = 0.003
	}
	if c.Partitions == 0 {
		c.Partitions = 4
	}
	return c
}

// maxRecords bounds a workload's size: record indexes fit in an int32.
const maxRecords = math.MaxInt32

// validate checks a configuration that has its defaults applied.
func (c *Config) validate() error {
	switch {
	case c.Users < 1 || c.Users > maxRecords:
		return fmt.Errorf("workload: Users must be between 1 and %d, not %d", maxRecords, c.Users)
	case c.Days < 1 || c.Days > 36600:
		return fmt.Errorf("workload: Days must be between 1 and 36600, not %d", c.Days)
	case !c.Start.Truncate(24 * time.Hour).Equal(c.Start):
		return fmt.Errorf("workload: Start must be a midnight UTC, not %s", c.Start.Format(time.RFC3339Nano))
	case !(c.RecordsPerUser > 0) || math.IsInf(c.RecordsPerUser, 0):
		return fmt.Errorf("workload: RecordsPerUser must be positive and finite, not %v", c.RecordsPerUser)
	case math.IsNaN(c.Skew) || math.IsInf(c.Skew, 0):
		return fmt.Errorf("workload: Skew must be finite, not %v", c.Skew)
	case math.IsNaN(c.NewShare) || c.NewShare > 1:
		return fmt.Errorf("workload: NewShare must be at most 1, not %v", c.NewShare)
	case math.IsNaN(c.LateShare) || c.LateShare > 1:
		return fmt.Errorf("workload: LateShare must be at most 1, not %v", c.LateShare)
	case math.IsNaN(c.MalformedShare) || c.MalformedShare >= 1:
		return fmt.Errorf("workload: MalformedShare must be below 1, not %v", c.MalformedShare)
	case c.Tolerance < time.Millisecond || c.Tolerance > 24*time.Hour:
		return fmt.Errorf("workload: Tolerance must be between 1ms and 24h, not %s", c.Tolerance)
	case c.Partitions < 1 || c.Partitions > 1<<20:
		return fmt.Errorf("workload: Partitions must be between 1 and %d, not %d", 1<<20, c.Partitions)
	}
	valid := float64(c.Users) * (c.RecordsPerUser + 1) // + 1 for rounding
	if total := valid / (1 - max(c.MalformedShare, 0)); total > maxRecords {
		return fmt.Errorf("workload: about %.0f records is more than the %d a workload can hold", total, maxRecords)
	}
	return nil
}

// Kind is the generator's intent for a record.
type Kind uint8

// The kinds of records. Valid and Late records are accepted by the
// processor; the others are malformed and refused.
const (
	Valid        Kind = iota // on time: delivered less than the tolerance after its event time
	Late                     // valid, but delivered 2 to 4 tolerances after its event time
	NotJSON                  // not JSON at all, e.g. truncated or plain text
	NotObject                // JSON, but not an object
	NoUUID                   // an object without a uuid (or a null one)
	BadUUID                  // a uuid that is not one
	NoEventTime              // no event_time (or a null one)
	BadEventTime             // an event_time that is neither epoch ms nor RFC 3339
	Future                   // event_time 3 hours after the record's Kafka timestamp
	numKinds
)

var kindNames = [numKinds]string{
	Valid:        "valid",
	Late:         "late",
	NotJSON:      "not_json",
	NotObject:    "not_object",
	NoUUID:       "missing_uuid",
	BadUUID:      "bad_uuid",
	NoEventTime:  "missing_event_time",
	BadEventTime: "bad_event_time",
	Future:       "future",
}

// String returns the kind's name as [WriteJSONL] writes it.
func (k Kind) String() string {
	if k < numKinds {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ParseKind returns the kind named s (see [Kind.String]).
func ParseKind(s string) (Kind, bool) {
	for k, name := range kindNames {
		if name == s {
			return Kind(k), true
		}
	}
	return 0, false
}

// Malformed reports whether the processor refuses records of kind k.
func (k Kind) Malformed() bool { return k >= NotJSON && k < numKinds }

// Refusal returns the dead-letter reason (the String of the operators
// package's Reason) the processor refuses a record of kind k with, or "" for
// the kinds it accepts.
func (k Kind) Refusal() string {
	switch k {
	case Future:
		return "event_time_too_far_in_future"
	case Valid, Late:
		return ""
	}
	if k.Malformed() {
		return kindNames[k]
	}
	return ""
}

// malformedKinds are the kinds malformed records cycle through.
var malformedKinds = [...]Kind{NotJSON, NotObject, NoUUID, BadUUID, NoEventTime, BadEventTime, Future}

// Record is one Kafka record of a workload.
type Record struct {
	// Partition is the Kafka partition: Partition(Key, Config.Partitions),
	// or a pseudo-random one when Key is nil.
	Partition int32
	// Key is the canonical lower-case uuid of the record's user, or nil for
	// malformed records that name no user. Records of the same user share
	// the key's memory: treat it as read-only.
	Key []byte
	// Value is the record's JSON (or, for malformed records, not).
	Value []byte
	// Timestamp is the Kafka record timestamp, in whole milliseconds, UTC:
	// the simulated arrival time, event time plus delivery delay.
	Timestamp time.Time
	// Kind is the generator's intent. Whether a Late record is actually
	// late is for the processor to decide: one without enough newer traffic
	// in its partition may turn out on time.
	Kind Kind
	// Day is the 0-based index, within the window, of the day of the
	// record's event time; of its Timestamp for malformed records.
	Day int
}

const (
	dayMs    = 24 * 60 * 60 * 1000
	minuteMs = 60 * 1000

	spikeHalfMs = 10 * minuteMs // the midnight spike covers 10 minutes either side
	slowHalfMs  = 15 * minuteMs // delays are longer within 15 minutes of a midnight
	futureMs    = 3 * 60 * minuteMs

	spikeShare = 0.12 // share of records placed in a midnight spike
	pairShare  = 0.25 // share of eligible users whose first two records straddle a midnight

	userBlock   = 1024    // users generated from one random stream
	formatChunk = 1 << 14 // records formatted from one random stream
)

// Random streams. Each part of the generation draws from its own stream, so
// the parts that run in parallel do not depend on scheduling.
const (
	streamUsers uint64 = iota + 1
	streamCounts
	streamEvents
	streamLate
	streamMalformed
	streamFormat
)

// event is a record before formatting.
type event struct {
	ts   int64 // Kafka timestamp, epoch ms
	et   int64 // event time, epoch ms
	user int32
	kind Kind
}

// gen holds a generation's configuration and users.
type gen struct {
	cfg                   Config
	seed                  uint64
	startMs, endMs, tolMs int64
	users                 int
	ids                   [][16]byte
	keys                  []byte // canonical uuids, 36 bytes a user
	parts                 []int32
}

// Generate returns the workload cfg describes (defaults applied), in
// produce order: sorted by Timestamp, ties broken deterministically.
func Generate(cfg Config) ([]Record, error) {
	recs, _, err := generate(cfg, false)
	return recs, err
}

// generate is Generate; with wantTimes it also returns each record's
// intended event time (epoch ms; for malformed records the one its value
// was built from, if any).
func generate(cfg Config, wantTimes bool) ([]Record, []int64, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, nil, err
	}
	g := &gen{
		cfg:     cfg,
		seed:    uint64(cfg.Seed),
		startMs: cfg.Start.UnixMilli(),
		tolMs:   cfg.Tolerance.Milliseconds(),
		users:   cfg.Users,
	}
	g.endMs = g.startMs + int64(cfg.Days)*dayMs
	g.makeUsers()
	counts, valid := g.counts()
	if valid == 0 {
		return nil, nil, errors.New("workload: the configuration yields no records")
	}
	ms := max(cfg.MalformedShare, 0)
	malformed := int64(math.Round(float64(valid) * ms / (1 - ms)))
	if valid+malformed > maxRecords {
		return nil, nil, fmt.Errorf("workload: %d records is more than the %d a workload can hold", valid+malformed, maxRecords)
	}
	evs := make([]event, valid+malformed)
	g.validEvents(evs[:valid], counts)
	g.markLate(evs[:valid])
	g.malformedEvents(evs[valid:])
	sortEvents(evs)

	recs := make([]Record, len(evs))
	g.format(evs, recs)
	var times []int64
	if wantTimes {
		times = make([]int64, len(evs))
		for i := range evs {
			times[i] = evs[i].et
		}
	}
	return recs, times, nil
}

// rng returns the random source of part index of a stream.
func (g *gen) rng(stream, index uint64) *rand.Rand {
	return rand.New(rand.NewPCG(mix(g.seed^mix(stream)), mix(index+stream<<56)))
}

// mix is the SplitMix64 finalizer.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// makeUsers draws the users' uuids and computes their keys and partitions.
func (g *gen) makeUsers() {
	r := g.rng(streamUsers, 0)
	g.ids = make([][16]byte, g.users)
	g.keys = make([]byte, 36*g.users)
	g.parts = make([]int32, g.users)
	for u := range g.ids {
		id := &g.ids[u]
		a, b := r.Uint64(), r.Uint64()
		for i := range 8 {
			id[i], id[8+i] = byte(a>>(56-8*i)), byte(b>>(56-8*i))
		}
		id[6] = id[6]&0x0f | 0x40 // version 4
		id[8] = id[8]&0x3f | 0x80 // RFC 4122 variant
		key := g.keys[36*u : 36*u+36]
		(*operators.UUID)(id).AppendCanonical(key[:0])
		g.parts[u] = Partition(key, g.cfg.Partitions)
	}
}

// key returns user u's canonical uuid.
func (g *gen) key(u int32) []byte {
	i := 36 * int(u)
	return g.keys[i : i+36 : i+36]
}

const hexLower = "0123456789abcdef"

// counts draws the number of valid records of every user: the mean is
// RecordsPerUser, shared out in proportion to the users' Zipf weights.
func (g *gen) counts() (counts []int32, total int64) {
	r := g.rng(streamCounts, 0)
	rpu := g.cfg.RecordsPerUser
	base := 0.0
	if rpu >= 1 {
		base = 1
	}
	weights := make([]float64, g.users)
	var sum float64
	for i := range weights {
		w := 1.0
		if g.cfg.Skew > 0 {
			w = math.Pow(float64(i+1), -g.cfg.Skew)
		}
		weights[i] = w
		sum += w
	}
	extra := float64(g.users) * (rpu - base)
	counts = make([]int32, g.users)
	for i, w := range weights {
		e := extra * w / sum
		n := math.Floor(e)
		if r.Float64() < e-n {
			n++
		}
		counts[i] = int32(base + n)
		total += int64(counts[i])
	}
	return counts, total
}

// validEvents fills evs with every user's valid records, user by user.
func (g *gen) validEvents(evs []event, counts []int32) {
	blocks := (g.users + userBlock - 1) / userBlock
	offsets := make([]int64, blocks+1)
	for b := range blocks {
		n := int64(0)
		for _, c := range counts[b*userBlock : min((b+1)*userBlock, g.users)] {
			n += int64(c)
		}
		offsets[b+1] = offsets[b] + n
	}
	parallel(blocks, func(b int) {
		r := g.rng(streamEvents, uint64(b))
		out := evs[offsets[b]:offsets[b+1]]
		k := 0
		for u := b * userBlock; u < min((b+1)*userBlock, g.users); u++ {
			k += g.userEvents(r, out[k:k+int(counts[u])], int32(u))
		}
	})
}

// userEvents fills out with user u's valid records and returns len(out).
func (g *gen) userEvents(r *rand.Rand, out []event, u int32) int {
	n, days := len(out), g.cfg.Days
	first := 0
	if days > 1 && r.Float64() < g.cfg.NewShare {
		first = 1 + r.IntN(days-1)
	}
	pair := n >= 2 && first < days-1 && r.Float64() < pairShare
	for j := range out {
		d, off := first, int64(0)
		switch {
		case pair && j == 0: // the last minutes of the first day...
			off = dayMs - 1 - r.Int64N(spikeHalfMs)
		case pair && j == 1: // ...and the first minutes of the next
			d, off = first+1, r.Int64N(spikeHalfMs)
		default:
			if j > 0 {
				d = first + r.IntN(days-first)
			}
			off = timeOfDay(r)
		}
		et := g.startMs + int64(d)*dayMs + off
		out[j] = event{ts: et + g.delay(r, off), et: et, user: u, kind: Valid}
	}
	return n
}

// timeOfDay draws a record's offset from its day's midnight, in ms.
func timeOfDay(r *rand.Rand) int64 {
	if r.Float64() < spikeShare {
		if r.IntN(2) == 0 {
			return r.Int64N(spikeHalfMs)
		}
		return dayMs - 1 - r.Int64N(spikeHalfMs)
	}
	return r.Int64N(dayMs)
}

// delay draws the delivery delay of an on-time record whose event time is
// off ms after its midnight: uniform below the tolerance, but the maximum
// of two draws just after a midnight and of three just before one.
func (g *gen) delay(r *rand.Rand, off int64) int64 {
	d := r.Int64N(g.tolMs)
	switch {
	case off >= dayMs-slowHalfMs:
		d = max(d, r.Int64N(g.tolMs), r.Int64N(g.tolMs))
	case off < slowHalfMs:
		d = max(d, r.Int64N(g.tolMs))
	}
	return d
}

// markLate turns round(LateShare*len(evs)) of the valid records into late
// ones, chosen uniformly among the eligible: those that newer traffic in
// their partition can overtake. A late record arrives 2 to 4 tolerances
// after its event time, and after an on-time record of its partition more
// than a tolerance newer, so that it is below the watermark. When fewer
// records are eligible, all of them are late.
func (g *gen) markLate(evs []event) {
	want := int64(math.Round(max(g.cfg.LateShare, 0) * float64(len(evs))))
	if want == 0 {
		return
	}
	ix := g.newTrafficIndex()
	ix.build(evs)
	var eligible int64
	for i := range evs {
		if _, ok := ix.lateDelay(&evs[i]); ok {
			eligible++
		}
	}
	want = min(want, eligible)
	r := g.rng(streamLate, 0)
	var seen, chosen int64
	for i := range evs {
		if _, ok := ix.lateDelay(&evs[i]); !ok {
			continue
		}
		// Selection sampling: exactly want of the eligible, uniformly.
		if r.Int64N(eligible-seen) < want-chosen {
			evs[i].kind = Late
			chosen++
		}
		seen++
	}
	// The late records no longer count as traffic. A late record whose
	// overtaking traffic was itself made late may find none any more; it
	// gets an ordinary late delay and may turn out to be on time.
	ix.build(evs)
	for i := range evs {
		e := &evs[i]
		if e.kind != Late {
			continue
		}
		least, ok := ix.lateDelay(e)
		if !ok {
			least = 2 * g.tolMs
		}
		e.ts = e.et + least + r.Int64N(4*g.tolMs-least)
	}
}

// trafficIndex finds, for an event time, the earliest arrival of an on-time
// record of a partition with a later event time, to bucket precision.
type trafficIndex struct {
	g       *gen
	width   int64   // of a bucket of event times, ms
	buckets int     // per partition
	first   []int64 // [partition*buckets+b]: the earliest arrival of a Valid record in bucket b or later
}

func (g *gen) newTrafficIndex() *trafficIndex {
	span := g.endMs - g.startMs
	maxBuckets := int64(max(4, (1<<22)/g.cfg.Partitions))
	width := max((g.tolMs+3)/4, (span+maxBuckets-1)/maxBuckets)
	buckets := int((span + width - 1) / width)
	return &trafficIndex{g: g, width: width, buckets: buckets, first: make([]int64, g.cfg.Partitions*buckets)}
}

// build indexes the Valid records of evs.
func (ix *trafficIndex) build(evs []event) {
	for i := range ix.first {
		ix.first[i] = math.MaxInt64
	}
	for i := range evs {
		e := &evs[i]
		if e.kind != Valid {
			continue
		}
		at := int(ix.g.parts[e.user])*ix.buckets + int((e.et-ix.g.startMs)/ix.width)
		ix.first[at] = min(ix.first[at], e.ts)
	}
	for p := 0; p < len(ix.first); p += ix.buckets {
		for b := p + ix.buckets - 2; b >= p; b-- {
			ix.first[b] = min(ix.first[b], ix.first[b+1])
		}
	}
}

// lateDelay returns the least delay below 4 tolerances, and at least 2,
// that makes e late, if there is one.
func (ix *trafficIndex) lateDelay(e *event) (int64, bool) {
	tol := ix.g.tolMs
	// The first bucket whose event times are all more than tol after e's.
	b := int((e.et+tol-ix.g.startMs)/ix.width) + 1
	if b >= ix.buckets {
		return 0, false
	}
	first := ix.first[int(ix.g.parts[e.user])*ix.buckets+b]
	if first == math.MaxInt64 {
		return 0, false
	}
	least := max(2*tol, first+1-e.et)
	return least, least < 4*tol
}

// malformedEvents fills evs with malformed records, cycling through the
// malformed kinds, arriving uniformly over the window.
func (g *gen) malformedEvents(evs []event) {
	r := g.rng(streamMalformed, 0)
	span := g.endMs - g.startMs
	for i := range evs {
		k := malformedKinds[i%len(malformedKinds)]
		ts := g.startMs + r.Int64N(span)
		et := ts - r.Int64N(g.tolMs)
		if k == Future {
			et = ts + futureMs
		}
		evs[i] = event{ts: ts, et: et, user: int32(r.IntN(g.users)), kind: k}
	}
}

// sortEvents sorts evs by timestamp with a stable least-significant-digit
// radix sort, so ties stay in generation order.
func sortEvents(evs []event) {
	if len(evs) < 2 {
		return
	}
	lo, hi := evs[0].ts, evs[0].ts
	for i := range evs {
		lo, hi = min(lo, evs[i].ts), max(hi, evs[i].ts)
	}
	width := bits.Len64(uint64(hi - lo))
	const radixBits = 11
	const mask = 1<<radixBits - 1
	src, dst := evs, make([]event, len(evs))
	var pos [1 << radixBits]int
	for shift := 0; shift < width; shift += radixBits {
		clear(pos[:])
		for i := range src {
			pos[(uint64(src[i].ts-lo)>>shift)&mask]++
		}
		at := 0
		for b, n := range pos {
			pos[b] = at
			at += n
		}
		for i := range src {
			b := (uint64(src[i].ts-lo) >> shift) & mask
			dst[pos[b]] = src[i]
			pos[b]++
		}
		src, dst = dst, src
	}
	if &src[0] != &evs[0] {
		copy(evs, src)
	}
}

// format turns evs into recs, chunk by chunk, in parallel.
func (g *gen) format(evs []event, recs []Record) {
	chunks := (len(evs) + formatChunk - 1) / formatChunk
	var pool sync.Pool
	parallel(chunks, func(c int) {
		b, _ := pool.Get().(*builder)
		if b == nil {
			b = &builder{g: g}
		}
		r := g.rng(streamFormat, uint64(c))
		lo, hi := c*formatChunk, min((c+1)*formatChunk, len(evs))
		for i := lo; i < hi; i++ {
			b.record(r, &evs[i], &recs[i])
		}
		pool.Put(b)
	})
}

// parallel calls fn(0), ..., fn(n-1) on up to GOMAXPROCS goroutines.
func parallel(n int, fn func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), n)
	if workers <= 1 {
		for i := range n {
			fn(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				fn(i)
			}
		})
	}
	wg.Wait()
}
