package engine

import (
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
