package main

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
)

// dist summarises latencies in milliseconds.
type dist struct {
	Count   int64     `json:"count"`
	P50Ms   float64   `json:"p50_ms"`
	P99Ms   float64   `json:"p99_ms"`
	MaxMs   float64   `json:"max_ms"`
	samples []float64 // sorted
}

func newDist(samples []float64) dist {
	sort.Float64s(samples)
	d := dist{Count: int64(len(samples)), samples: samples}
	if len(samples) > 0 {
		d.P50Ms, d.P99Ms, d.MaxMs = quantile(samples, 0.50), quantile(samples, 0.99), samples[len(samples)-1]
	}
	return d
}

// quantile is the nearest-rank quantile of sorted samples.
func quantile(sorted []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

type latencyResult struct {
	RecordsPerSec float64 `json:"records_per_sec"` // the produce rate
	Records       int64   `json:"records"`
	Interval      string  `json:"checkpoint_interval"`
	NotWaited     dist    `json:"not_waited"`
	Waited        dist    `json:"waited"`
	Missing       int64   `json:"missing"` // rows that had not landed when the run was stopped
}

// notWaitedOffsets runs each partition's records through the operator, with
// its state in a map, and says which records were decided at arrival: those
// whose row the operator emitted while processing them. The others waited
// for the watermark. It is the same deterministic state machine the
// processor runs; with records arriving steadily no idle tick intervenes.
func notWaitedOffsets(recs []workload.Record, partitions int) [][]bool {
	out := make([][]bool, partitions)
	ops := make([]*operators.FirstSeen, partitions)
	em := make([]*arrivalRecorder, partitions)
	for p := range ops {
		em[p] = &arrivalRecorder{}
		ops[p] = operators.New(operators.Config{}, int32(p), memStore{}, em[p])
	}
	for i := range recs {
		r := &recs[i]
		p := r.Partition
		off := int64(len(out[p]))
		out[p] = append(out[p], false)
		em[p].at, em[p].decided = off, out[p]
		ops[p].Process(&operators.Record{Value: r.Value, Offset: off, Timestamp: r.Timestamp.UnixMilli()})
	}
	return out
}

type memStore map[operators.UUID]int64

func (m memStore) Get(u *operators.UUID) (int64, bool) { v, ok := m[*u]; return v, ok }
func (m memStore) Set(u *operators.UUID, v int64)      { m[*u] = v }

type arrivalRecorder struct {
	at      int64
	decided []bool
}

func (a *arrivalRecorder) Emit(r *operators.Row) {
	if r.Offset == a.at {
		a.decided[r.Offset] = true
	}
}

// commitLog collects when each checkpoint epoch committed, from the
// processor's debug log, and when it started processing.
type commitLog struct {
	mu        sync.Mutex
	committed map[uint64]time.Time
	rows      int64 // rows committed so far
	firstRows time.Time
	starting  time.Time
	ready     chan struct{}
}

func newCommitLog() *commitLog {
	return &commitLog{committed: map[uint64]time.Time{}, ready: make(chan struct{})}
}

func (c *commitLog) onLine(l logLine) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch l.Msg {
	case "starting":
		if c.starting.IsZero() {
			c.starting = l.Time
			close(c.ready)
		}
	case "checkpoint":
		c.committed[l.Epoch] = l.Time
		c.rows += l.Rows
		if l.Rows > 0 && c.firstRows.IsZero() {
			c.firstRows = l.Time
		}
	}
}

func (c *commitLog) committedRows() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rows
}

// runLatency produces a workload at a steady rate while firstseen runs, then
// measures for every row the time from its record's append (the broker's
// acknowledgement to the producer) to the commit of the checkpoint that
// wrote it.
func (b *bench) runLatency(ctx context.Context, run int, rate float64) (latencyResult, error) {
	res := latencyResult{RecordsPerSec: rate, Interval: b.o.latencyInterval.String()}
	n := int(rate * b.o.latencySeconds.Seconds())
	users := max(1000, n/5)
	recs, err := workload.Generate(workload.Config{Users: users, Days: b.o.days, Start: b.start,
		Partitions: b.o.partitions, Seed: b.o.seed + int64(run)*1000})
	if err != nil {
		return res, err
	}
	exp := newExpected(recs, b.o.partitions)
	decided := notWaitedOffsets(recs, b.o.partitions)
	res.Records = int64(len(recs))

	topic := fmt.Sprintf("latency-%d", run)
	if err := createTopic(ctx, b.brokers, topic, b.o.partitions); err != nil {
		return res, fmt.Errorf("create %s: %w", topic, err)
	}
	sink, err := b.openTable(ctx, "bench_latency")
	if err != nil {
		return res, err
	}
	defer sink.Close()

	cl := newCommitLog()
	dir := filepath.Join(b.work, fmt.Sprintf("run%d-latency", run))
	fs, err := startChild("firstseen run (latency)", dir+".log", cl.onLine, b.o.firstseen, b.runArgs(topic, "bench_latency", dir, b.o.latencyInterval)...)
	if err != nil {
		return res, err
	}
	defer fs.kill()
	select {
	case <-cl.ready:
	case <-fs.done:
		return res, fs.err
	case <-time.After(time.Minute):
		return res, fmt.Errorf("firstseen did not start within a minute (log: %s.log)", dir)
	}

	acked := make([][]int64, b.o.partitions) // unix ns of each record's acknowledgement
	for p := range acked {
		acked[p] = make([]int64, len(decided[p]))
	}
	if err := producePaced(ctx, b.brokers, topic, recs, rate, acked); err != nil {
		return res, err
	}
	// Wait for the last rows, then stop the processor as an operator would.
	deadline := time.Now().Add(2*b.o.latencyInterval + 30*time.Second)
	for cl.committedRows() < exp.rows && time.Now().Before(deadline) && !fs.exited() {
		time.Sleep(100 * time.Millisecond)
	}
	fs.signal(syscall.SIGTERM)
	if _, err := fs.wait(time.Minute); err != nil {
		return res, err
	}

	var waited, notWaited []float64
	err = eachRow(ctx, sink, func(r tableRow) {
		cl.mu.Lock()
		at, ok := cl.committed[r.epoch]
		cl.mu.Unlock()
		if !ok || int(r.partition) >= len(acked) || r.offset >= int64(len(acked[r.partition])) {
			return
		}
		ms := float64(at.UnixNano()-acked[r.partition][r.offset]) / 1e6
		if decided[r.partition][r.offset] {
			notWaited = append(notWaited, ms)
		} else {
			waited = append(waited, ms)
		}
	})
	if err != nil {
		return res, err
	}
	res.NotWaited, res.Waited = newDist(notWaited), newDist(waited)
	res.Missing = exp.rows - res.NotWaited.Count - res.Waited.Count
	return res, nil
}

// producePaced produces recs at rate records per second, in order, and
// records in acked when the broker acknowledged each.
func producePaced(ctx context.Context, brokers []string, topic string, recs []workload.Record, rate float64, acked [][]int64) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(0), kgo.MaxBufferedRecords(1_000_000))
	if err != nil {
		return err
	}
	defer cl.Close()
	var mu sync.Mutex
	var firstErr error
	ack := func(r *kgo.Record, err error) {
		now := time.Now().UnixNano()
		if err != nil {
			mu.Lock()
			firstErr = err
			mu.Unlock()
			return
		}
		acked[r.Partition][r.Offset] = now
	}
	start := time.Now()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	sent := 0
	for sent < len(recs) {
		due := min(len(recs), int(time.Since(start).Seconds()*rate))
		for ; sent < due; sent++ {
			r := &recs[sent]
			cl.Produce(ctx, &kgo.Record{Topic: topic, Partition: r.Partition, Key: r.Key, Value: r.Value, Timestamp: r.Timestamp}, ack)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	return firstErr
}
