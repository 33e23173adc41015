package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// topicInfo is what discover learns about the input topic.
type topicInfo struct {
	id         [16]byte
	partitions []int32
	starts     map[int32]int64 // log start offsets
	ends       map[int32]int64 // last stable offsets
}

// discover returns the topic's partitions and their log bounds, and creates
// the dead-letter topic when it is missing.
func (p *pipeline) discover(ctx context.Context) (topicInfo, error) {
	var ti topicInfo
	brokers := strings.Join(p.cfg.Brokers, ",")
	opts := append([]kgo.Opt{kgo.SeedBrokers(p.cfg.Brokers...), kgo.RetryTimeout(30 * time.Second),
		kgo.WithLogger(KafkaLogger(p.log))}, p.cfg.KafkaOptions...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return ti, fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	topics, err := adm.ListTopics(mctx, p.cfg.Topic)
	if err != nil {
		return ti, fmt.Errorf("kafka %s: cannot read metadata: %w", brokers, err)
	}
	td, ok := topics[p.cfg.Topic]
	if !ok || errors.Is(td.Err, kerr.UnknownTopicOrPartition) {
		return ti, fmt.Errorf("kafka %s: topic %q does not exist", brokers, p.cfg.Topic)
	}
	if td.Err != nil {
		return ti, fmt.Errorf("kafka topic %q: %w", p.cfg.Topic, td.Err)
	}
	ti.id = td.ID
	ti.partitions = td.Partitions.Numbers()
	sort.Slice(ti.partitions, func(i, j int) bool { return ti.partitions[i] < ti.partitions[j] })

	// The dead-letter topic is created with the input's partition count
	// when missing; a broker that forbids it gets a warning, and producing
	// will tell if the topic really is missing.
	if _, err := adm.CreateTopic(mctx, int32(len(ti.partitions)), -1, nil, p.cfg.DLQTopic); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		p.log.Warn("cannot create the dead-letter topic", "topic", p.cfg.DLQTopic, "err", err)
	}
	if err := ensureTopic(mctx, adm, p.cfg.ChangelogTopic, len(ti.partitions), ChangelogConfigs(), "changelog"); err != nil {
		return ti, err
	}
	if ti.ends, err = listOffsets(mctx, adm.ListCommittedOffsets, p.cfg.Topic); err != nil {
		return ti, fmt.Errorf("kafka topic %q: list end offsets: %w", p.cfg.Topic, err)
	}
	if ti.starts, err = listOffsets(mctx, adm.ListStartOffsets, p.cfg.Topic); err != nil {
		return ti, fmt.Errorf("kafka topic %q: list start offsets: %w", p.cfg.Topic, err)
	}
	return ti, nil
}

// listOffsets calls a kadm offset listing and fails on any partition's error.
func listOffsets(ctx context.Context, list func(context.Context, ...string) (kadm.ListedOffsets, error), topic string) (map[int32]int64, error) {
	lo, err := list(ctx, topic)
	if err != nil {
		return nil, err
	}
	if err := lo.Error(); err != nil {
		return nil, err
	}
	out := map[int32]int64{}
	lo.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
	return out, nil
}

// poll fetches records and hands each partition's records to its task. It
// returns nil when ctx ends, and an error when fetching fails for good (an
// authorization failure, say); transient errors are logged and retried by
// the client.
func (p *pipeline) poll(ctx context.Context) error {
	lastErr := map[int32]string{}
	for {
		fs := p.cl.PollRecords(ctx, 10_000)
		if fs.IsClientClosed() || ctx.Err() != nil {
			return nil
		}
		var fatal error
		fs.EachError(func(topic string, part int32, err error) {
			if errors.Is(err, context.Canceled) || errors.As(err, new(*kgo.ErrGroupSession)) {
				return // a lost session is handled by onLost; the client rejoins
			}
			var ke *kerr.Error
			if errors.As(err, &ke) && !ke.Retriable {
				fatal = fmt.Errorf("kafka: fetching %s partition %d failed for good: %w", topic, part, err)
			}
			if msg := err.Error(); msg != lastErr[part] {
				p.log.Warn("fetch error; retrying", "topic", topic, "partition", part, "err", err)
				lastErr[part] = msg
			}
		})
		if fatal != nil {
			return fatal
		}
		stopped := false
		byPart := *p.live.Load()
		fs.EachPartition(func(fp kgo.FetchTopicPartition) {
			t := byPart[fp.Partition]
			if t == nil || stopped {
				return
			}
			if fp.Err == nil {
				delete(lastErr, fp.Partition)
				t.setEnd(fp.LastStableOffset, p.cfg.Now())
			}
			if len(fp.Records) == 0 {
				return
			}
			select {
			case t.in <- fp.Records:
			case <-ctx.Done():
				stopped = true
			}
		})
		if stopped {
			return nil
		}
	}
}

// watchEnds keeps every task's view of its log end fresh. Idleness is
// judged against it: a partition counts as caught up only while a recent
// listing says so, so a broker outage or a stuck fetch never looks like an
// idle partition.
func (p *pipeline) watchEnds(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	adm := kadm.NewClient(p.cl)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		lctx, cancel := context.WithTimeout(ctx, every)
		lo, err := adm.ListCommittedOffsets(lctx, p.cfg.Topic)
		cancel()
		if err != nil {
			continue
		}
		now := p.cfg.Now()
		live := *p.live.Load()
		lo.Each(func(o kadm.ListedOffset) {
			if t := live[o.Partition]; t != nil && o.Err == nil {
				t.setEnd(o.Offset, now)
			}
		})
	}
}

func (p *pipeline) byPartition(part int32) *task {
	i := sort.Search(len(p.tasks), func(i int) bool { return p.tasks[i].partition >= part })
	if i < len(p.tasks) && p.tasks[i].partition == part {
		return p.tasks[i]
	}
	return nil
}

// KafkaLogger passes franz-go's warnings and errors (retries, broker
// trouble) to l, their messages prefixed with "kafka: ".
func KafkaLogger(l *slog.Logger) kgo.Logger { return kafkaLogger{l} }

// kafkaLogger sends franz-go's warnings and errors to slog.
type kafkaLogger struct{ l *slog.Logger }

func (k kafkaLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (k kafkaLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	l := slog.LevelWarn
	if level == kgo.LogLevelError {
		l = slog.LevelError
	}
	k.l.Log(context.Background(), l, "kafka: "+msg, keyvals...)
}
