package engine

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/state"
)

// checkpoint takes one checkpoint; see the package documentation and
// docs/checkpoints.md.
//
// A failed checkpoint ends the run: the tasks have moved on from the
// handed-over epoch, so the next start must replay it from the last
// committed checkpoint. The exception is errSessionLost (see
// tryCheckpoint): the tasks are about to be dropped.
//
// Nothing is written unless the group still has this process as the
// member its partitions were assigned to: no checkpoint is taken once the
// group client has reported the session lost, and both changelog
// transactions commit the group's offsets under the membership, which the
// group coordinator refuses from a member it no longer has (fence.go).
func (p *pipeline) checkpoint(ctx context.Context) error {
	err := p.takeCheckpoint(ctx)
	if err != nil && !errors.Is(err, errSessionLost) {
		p.status.CheckpointFailures.Add(1)
	}
	return err
}

func (p *pipeline) takeCheckpoint(ctx context.Context) error {
	if len(p.tasks) > 0 && p.clog.fence != nil {
		if err := p.clog.fence.check(p.member); err != nil {
			return err
		}
	}
	began := time.Now()
	epoch := p.header.Epoch + 1
	reply := make(chan *snapshot, len(p.tasks))
	for _, t := range p.tasks {
		t.ctl <- control{barrier: reply}
	}
	snaps := make([]*snapshot, 0, len(p.tasks))
	for range p.tasks {
		if s := <-reply; s != nil {
			snaps = append(snaps, s)
		}
	}
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].partition < snaps[j].partition })
	next := map[int32]int64{} // changelog ends after this checkpoint
	defer func() {
		p.out.Reset() // lets go of the tasks' row buffers before they get them back
		for _, s := range snaps {
			s.batch.Close()
			cn := s.changelogNext
			if n, ok := next[s.partition]; ok {
				cn = n
			}
			s.task.ctl <- control{committed: &committed{rows: s.rows, changelogNext: cn}}
		}
		select { // a partition that filled up during this checkpoint asked for it
		case <-p.full:
		default:
		}
	}()

	// The sink reads the tasks' row buffers in partition order, not a copy.
	p.out.Reset()
	p.out.Epoch, p.out.Writer = epoch, p.writer
	var dead, unsureDead []*kgo.Record
	var unsureEnds map[int32]int64
	for _, s := range snaps {
		p.out.Join(s.rows)
		if s.unsure == nil {
			dead = append(dead, s.dead...)
			continue
		}
		p.out.Retry = true
		p.out.Unsure = append(p.out.Unsure, *s.unsure)
		unsureDead = append(unsureDead, s.dead...)
		if unsureEnds == nil {
			unsureEnds = map[int32]int64{}
		}
		for part, off := range s.deadLetterEnds {
			if cur, ok := unsureEnds[part]; !ok || off < cur {
				unsureEnds[part] = off
			}
		}
	}
	fail := func(err error) error {
		return fmt.Errorf("checkpoint %d not taken, the next start replays from the last one: %w", epoch, err)
	}
	output := p.out.Len() > 0 || len(dead) > 0 || len(unsureDead) > 0
	if output {
		// The intents make a crash from here on recoverable without
		// duplicates, by this process or by the next owner of a partition:
		// each names the input the epoch covers, and where its dead
		// letters will start.
		var ends map[int32]int64
		offsets := map[int32]int64{} // the input the intents cover, for the group
		if len(dead) > 0 {
			var err error
			if ends, err = listOffsets(ctx, p.adm.ListEndOffsets, p.cfg.DLQTopic); err != nil {
				return fail(fmt.Errorf("list the end offsets of dead-letter topic %q: %w", p.cfg.DLQTopic, err))
			}
		}
		for _, s := range snaps {
			if s.rows.Len() == 0 && len(s.dead) == 0 {
				continue
			}
			in := state.Intent{Epoch: epoch, Writer: p.writer, DeadLetterEnds: ends,
				Partitions: map[int32]state.IntentPartition{s.partition: {Next: s.next, Advances: s.advances}}}
			if s.unsure != nil {
				in.DeadLetterEnds = s.deadLetterEnds // where the first attempt's dead letters may start
			}
			k, v := state.EncodeChangelogIntent(&in)
			p.clog.add(s.partition, k, v)
			offsets[s.partition] = s.next
		}
		if _, err := p.clog.write(ctx, p.member, offsets); err != nil {
			return fail(fmt.Errorf("write the intents: %w", err))
		}
	}
	if err := p.crashPoint("before sink write", output); err != nil {
		return fail(err)
	}
	attempts := 0
	for _, sk := range p.cfg.Sinks {
		if _, ok := sk.Sink.(sinks.Transactional); ok {
			continue // written into the state transaction below
		}
		attempt := 0
		if err := p.retry(ctx, sk.Name+" sink write", func() error {
			attempt++
			t0 := time.Now()
			err := sk.Sink.Write(ctx, &p.out)
			p.observer.SinkWrite(sk.Name, p.out.Len(), time.Since(t0), attempt, err)
			return err
		}, sk.IsRetryable); err != nil {
			return fail(err)
		}
		attempts += attempt
	}
	if err := p.crashPoint("after sink write", output); err != nil {
		return fail(err)
	}
	if len(unsureDead) > 0 {
		landed, err := p.deadLettersSince(ctx, unsureEnds)
		if err != nil {
			return fail(fmt.Errorf("read which dead letters of an unfinished epoch already landed: %w", err))
		}
		for _, r := range unsureDead {
			if !landed[deadLetterKey(r)] {
				dead = append(dead, r)
			}
		}
	}
	if err := p.produceDeadLetters(ctx, dead); err != nil {
		return fail(err)
	}
	if err := p.crashPoint("after dead letters", output); err != nil {
		return fail(err)
	}

	// The state changes, with each partition's checkpoint, go to the
	// changelog in one transaction, with the group's offsets (for lag
	// tools; recovery never reads them), then into the partitions'
	// databases.
	var users int
	offsets := make(map[int32]int64, len(snaps))
	for _, s := range snaps {
		offsets[s.partition] = s.next
		if !s.changed {
			continue
		}
		users += s.batch.Users()
		s.batch.EachChangelogRecord(epoch, p.writer, func(key, value []byte) {
			p.clog.add(s.partition, key, value)
		})
	}
	// Transactional sinks queue their rows in the same transaction: they
	// become visible exactly when this checkpoint is committed.
	if p.out.Len() > 0 {
		for _, sk := range p.cfg.Sinks {
			if _, ok := sk.Sink.(sinks.Transactional); !ok {
				continue
			}
			t0 := time.Now()
			p.out.Txn = p.clog
			err := sk.Sink.Write(ctx, &p.out)
			p.out.Txn = nil
			p.observer.SinkWrite(sk.Name, p.out.Len(), time.Since(t0), 1, err)
			if err != nil {
				return fail(fmt.Errorf("%s sink: %w", sk.Name, err))
			}
			attempts++
		}
	}
	changelogBytes := p.clog.bytes()
	written, err := p.clog.write(ctx, p.member, offsets)
	if err != nil {
		return fail(fmt.Errorf("write the state changes: %w", err))
	}
	if err := p.crashPoint("after changelog", output); err != nil {
		return fail(err)
	}
	h := p.header
	h.Epoch, h.Time = epoch, time.Now()
	errs := make([]error, len(snaps))
	var wg sync.WaitGroup
	for i, s := range snaps {
		if n, ok := written[s.partition]; ok {
			next[s.partition] = n
			s.batch.SetChangelogNext(s.partition, n)
		}
		wg.Go(func() { errs[i] = s.task.db.Commit(h, s.batch) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fail(fmt.Errorf("commit to %s: %w", p.cfg.StateDir, err))
	}
	p.header = h
	for _, s := range snaps {
		s.task.pub.Written.Add(int64(s.rows.Len()))
		if s.changed {
			s.task.pub.StateBytes.Store(s.task.db.DiskBytes())
		}
	}
	p.checkpoints++
	p.status.Checkpoints.Store(p.checkpoints)
	p.status.LastCheckpoint.Store(h.Time.UnixMilli())
	if p.status.Restoring.Load() == 0 {
		p.status.Ready.Store(true)
	}

	held := 0
	for _, s := range snaps {
		held += s.held
	}
	p.held = held
	took := time.Since(began)
	p.observer.CheckpointTaken(took, p.out.Len(), changelogBytes)
	p.log.Debug("checkpoint", "epoch", epoch, "partitions", len(snaps), "rows", p.out.Len(), "dead_letters", len(dead),
		"held", held, "changelog_users", users, "changelog_bytes", changelogBytes, "sink_attempts", attempts,
		"took", took)
	if p.cfg.SnapshotInterval > 0 && time.Since(p.snapshotAt) >= p.cfg.SnapshotInterval {
		p.snapshotAt = time.Now()
		for _, s := range snaps {
			if err := s.task.db.PublishSnapshot(); err != nil {
				p.log.Warn("publishing a state snapshot for `firstseen state` failed", "err", err)
			}
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

// retry calls fn until it succeeds, ctx ends, or retryable says no. It
// stops with errSessionLost, before any attempt, once the group client has
// reported the session lost: the partitions' next owner writes what is
// missing, and an attempt of this one could land after it looked.
func (p *pipeline) retry(ctx context.Context, what string, fn func() error, retryable func(error) bool) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		p.status.Alive.Store(time.Now().UnixMilli())
		if p.lost.Load() {
			return fmt.Errorf("%s: %w", what, errSessionLost)
		}
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
