// Package sinktest is the conformance suite every sink passes: the
// exactly-once contract of package sinks, checked against the sink's real
// destination (a ClickHouse server, a Kafka broker, a directory).
//
// A sink's test supplies a [Harness] (how to open the sink, read its
// destination back, write the way the engine's checkpoint does, and break
// the destination for a while) and calls [Run]. The suite then checks:
//
//   - batches written and acknowledged are all there, each row once, equal
//     to what was written;
//   - a crash between the write and the checkpoint (the whole batch, or only
//     part of it, may have landed), followed by a new sink writing the
//     replayed batch with Retry, leaves each row once;
//   - a write that fails while the destination is broken, retried with the
//     same batch once it is back, leaves each row once;
//   - shutdown: Close is safe twice, a Write after it fails, and what was
//     acknowledged is still there for the next sink.
package sinktest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
)

// Harness adapts a sink to the suite.
type Harness struct {
	// Open opens a sink on the suite's destination. Every call opens the
	// same destination: a sink opened after a simulated crash sees what
	// the crashed one stored. Each subtest starts on an empty destination
	// (see Reset).
	Open func(t *testing.T) sinks.Sink
	// Reset empties the destination (or points Open at a new one).
	Reset func(t *testing.T)
	// Read returns the rows readers of the destination see, in any order.
	Read func(t *testing.T) []sinks.Line
	// Write writes b through s as the engine's checkpoint does. With commit
	// false the process crashes after the write and before the checkpoint
	// commits: a transactional sink's rows are then never committed. Nil
	// means s.Write.
	Write func(ctx context.Context, t *testing.T, s sinks.Sink, b *sinks.Batch, commit bool) error
	// Break makes the destination fail until heal is called; Write must
	// return an error meanwhile (within WriteTimeout).
	Break func(t *testing.T, s sinks.Sink) (heal func())
	// TimePrecision is what the destination keeps of times (ClickHouse
	// 18's DateTime: seconds); zero means milliseconds.
	TimePrecision time.Duration
}

// WriteTimeout bounds a Write while the destination is broken.
const WriteTimeout = 30 * time.Second

// Run runs the suite.
func Run(t *testing.T, h Harness) {
	if h.Write == nil {
		h.Write = func(ctx context.Context, _ *testing.T, s sinks.Sink, b *sinks.Batch, _ bool) error {
			return s.Write(ctx, b)
		}
	}
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, h Harness)
	}{
		{"WrittenAndAcknowledged", writtenAndAcknowledged},
		{"CrashBetweenWriteAndCheckpoint", crashBetweenWriteAndCheckpoint},
		{"CrashAfterPartLanded", crashAfterPartLanded},
		{"RetryAfterTransientError", retryAfterTransientError},
		{"Shutdown", shutdown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.Reset(t)
			tc.fn(t, h)
		})
	}
}

// NewBatch returns a batch of n rows of epoch, over three source
// partitions, starting at offset from (rows of one partition have
// increasing offsets with gaps, as dead letters leave), with event dates
// over two days and payloads of all kinds of JSON.
func NewBatch(seed uint64, epoch uint64, from int64, n int) *sinks.Batch {
	rng := rand.New(rand.NewPCG(seed, epoch))
	b := &sinks.Batch{Epoch: epoch, Writer: "sinktest"}
	day := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	payloads := []string{`{"page":"/"}`, `{"name":"Zoë 日本","n":[1,2.5,null],"ok":true}`, `{}`, `{"q":"a\"b\\c"}`}
	off := [3]int64{from, from, from}
	for range n {
		p := rng.Int32N(3)
		off[p] += 1 + rng.Int64N(3)
		var u operators.UUID
		for j := range u {
			u[j] = byte(rng.UintN(256))
		}
		u[6], u[8] = u[6]&0x0f|0x40, u[8]&0x3f|0x80
		et := day.Add(time.Duration(rng.Int64N(int64(48 * time.Hour)))).Truncate(time.Millisecond)
		r := operators.Row{UUID: u, EventTime: et.UnixMilli(), EventDate: int32(et.Unix() / 86400),
			FirstSeen: et.Add(-time.Duration(rng.Int64N(int64(72 * time.Hour)))).UnixMilli(), IsNew: rng.IntN(3) == 0,
			Late: rng.IntN(10) == 0, Partition: p, Offset: off[p], Timestamp: et.Add(time.Second).UnixMilli(),
			Payload: []byte(payloads[rng.IntN(len(payloads))])}
		b.Append(&r)
	}
	return b
}

// prefix returns a batch of b's first n rows, as a write that crashed
// midway may have left.
func prefix(b *sinks.Batch, n int) *sinks.Batch {
	p := &sinks.Batch{Epoch: b.Epoch, Writer: b.Writer}
	var r operators.Row
	for i := range n {
		b.Row(i, &r)
		p.Append(&r)
	}
	return p
}

// check compares what the destination holds with the rows of the batches:
// each exactly once, every column equal.
func check(t *testing.T, h Harness, batches ...*sinks.Batch) {
	t.Helper()
	type key struct {
		p int32
		o int64
	}
	want := map[key]sinks.Line{}
	var r operators.Row
	for _, b := range batches {
		for i := range b.Len() {
			b.Row(i, &r)
			line, err := sinks.ParseJSON(sinks.AppendJSON(nil, singleRow(&r), 0))
			if err != nil {
				t.Fatal(err)
			}
			want[key{r.Partition, r.Offset}] = line
		}
	}
	got := h.Read(t)
	seen := map[key]int{}
	var problems []string
	for _, g := range got {
		k := key{g.Partition, g.Offset}
		seen[k]++
		w, ok := want[k]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("row of partition %d offset %d was never written", k.p, k.o))
		case seen[k] == 2:
			problems = append(problems, fmt.Sprintf("row of partition %d offset %d is there twice or more", k.p, k.o))
		case !sameLine(g, w, h.TimePrecision):
			problems = append(problems, fmt.Sprintf("row of partition %d offset %d differs:\n got  %+v\n want %+v", k.p, k.o, g, w))
		}
	}
	for k := range want {
		if seen[k] == 0 {
			problems = append(problems, fmt.Sprintf("row of partition %d offset %d is missing", k.p, k.o))
		}
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		t.Fatalf("%d rows expected, %d read; %d problems:\n%s", len(want), len(got), len(problems),
			strings.Join(problems[:min(len(problems), 10)], "\n"))
	}
}

func sameLine(a, b sinks.Line, precision time.Duration) bool {
	same := func(x, y time.Time) bool { return x.Truncate(precision).Equal(y.Truncate(precision)) }
	return a.UUID == b.UUID && same(a.EventTime, b.EventTime) && same(a.FirstSeen, b.FirstSeen) && same(a.KafkaTime, b.KafkaTime) &&
		a.EventDate == b.EventDate && a.IsNew == b.IsNew && a.Late == b.Late && string(a.Payload) == string(b.Payload)
}

func singleRow(r *operators.Row) *sinks.Batch {
	var b sinks.Batch
	b.Append(r)
	return &b
}

func write(t *testing.T, h Harness, s sinks.Sink, b *sinks.Batch, commit bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := h.Write(ctx, t, s, b, commit); err != nil {
		t.Fatalf("write of epoch %d (%d rows): %v", b.Epoch, b.Len(), err)
	}
}

func writtenAndAcknowledged(t *testing.T, h Harness) {
	s := h.Open(t)
	defer s.Close()
	b1, b2 := NewBatch(1, 1, 0, 500), NewBatch(1, 2, 10_000, 700)
	write(t, h, s, b1, true)
	write(t, h, s, &sinks.Batch{Epoch: 3, Writer: "sinktest"}, true) // an empty epoch
	// A batch joined from parts, as the engine hands them over.
	p1, p2 := NewBatch(2, 4, 20_000, 100), NewBatch(3, 4, 30_000, 150)
	var joined sinks.Batch
	joined.Epoch, joined.Writer = 4, "sinktest"
	joined.Join(p1, p2)
	write(t, h, s, b2, true)
	write(t, h, s, &joined, true)
	check(t, h, b1, b2, p1, p2)
}

func crashBetweenWriteAndCheckpoint(t *testing.T, h Harness) {
	s := h.Open(t)
	b1, b2 := NewBatch(4, 1, 0, 400), NewBatch(4, 2, 10_000, 400)
	write(t, h, s, b1, true)
	write(t, h, s, b2, false) // the process dies before the checkpoint
	s.Close()
	// The next process replays the epoch: the same rows, with Retry.
	s2 := h.Open(t)
	defer s2.Close()
	replay := prefix(b2, b2.Len())
	replay.Retry, replay.Unsure = true, []sinks.Attempt{{Writer: b2.Writer, Epoch: b2.Epoch}}
	replay.Writer, replay.Epoch = "sinktest-2", 1
	write(t, h, s2, replay, true)
	check(t, h, b1, b2)
}

func crashAfterPartLanded(t *testing.T, h Harness) {
	for _, landed := range []float64{0, 0.3, 1} {
		t.Run(fmt.Sprintf("%.0f%%", landed*100), func(t *testing.T) {
			h.Reset(t)
			s := h.Open(t)
			b := NewBatch(5, 7, 0, 600)
			write(t, h, s, prefix(b, int(landed*float64(b.Len()))), false)
			s.Close()
			s2 := h.Open(t)
			defer s2.Close()
			replay := prefix(b, b.Len())
			replay.Retry, replay.Unsure = true, []sinks.Attempt{{Writer: b.Writer, Epoch: b.Epoch}}
			write(t, h, s2, replay, true)
			check(t, h, b)
		})
	}
}

func retryAfterTransientError(t *testing.T, h Harness) {
	s := h.Open(t)
	defer s.Close()
	b1, b2 := NewBatch(6, 1, 0, 300), NewBatch(6, 2, 10_000, 300)
	write(t, h, s, b1, true)
	heal := h.Break(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), WriteTimeout)
	err := h.Write(ctx, t, s, b2, true)
	cancel()
	if err == nil {
		heal()
		t.Fatal("a write to the broken destination succeeded")
	}
	heal()
	// The engine's retry: the same batch again, until it succeeds.
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), WriteTimeout)
		err := h.Write(ctx, t, s, b2, true)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the write still fails after the destination is back: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	check(t, h, b1, b2)
}

func shutdown(t *testing.T, h Harness) {
	s := h.Open(t)
	b := NewBatch(7, 1, 0, 200)
	write(t, h, s, b, true)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Write(ctx, t, s, NewBatch(7, 2, 10_000, 10), true); err == nil {
		t.Fatal("a Write after Close succeeded")
	}
	s2 := h.Open(t)
	defer s2.Close()
	check(t, h, b)
}
