package engine_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
)

// blockingSink blocks a write while blocked is set, as a call that never
// returns would, and fails the first failures writes, as an outage would.
type blockingSink struct {
	memSink
	blocked  atomic.Bool
	failures atomic.Int32
}

func (s *blockingSink) Write(ctx context.Context, b *sinks.Batch) error {
	for s.blocked.Load() {
		time.Sleep(10 * time.Millisecond)
	}
	if s.failures.Add(-1) >= 0 {
		return errors.New("simulated outage")
	}
	return s.memSink.Write(ctx, b)
}

// events records what an Observer is told.
type events struct {
	mu                          sync.Mutex
	checkpoints, rows, attempts int
	failedAttempts, retries     int
}

func (e *events) CheckpointTaken(_ time.Duration, rows, _ int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.checkpoints++
	e.rows += rows
}

func (e *events) SinkWrite(_ string, _ int, _ time.Duration, attempt int, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.attempts++
	if attempt > 1 {
		e.retries++
	}
	if err != nil {
		e.failedAttempts++
	}
}

// TestStatusAndObserver: the status shows each partition's position, lag
// and counts, the observer sees every checkpoint and sink attempt (retries
// and errors included), and Alive stops moving while a checkpoint is stuck
// in a call that does not return (what /healthz reports), and moves again
// when it returns.
func TestStatusAndObserver(t *testing.T) {
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	c, produce := oneTopic(t, base)
	produce(0, 5)
	sink := &blockingSink{}
	sink.failures.Store(2)
	st, obs := &engine.Status{}, &events{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := engine.Run(ctx, engine.Config{Brokers: c.ListenAddrs(), Topic: topic, StateDir: t.TempDir(), Sink: sink,
			CheckpointInterval: 100 * time.Millisecond, Operator: operators.Config{IdleTimeout: time.Hour},
			Status: st, Observer: obs})
		done <- err
	}()
	waitFor(t, func() bool { return len(sink.all()) == 5 })
	var ps *engine.PartitionStatus
	st.EachPartition(func(p *engine.PartitionStatus) { ps = p })
	waitFor(t, func() bool { return ps.Written.Load() == 5 })
	if ps.Records.Load() != 5 || ps.NextOffset.Load() != 5 || ps.Lag() != 0 || ps.StateBytes.Load() == 0 ||
		ps.Watermark.Load() != base.Add(4*time.Second-10*time.Minute).UnixMilli() {
		t.Errorf("partition status: records %d, next %d, lag %d, state %d bytes, watermark %d",
			ps.Records.Load(), ps.NextOffset.Load(), ps.Lag(), ps.StateBytes.Load(), ps.Watermark.Load())
	}
	if !st.Ready.Load() || st.Partitions.Load() != 1 || st.Checkpoints.Load() == 0 {
		t.Errorf("ready %v, partitions %d, checkpoints %d", st.Ready.Load(), st.Partitions.Load(), st.Checkpoints.Load())
	}
	obs.mu.Lock()
	if obs.failedAttempts != 2 || obs.retries < 2 || obs.rows != 5 {
		t.Errorf("observer: %d failed attempts, %d retries, %d rows; want 2, >= 2, 5", obs.failedAttempts, obs.retries, obs.rows)
	}
	obs.mu.Unlock()

	// Wedge the next checkpoint that has rows.
	sink.blocked.Store(true)
	produce(5, 6)
	waitFor(t, func() bool { return ps.Records.Load() == 6 })
	time.Sleep(300 * time.Millisecond) // the checkpoint starts and blocks
	stuck := st.Alive.Load()
	time.Sleep(500 * time.Millisecond)
	if st.Alive.Load() != stuck {
		t.Errorf("Alive moved while the checkpoint was stuck")
	}
	if since := time.Since(time.UnixMilli(stuck)); since < 400*time.Millisecond {
		t.Errorf("Alive is %s old while the checkpoint is stuck", since)
	}
	sink.blocked.Store(false)
	waitFor(t, func() bool {
		return time.Since(time.UnixMilli(st.Alive.Load())) < 200*time.Millisecond && ps.Written.Load() == 6
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if f := st.CheckpointFailures.Load(); f != 0 {
		t.Errorf("%d checkpoint failures", f)
	}
}
