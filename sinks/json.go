package sinks

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// The JSON form of a row, shared by the sinks that write JSON (the Kafka
// sink's record values, the file sink's JSON Lines):
//
//	{"uuid":"6ba7b810-9dad-11d1-80b4-00c04fd430c8","event_time":"2024-01-31T23:59:58.123Z",
//	 "event_date":"2024-01-31","first_seen":"2024-01-02T03:04:05.000Z","is_new":0,"late":0,
//	 "src_partition":0,"src_offset":12,"kafka_time":"2024-01-31T23:59:59.001Z","payload":{...}}
//
// (one line; shown on three here). Times are RFC 3339 in UTC with
// milliseconds; payload is the record's JSON verbatim, except that line
// breaks between its tokens become spaces, so a row is always one line.

const (
	jsonTimeLayout = "2006-01-02T15:04:05.000Z07:00"
	// DateLayout is the layout of event_date.
	DateLayout = "2006-01-02"
)

// AppendJSON appends row i of b, a batch that is not joined (one of a
// batch's Parts), as a JSON object without a line break.
func AppendJSON(dst []byte, b *Batch, i int) []byte {
	dst = append(dst, `{"uuid":"`...)
	dst = b.UUID[i].AppendCanonical(dst)
	dst = append(dst, `","event_time":"`...)
	dst = time.UnixMilli(b.EventTime[i]).UTC().AppendFormat(dst, jsonTimeLayout)
	dst = append(dst, `","event_date":"`...)
	dst = AppendDate(dst, b.EventDate[i])
	dst = append(dst, `","first_seen":"`...)
	dst = time.UnixMilli(b.FirstSeen[i]).UTC().AppendFormat(dst, jsonTimeLayout)
	dst = append(dst, `","is_new":`...)
	dst = appendBool(dst, b.IsNew[i])
	dst = append(dst, `,"late":`...)
	dst = appendBool(dst, b.Late[i])
	dst = append(dst, `,"src_partition":`...)
	dst = strconv.AppendInt(dst, int64(b.Partition[i]), 10)
	dst = append(dst, `,"src_offset":`...)
	dst = strconv.AppendInt(dst, b.Offset[i], 10)
	dst = append(dst, `,"kafka_time":"`...)
	dst = time.UnixMilli(b.Timestamp[i]).UTC().AppendFormat(dst, jsonTimeLayout)
	dst = append(dst, `","payload":`...)
	p := b.Payload(i)
	if len(p) == 0 {
		dst = append(dst, "null"...)
	} else {
		start := len(dst)
		dst = append(dst, p...)
		// Valid JSON has raw line breaks only between tokens, where a space
		// means the same.
		for j := start; j < len(dst); j++ {
			if dst[j] == '\n' || dst[j] == '\r' {
				dst[j] = ' '
			}
		}
	}
	return append(dst, '}')
}

// AppendDate appends an event_date (days since 1970-01-01) as YYYY-MM-DD.
func AppendDate(dst []byte, days int32) []byte {
	return time.Unix(int64(days)*86400, 0).UTC().AppendFormat(dst, DateLayout)
}

func appendBool(dst []byte, v bool) []byte {
	if v {
		return append(dst, '1')
	}
	return append(dst, '0')
}

// Line is a row read back from its JSON form.
type Line struct {
	UUID                            string
	EventTime, FirstSeen, KafkaTime time.Time // UTC
	EventDate                       string    // YYYY-MM-DD
	IsNew, Late                     bool
	Partition                       int32
	Offset                          int64
	Payload                         json.RawMessage
}

type wireLine struct {
	UUID      string          `json:"uuid"`
	EventTime string          `json:"event_time"`
	EventDate string          `json:"event_date"`
	FirstSeen string          `json:"first_seen"`
	IsNew     *uint8          `json:"is_new"`
	Late      *uint8          `json:"late"`
	Partition *int32          `json:"src_partition"`
	Offset    *int64          `json:"src_offset"`
	KafkaTime string          `json:"kafka_time"`
	Payload   json.RawMessage `json:"payload"`
}

// ParseJSON parses a row's JSON form.
func ParseJSON(raw []byte) (Line, error) {
	var w wireLine
	if err := json.Unmarshal(raw, &w); err != nil {
		return Line{}, err
	}
	if w.UUID == "" || w.IsNew == nil || w.Late == nil || w.Partition == nil || w.Offset == nil {
		return Line{}, errors.New("missing member")
	}
	l := Line{UUID: w.UUID, EventDate: w.EventDate, IsNew: *w.IsNew != 0, Late: *w.Late != 0,
		Partition: *w.Partition, Offset: *w.Offset, Payload: w.Payload}
	if _, err := time.Parse(DateLayout, w.EventDate); err != nil {
		return Line{}, fmt.Errorf("event_date: %w", err)
	}
	for _, t := range []struct {
		name string
		in   string
		out  *time.Time
	}{{"event_time", w.EventTime, &l.EventTime}, {"first_seen", w.FirstSeen, &l.FirstSeen},
		{"kafka_time", w.KafkaTime, &l.KafkaTime}} {
		v, err := time.Parse(time.RFC3339Nano, t.in)
		if err != nil {
			return Line{}, fmt.Errorf("%s: %w", t.name, err)
		}
		*t.out = v.UTC()
	}
	return l, nil
}
