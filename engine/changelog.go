package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/state"
)

// The changelog topic (<group>-state) has one partition per input
// partition and is compacted: it holds every partition's state, so that a
// replica that gains a partition rebuilds it from Kafka (restore.go). Its
// record format is state's (state/changelog.go, docs/state-format.md).
//
// A checkpoint writes it twice, each time in one Kafka transaction of its
// own transactional producer: the intents of the partitions with output
// before the sink write, and the state changes with each partition's
// checkpoint after the dead letters (checkpoint.go). A replica restarted
// with the same instance id fences its predecessor's producer, which aborts
// an open transaction at once; otherwise the broker aborts it after
// changelogTxnTimeout.
//
// Both transactions also commit the consumer group's offsets of the
// partitions they cover, under this process's member id, generation and
// instance id in the group (KIP-447's TxnOffsetCommit). The group
// coordinator refuses that commit from a member it no longer has, so a
// replica whose session expired while it was paused, and whose partitions
// went to another, cannot commit an intent, and so writes no row, nor a
// checkpoint record behind the new owner's back (fence.go).

// changelogTxnTimeout bounds how long a transaction of a dead replica can
// hold back the restore of its partitions (the broker aborts it then). A
// checkpoint's transactions last as long as producing its changes, well
// under a second at the default buffer size.
const changelogTxnTimeout = 15 * time.Second

// ensureTopic creates a topic with partitions partitions when it is missing
// and checks the partition count of an existing one.
func ensureTopic(ctx context.Context, adm *kadm.Client, topic string, partitions int, configs map[string]*string, why string) error {
	_, err := adm.CreateTopic(ctx, int32(partitions), -1, configs, topic)
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("kafka: cannot create the %s topic %q: %w", why, topic, err)
	}
	td, err := adm.ListTopics(ctx, topic)
	if err != nil {
		return fmt.Errorf("kafka: cannot read the %s topic %q: %w", why, topic, err)
	}
	d, ok := td[topic]
	if !ok || d.Err != nil {
		return fmt.Errorf("kafka: the %s topic %q cannot be read: %v", why, topic, d.Err)
	}
	if n := len(d.Partitions); n != partitions {
		return fmt.Errorf("kafka: the %s topic %q has %d partitions, but the input has %d: it must have as many "+
			"(each input partition's state is in the partition of the same number); delete it only if the state it "+
			"holds can be lost, or use another --group", why, topic, n, partitions)
	}
	return nil
}

// ChangelogConfigs are the changelog topic's settings: compacted, and
// deletions (released held records) kept for a week, so that a replica
// that resumes a partition's state from an older position still sees them.
func ChangelogConfigs() map[string]*string {
	compact, week := "compact", "604800000"
	return map[string]*string{"cleanup.policy": &compact, "delete.retention.ms": &week}
}

// changelogProducer writes the changelog in transactions.
type changelogProducer struct {
	cl    *kgo.Client
	txnID string
	topic string
	// fence, once set, makes every transaction commit the group's offsets
	// as the group member that owns them.
	fence *groupFence
	recs  []kgo.Record // reused across transactions
	// arena holds the keys and values of recs, in chunks that are never
	// moved (a record's slices point into them); reused too.
	arena [][]byte
	chunk int
}

const arenaChunk = 1 << 20

// copy returns a copy of b in the arena.
func (c *changelogProducer) copy(b []byte) []byte {
	if b == nil {
		return nil
	}
	for {
		if c.chunk == len(c.arena) {
			c.arena = append(c.arena, make([]byte, 0, max(arenaChunk, len(b))))
		}
		a := c.arena[c.chunk]
		if cap(a)-len(a) >= len(b) {
			n := len(a)
			c.arena[c.chunk] = append(a, b...)
			return c.arena[c.chunk][n : n+len(b) : n+len(b)]
		}
		c.chunk++
	}
}

func newChangelogProducer(cfg *Config, writer string) (*changelogProducer, error) {
	txnID := cfg.Group + "-state-" + writer
	opts := append([]kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.TransactionalID(txnID),
		kgo.TransactionTimeout(changelogTxnTimeout),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(0),
		kgo.WithLogger(KafkaLogger(cfg.Logger)),
	}, cfg.KafkaOptions...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client for the changelog: %w", err)
	}
	return &changelogProducer{cl: cl, txnID: txnID, topic: cfg.ChangelogTopic}, nil
}

// add queues a record for the next write, copying key and value.
func (c *changelogProducer) add(partition int32, key, value []byte) {
	c.recs = append(c.recs, kgo.Record{Topic: c.topic, Partition: partition, Key: c.copy(key), Value: c.copy(value)})
}

// Add queues a record of a transactional sink (sinks.Txn) for the next
// write, copying its key, value and headers.
func (c *changelogProducer) Add(r *kgo.Record) {
	rec := kgo.Record{Topic: r.Topic, Partition: r.Partition, Key: c.copy(r.Key), Value: c.copy(r.Value), Timestamp: r.Timestamp}
	if len(r.Headers) > 0 {
		rec.Headers = make([]kgo.RecordHeader, len(r.Headers))
		for i, h := range r.Headers {
			rec.Headers[i] = kgo.RecordHeader{Key: h.Key, Value: c.copy(h.Value)}
		}
	}
	c.recs = append(c.recs, rec)
}

// bytes is the size of the queued records' keys and values.
func (c *changelogProducer) bytes() int {
	n := 0
	for i := range c.recs {
		n += len(c.recs[i].Key) + len(c.recs[i].Value)
	}
	return n
}

// write produces the queued records in one transaction and commits it,
// together with the group offsets given (input partition to next offset)
// as group member owner when the producer has a fence. It returns, per
// partition, the offset after the last record written there. An error that
// wraps errFenced or errSessionLost means that this process is no longer
// the member that owns the partitions: the transaction was aborted, none
// of it is visible.
func (c *changelogProducer) write(ctx context.Context, owner string, offsets map[int32]int64) (map[int32]int64, error) {
	defer func() {
		clear(c.recs)
		c.recs = c.recs[:0]
		for i := range c.arena {
			c.arena[i] = c.arena[i][:0]
		}
		c.chunk = 0
	}()
	if len(c.recs) == 0 {
		return nil, nil
	}
	if err := c.cl.BeginTransaction(); err != nil {
		return nil, fencedWriter(fmt.Errorf("changelog: begin transaction: %w", err))
	}
	next := map[int32]int64{}
	var firstErr error
	done := make(chan struct{})
	pending := len(c.recs)
	for i := range c.recs {
		c.cl.Produce(ctx, &c.recs[i], func(r *kgo.Record, err error) {
			// Promises run one at a time, in order.
			if err != nil && firstErr == nil {
				firstErr = err
			}
			if err == nil && r.Topic == c.topic && r.Offset+1 > next[r.Partition] {
				next[r.Partition] = r.Offset + 1
			}
			if pending--; pending == 0 {
				close(done)
			}
		})
	}
	select {
	case <-done:
	case <-ctx.Done():
		<-done // producing fails once ctx is done
	}
	// The offsets last, right before the commit: the broker's check of the
	// membership is then as close as it can be to the sink write that the
	// committed intents allow.
	var fenceErr error
	if firstErr == nil && c.fence != nil && len(offsets) > 0 {
		fenceErr = c.fence.commitOffsets(ctx, c, owner, offsets)
	}
	commit := kgo.TryCommit
	if firstErr != nil || fenceErr != nil {
		commit = kgo.TryAbort
	}
	if err := c.cl.EndTransaction(ctx, commit); err != nil {
		// Not aborted for sure: whatever the group said, the producer
		// is in no state to go on.
		if fenceErr != nil {
			return nil, fencedWriter(fmt.Errorf("changelog %q: end transaction: %w (after: %v)", c.topic, err, fenceErr))
		}
		return nil, fencedWriter(fmt.Errorf("changelog %q: end transaction: %w", c.topic, errors.Join(firstErr, err)))
	}
	if fenceErr != nil {
		return nil, fencedWriter(fenceErr)
	}
	if firstErr != nil {
		return nil, fencedWriter(fmt.Errorf("changelog %q: produce: %w", c.topic, firstErr))
	}
	return next, nil
}

func (c *changelogProducer) close() { c.cl.Close() }

// restoreWant is one partition to restore: from its database's position to
// the changelog's end.
type restoreWant struct {
	partition int32
	db        *state.DB
	from, to  int64
	r         *state.Restorer
	next      int64
}

// restore reads the changelog partitions of wants from their positions to
// the ends listed when it starts, applying every committed record to the
// partitions' databases, and finishes each restore with header h. It
// returns the number of user records applied.
func (p *pipeline) restore(ctx context.Context, wants []*restoreWant, h state.Header) (int64, error) {
	ends, err := p.adm.ListEndOffsets(ctx, p.cfg.ChangelogTopic)
	if err != nil {
		return 0, fmt.Errorf("changelog %q: list end offsets: %w", p.cfg.ChangelogTopic, err)
	}
	offsets := map[int32]kgo.Offset{}
	var users int64
	open := 0
	for _, w := range wants {
		e, ok := ends.Lookup(p.cfg.ChangelogTopic, w.partition)
		if !ok || e.Err != nil {
			return 0, fmt.Errorf("changelog %q partition %d: list end offset: %v", p.cfg.ChangelogTopic, w.partition, e.Err)
		}
		w.to, w.next = e.Offset, w.from
		if w.to < w.from {
			return 0, fmt.Errorf("changelog %q partition %d ends at offset %d, but the state in %s reflects it up to %d: "+
				"was the changelog topic deleted? Its state is lost to the other replicas; start this partition's state "+
				"again (remove the directory) and bootstrap", p.cfg.ChangelogTopic, w.partition, w.to, w.db.Dir(), w.from)
		}
		if w.r, err = w.db.NewRestorer(w.partition); err != nil {
			return 0, err
		}
		if w.to > w.from {
			offsets[w.partition] = kgo.NewOffset().At(w.from)
			open++
		}
	}
	defer func() {
		for _, w := range wants {
			if w.r != nil {
				w.r.Abort()
			}
		}
	}()
	byPart := map[int32]*restoreWant{}
	for _, w := range wants {
		byPart[w.partition] = w
	}
	var remaining int64
	for _, w := range wants {
		remaining += w.to - w.from
	}
	p.status.RestoreRemaining.Add(remaining)
	defer func() { p.status.RestoreRemaining.Add(-remaining) }()
	if open > 0 {
		opts := append([]kgo.Opt{
			kgo.SeedBrokers(p.cfg.Brokers...),
			kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{p.cfg.ChangelogTopic: offsets}),
			kgo.FetchIsolationLevel(kgo.ReadCommitted()),
			kgo.KeepControlRecords(),
			// Small fetches: the restored records are copied into the
			// loader at once, and a restore must fit beside a running
			// processor (with 16 MiB, 10M users peaked at 940 MB RSS;
			// with these, 255 MB, and faster).
			kgo.FetchMaxPartitionBytes(1 << 20),
			kgo.FetchMaxBytes(4 << 20),
			kgo.WithLogger(KafkaLogger(p.log)),
		}, p.cfg.KafkaOptions...)
		cl, err := kgo.NewClient(opts...)
		if err != nil {
			return 0, fmt.Errorf("kafka client for the restore: %w", err)
		}
		defer cl.Close()
		for open > 0 {
			fs := cl.PollFetches(ctx)
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			var ferr error
			fs.EachError(func(_ string, part int32, err error) {
				var ke *kerr.Error
				if errors.As(err, &ke) && !ke.Retriable {
					ferr = fmt.Errorf("changelog %q partition %d: %w", p.cfg.ChangelogTopic, part, err)
				}
			})
			if ferr != nil {
				return 0, ferr
			}
			var aerr error
			var read int64
			fs.EachRecord(func(r *kgo.Record) {
				w := byPart[r.Partition]
				if aerr != nil || w.next >= w.to {
					return
				}
				read += r.Offset + 1 - w.next
				w.next = r.Offset + 1
				if !r.Attrs.IsControl() {
					if err := w.r.Apply(r.Key, r.Value); err != nil {
						aerr = fmt.Errorf("changelog %q partition %d offset %d: %w", p.cfg.ChangelogTopic, r.Partition, r.Offset, err)
					}
				}
				if w.next >= w.to {
					open--
				}
			})
			p.status.RestoreRemaining.Add(-read)
			remaining -= read
			if aerr != nil {
				return 0, aerr
			}
		}
	}
	for _, w := range wants {
		st, err := w.r.Finish(ctx, w.to, h)
		w.r = nil
		if err != nil {
			return users, fmt.Errorf("restore partition %d into %s: %w", w.partition, w.db.Dir(), err)
		}
		users += st.Users
	}
	return users, nil
}
