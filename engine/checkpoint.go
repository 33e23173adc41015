package engine

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/state"
)

// checkpoint takes one checkpoint; see the package documentation and
// docs/checkpoints.md. retry says the epoch is the replay of one that a
// crashed run may have partly written.
//
// A failed checkpoint ends the run: the tasks have moved on from the
// handed-over epoch, so the next start must replay it from the last
// committed checkpoint.
func (p *pipeline) checkpoint(ctx context.Context, retry bool) error {
	began := time.Now()
	epoch := p.header.Epoch + 1
	reply := make(chan *snapshot, len(p.tasks))
	for _, t := range p.tasks {
		t.ctl <- control{barrier: reply}
	}
	snaps := make([]*snapshot, 0, len(p.tasks))
	for range p.tasks {
		snaps = append(snaps, <-reply)
	}
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].partition < snaps[j].partition })
	defer func() {
		p.out.Reset() // lets go of the tasks' row buffers before they get them back
		for _, s := range snaps {
			s.batch.Close()
			s.task.ctl <- control{committed: s.rows}
		}
		select { // a partition that filled up during this checkpoint asked for it
		case <-p.full:
		default:
		}
	}()

	// The sink reads the tasks' row buffers in partition order, not a copy.
	p.out.Reset()
	p.out.Epoch, p.out.Retry = epoch, retry
	var dead []*kgo.Record
	batches := make([]*state.Batch, 0, len(snaps))
	for _, s := range snaps {
		p.out.Join(s.rows)
		dead = append(dead, s.dead...)
		batches = append(batches, s.batch)
	}
	fail := func(err error) error {
		return fmt.Errorf("checkpoint %d not taken, the next start replays from checkpoint %d: %w", epoch, p.header.Epoch, err)
	}
	output := p.out.Len() > 0 || len(dead) > 0
	if output {
		// The intent makes a crash from here on recoverable without
		// duplicates: it names the input this epoch covers, and where its
		// dead letters will start.
		in := state.Intent{Epoch: epoch, Partitions: make(map[int32]state.IntentPartition, len(snaps))}
		for _, s := range snaps {
			in.Partitions[s.partition] = state.IntentPartition{Next: s.next, Advances: s.advances}
		}
		switch {
		case retry:
			in.DeadLetterEnds = p.recoveredDeadLetterEnds
		case len(dead) > 0:
			ends, err := listOffsets(ctx, p.adm.ListEndOffsets, p.cfg.DLQTopic)
			if err != nil {
				return fail(fmt.Errorf("list the end offsets of dead-letter topic %q: %w", p.cfg.DLQTopic, err))
			}
			in.DeadLetterEnds = ends
		}
		if err := p.db.WriteIntent(&in); err != nil {
			return fail(fmt.Errorf("write the intent to %s: %w", p.cfg.StateDir, err))
		}
	}
	if err := p.crashPoint("before sink write", output); err != nil {
		return fail(err)
	}
	if err := p.retry(ctx, "sink write", func() error { return p.cfg.Sink.Write(ctx, &p.out) }, p.cfg.IsRetryable); err != nil {
		return fail(err)
	}
	if err := p.crashPoint("after sink write", output); err != nil {
		return fail(err)
	}
	if retry && len(dead) > 0 {
		landed, err := p.deadLettersSince(ctx, p.recoveredDeadLetterEnds)
		if err != nil {
			return fail(fmt.Errorf("read which dead letters of epoch %d already landed: %w", epoch, err))
		}
		kept := dead[:0]
		for _, r := range dead {
			if !landed[deadLetterKey(r)] {
				kept = append(kept, r)
			}
		}
		dead = kept
	}
	if err := p.produceDeadLetters(ctx, dead); err != nil {
		return fail(err)
	}
	if err := p.crashPoint("after dead letters", output); err != nil {
		return fail(err)
	}
	h := p.header
	h.Epoch, h.Time = epoch, time.Now()
	if err := p.db.Commit(h, batches...); err != nil {
		return fail(fmt.Errorf("commit to %s: %w", p.cfg.StateDir, err))
	}
	p.header = h

	offsets := kadm.Offsets{}
	held := 0
	for _, s := range snaps {
		offsets.Add(kadm.Offset{Topic: p.cfg.Topic, Partition: s.partition, At: s.next, LeaderEpoch: -1})
		held += s.held
	}
	p.held = held
	if _, err := p.adm.CommitOffsets(ctx, p.cfg.Group, offsets); err != nil && ctx.Err() == nil {
		p.log.Debug("committing group offsets for lag monitoring failed", "group", p.cfg.Group, "err", err)
	}
	p.log.Debug("checkpoint", "epoch", epoch, "rows", p.out.Len(), "dead_letters", len(dead), "held", held,
		"took", time.Since(began))
	if p.cfg.SnapshotInterval > 0 && time.Since(p.snapshotAt) >= p.cfg.SnapshotInterval {
		p.snapshotAt = time.Now()
		if err := p.db.PublishSnapshot(); err != nil {
			p.log.Warn("publishing a state snapshot for `firstseen state` failed", "err", err)
		}
	}
	return nil
}

// produceDeadLetters produces the dead letters and waits for the broker's
// acknowledgement. A retry resends only the records that failed. An error
// the broker will repeat (a record too large for the dead-letter topic, no
// authorization) ends the run rather than drop the record.
func (p *pipeline) produceDeadLetters(ctx context.Context, dead []*kgo.Record) error {
	return p.retry(ctx, "dead-letter produce", func() error {
		var failed []*kgo.Record
		var firstErr error
		for _, r := range p.cl.ProduceSync(ctx, dead...) {
			if r.Err != nil {
				failed = append(failed, r.Record)
				if firstErr == nil {
					firstErr = fmt.Errorf("to %s, of source partition %d offset %s: %w", r.Record.Topic,
						r.Record.Partition, headerValue(r.Record, HeaderOffset), r.Err)
				}
			}
		}
		dead = failed
		return firstErr
	}, func(err error) bool {
		var ke *kerr.Error
		return !errors.As(err, &ke) || ke.Retriable
	})
}

func headerValue(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return "?"
}

// crashPoint lets tests stop a checkpoint that has output at a named point,
// as a crash would. It is a no-op unless Config.Testing sets a hook.
func (p *pipeline) crashPoint(name string, output bool) error {
	if !output || p.cfg.Testing == nil || p.cfg.Testing.CrashAt == nil {
		return nil
	}
	return p.cfg.Testing.CrashAt(name)
}

// retry calls fn until it succeeds, ctx ends, or retryable says no.
func (p *pipeline) retry(ctx context.Context, what string, fn func() error, retryable func(error) bool) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			if attempt > 1 {
				p.log.Info(what+" recovered", "attempts", attempt)
			}
			return nil
		}
		if retryable != nil && !retryable(err) {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w (gave up: %v)", what, err, ctx.Err())
		}
		p.log.Warn(what+" failed; retrying (input is paused until it succeeds)", "attempt", attempt, "retry_in", backoff, "err", err)
		jitter := time.Duration(rand.Int64N(int64(backoff) / 5))
		select {
		case <-time.After(backoff + jitter):
		case <-ctx.Done():
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}
