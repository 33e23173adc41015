package engine

import (
	"context"
	"strconv"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/operators"
)

// Dead-letter record headers, added after the original record's own
// headers. The record keeps the original key, value and timestamp.
const (
	HeaderReason    = "firstseen.reason"
	HeaderTopic     = "firstseen.source.topic"
	HeaderPartition = "firstseen.source.partition"
	HeaderOffset    = "firstseen.source.offset"
)

func deadLetter(dlqTopic, topic string, r *kgo.Record, reason operators.Reason) *kgo.Record {
	return &kgo.Record{
		Topic:     dlqTopic,
		Key:       append([]byte(nil), r.Key...),
		Value:     append([]byte(nil), r.Value...),
		Timestamp: r.Timestamp,
		Headers: append(append(make([]kgo.RecordHeader, 0, len(r.Headers)+4), r.Headers...),
			kgo.RecordHeader{Key: HeaderReason, Value: []byte(reason.String())},
			kgo.RecordHeader{Key: HeaderTopic, Value: []byte(topic)},
			kgo.RecordHeader{Key: HeaderPartition, Value: strconv.AppendInt(nil, int64(r.Partition), 10)},
			kgo.RecordHeader{Key: HeaderOffset, Value: strconv.AppendInt(nil, r.Offset, 10)}),
	}
}

// deadLetterID is the identity of a dead letter: its source record.
type deadLetterID struct {
	topic     string
	partition string
	offset    string
}

func deadLetterKey(r *kgo.Record) deadLetterID {
	return deadLetterID{headerValue(r, HeaderTopic), headerValue(r, HeaderPartition), headerValue(r, HeaderOffset)}
}

// deadLettersSince reads the dead-letter topic from the given offsets to its
// current end and returns the source records found there. Recovery uses it
// to produce only the dead letters of the unfinished epoch that did not land.
func (p *pipeline) deadLettersSince(ctx context.Context, from map[int32]int64) (map[deadLetterID]bool, error) {
	found := map[deadLetterID]bool{}
	if len(from) == 0 {
		return found, nil
	}
	ends, err := listOffsets(ctx, p.adm.ListEndOffsets, p.cfg.DLQTopic)
	if err != nil {
		return nil, err
	}
	start := map[int32]kgo.Offset{}
	remaining := 0
	for part, off := range from {
		if ends[part] > off {
			start[part] = kgo.NewOffset().At(off)
			remaining++
		}
	}
	if remaining == 0 {
		return found, nil
	}
	opts := append([]kgo.Opt{kgo.SeedBrokers(p.cfg.Brokers...), kgo.WithLogger(KafkaLogger(p.log)),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{p.cfg.DLQTopic: start})}, p.cfg.KafkaOptions...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	done := map[int32]bool{}
	for remaining > 0 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fs.EachRecord(func(r *kgo.Record) {
			if r.Offset >= ends[r.Partition] {
				return
			}
			found[deadLetterKey(r)] = true
			if r.Offset == ends[r.Partition]-1 && !done[r.Partition] {
				done[r.Partition] = true
				remaining--
			}
		})
	}
	return found, nil
}
