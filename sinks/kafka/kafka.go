// Package kafka is a sink that writes enriched rows to a Kafka topic, as
// JSON (the form in sinks.AppendJSON), keyed by the user's canonical uuid
// and partitioned by it the way Kafka's default partitioner does (murmur2),
// so one user's rows stay in order on one partition.
//
// It is exactly-once by construction: the sink is [sinks.Transactional].
// Its rows go into the checkpoint's own Kafka transaction, the one that
// carries the partitions' state changes and checkpoint records to the
// changelog topic. A consumer reading with isolation.level=read_committed
// sees a row exactly when the checkpoint that wrote it is committed: a
// crash before the commit aborts the rows with the checkpoint, and the
// replay writes them again; after the commit, nothing is replayed.
//
// Each record also carries the source position in headers
// (firstseen.src_partition, firstseen.src_offset, decimal), which the JSON
// value has too, with the source record's timestamp (kafka_time). The
// record's own timestamp is when it was produced: franz-go measures a
// record's delivery timeout from its timestamp, so an old one would expire
// at once.
package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
)

// Header keys of the source position.
const (
	HeaderPartition = "firstseen.src_partition"
	HeaderOffset    = "firstseen.src_offset"
)

// Config configures the sink.
type Config struct {
	Brokers []string
	// Topic receives the rows. A missing one is created with Partitions
	// partitions (default 6) and the broker's default replication.
	Topic      string
	Partitions int32
	// KafkaOptions (TLS, SASL) are appended to the admin client's options.
	KafkaOptions []kgo.Opt
}

// Sink queues rows in the checkpoint's transaction. Its methods are safe
// for concurrent use.
type Sink struct {
	topic      string
	partitions int

	mu     sync.Mutex
	closed bool
	rec    kgo.Record
	hdrs   [2]kgo.RecordHeader
	key    []byte
	value  []byte
	num    [2][]byte
}

var _ sinks.Transactional = (*Sink)(nil)

// Open checks the topic, creating it when missing, and learns its number
// of partitions.
func Open(ctx context.Context, cfg Config) (*Sink, error) {
	if cfg.Topic == "" {
		return nil, errors.New("kafka sink: no topic")
	}
	if cfg.Partitions <= 0 {
		cfg.Partitions = 6
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}, cfg.KafkaOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka sink: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	n, err := partitions(ctx, adm, cfg.Topic)
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		resp, cerr := adm.CreateTopic(ctx, cfg.Partitions, -1, nil, cfg.Topic)
		if cerr == nil {
			cerr = resp.Err
		}
		if cerr != nil && !errors.Is(cerr, kerr.TopicAlreadyExists) {
			return nil, fmt.Errorf("kafka sink: create topic %q: %w", cfg.Topic, cerr)
		}
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if n, err = partitions(ctx, adm, cfg.Topic); err == nil || ctx.Err() != nil || time.Now().After(deadline) {
				break
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kafka sink: topic %q: %w", cfg.Topic, err)
	}
	return &Sink{topic: cfg.Topic, partitions: n}, nil
}

func partitions(ctx context.Context, adm *kadm.Client, topic string) (int, error) {
	md, err := adm.Metadata(ctx, topic)
	if err != nil {
		return 0, err
	}
	t, ok := md.Topics[topic]
	if !ok {
		return 0, kerr.UnknownTopicOrPartition
	}
	if t.Err != nil {
		return 0, t.Err
	}
	if len(t.Partitions) == 0 {
		return 0, kerr.UnknownTopicOrPartition
	}
	return len(t.Partitions), nil
}

// Topic is the topic the rows go to.
func (s *Sink) Topic() string { return s.topic }

// Transactional implements sinks.Transactional.
func (s *Sink) Transactional() {}

// Write queues one record per row of b in b.Txn. Retry needs no care: the
// rows of an attempt that crashed were aborted with its transaction.
func (s *Sink) Write(ctx context.Context, b *sinks.Batch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("kafka sink %q: write after Close", s.topic)
	}
	if b.Len() == 0 {
		return nil
	}
	if b.Txn == nil {
		return fmt.Errorf("kafka sink %q: the batch carries no transaction (the sink writes only within a checkpoint's)", s.topic)
	}
	for _, part := range b.Parts() {
		for i := range part.Len() {
			s.key = part.UUID[i].AppendCanonical(s.key[:0])
			s.value = sinks.AppendJSON(s.value[:0], part, i)
			s.num[0] = strconv.AppendInt(s.num[0][:0], int64(part.Partition[i]), 10)
			s.num[1] = strconv.AppendInt(s.num[1][:0], part.Offset[i], 10)
			s.hdrs = [2]kgo.RecordHeader{{Key: HeaderPartition, Value: s.num[0]}, {Key: HeaderOffset, Value: s.num[1]}}
			s.rec = kgo.Record{Topic: s.topic, Partition: operators.Partition(s.key, s.partitions), Key: s.key, Value: s.value,
				Headers: s.hdrs[:]}
			b.Txn.Add(&s.rec)
		}
	}
	return nil
}

// Close marks the sink closed. It is safe to call twice.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}
