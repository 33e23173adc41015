package workload

import (
	"math"
	"sort"

	"github.com/firstseen/firstseen/operators"
)

// Expected is the oracle's answer for one input record.
type Expected struct {
	Partition int32
	Offset    int64            // the record's offset, counting from 0 in produce order
	Reason    operators.Reason // OK: the record becomes a row; otherwise a dead letter
	UUID      operators.UUID
	EventTime int64
	IsNew     bool
	Late      bool
	FirstSeen int64 // first_seen as known when the row is decided
}

// Oracle computes, by brute force over each partition's arrival order, what
// firstseen must write for recs (in produce order, into a fresh topic) when
// every held record is finally released after the last arrival. boot is the
// bootstrap state. It shares no code with the operator except decoding and
// the calendar, which are tested on their own.
//
// The model: the watermark after arrival i is max(event time of on-time
// arrivals 0..i) - tolerance; a record below the watermark before it is late.
// A late record, and an on-time record whose user is already known on an
// earlier day, is decided at arrival. Any other on-time record is decided at
// the first arrival after which the watermark reaches its day's midnight (or
// at the end). is_new = no known time of the user before that midnight, where
// "known" is the bootstrap and every arrival up to the decision.
func Oracle(recs []Record, cfg operators.Config, boot map[operators.UUID]int64) []Expected {
	if cfg.Tolerance == 0 {
		cfg.Tolerance = 10 * 60e9
	}
	if cfg.MaxFuture == 0 {
		cfg.MaxFuture = 60 * 60e9
	}
	if cfg.Calendar == nil {
		cfg.Calendar = operators.NewCalendar(nil)
	}
	uf, tf := cfg.UUIDField, cfg.TimeField
	if uf == "" {
		uf = "uuid"
	}
	if tf == "" {
		tf = "event_time"
	}
	dec := operators.NewDecoder(uf, tf)
	cal := cfg.Calendar.Clone()
	tol, maxFuture := cfg.Tolerance.Milliseconds(), cfg.MaxFuture.Milliseconds()

	out := make([]Expected, len(recs))
	byPart := map[int32][]int{}
	for i := range recs {
		p := recs[i].Partition
		out[i] = Expected{Partition: p, Offset: int64(len(byPart[p]))}
		byPart[p] = append(byPart[p], i)
		var ev operators.Event
		r := dec.Decode(recs[i].Value, &ev)
		if ts := recs[i].Timestamp.UnixMilli(); r == operators.OK && ts > 0 && ev.EventTime-ts > maxFuture {
			r = operators.TooFarInFuture
		}
		out[i].Reason, out[i].UUID, out[i].EventTime = r, ev.UUID, ev.EventTime
	}

	type seen struct {
		at   int   // arrival index within the partition
		pmin int64 // min event time of the user over arrivals up to at
	}
	for _, idx := range byPart {
		// Valid arrivals of this partition, in order.
		var valid []int
		for _, i := range idx {
			if out[i].Reason == operators.OK {
				valid = append(valid, i)
			}
		}
		n := len(valid)
		late := make([]bool, n)
		wAfter := make([]int64, n)
		w, maxT := int64(math.MinInt64), int64(math.MinInt64)
		users := map[operators.UUID][]seen{}
		for a, i := range valid {
			e := &out[i]
			late[a] = e.EventTime < w
			if !late[a] {
				maxT = max(maxT, e.EventTime)
				w = max(w, maxT-tol)
			}
			wAfter[a] = w
			l := users[e.UUID]
			m := e.EventTime
			if len(l) > 0 {
				m = min(m, l[len(l)-1].pmin)
			}
			users[e.UUID] = append(l, seen{at: a, pmin: m})
		}
		known := func(u operators.UUID, upTo int) int64 {
			m := int64(math.MaxInt64)
			if b, ok := boot[u]; ok {
				m = b
			}
			l := users[u]
			k := sort.Search(len(l), func(k int) bool { return l[k].at > upTo }) // first after upTo
			if k > 0 {
				m = min(m, l[k-1].pmin)
			}
			return m
		}
		for a, i := range valid {
			e := &out[i]
			start, _ := cal.Day(e.EventTime)
			e.Late = late[a]
			f := known(e.UUID, a)
			if !late[a] && f >= start {
				j := a + sort.Search(n-a, func(k int) bool { return wAfter[a+k] >= start })
				f = known(e.UUID, j) // j == n: everything
			}
			e.FirstSeen, e.IsNew = f, f >= start
		}
	}
	return out
}
