package workload

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/firstseen/firstseen/operators"
)

// WriteOracle writes the oracle's answer as JSON Lines, one object per
// input record, in the order given (Oracle's: produce order):
//
//	{"partition":0,"offset":17,"uuid":"3f1c2b9e-…","event_time_ms":1767571200123,"is_new":1,"late":0,"first_seen_ms":1767571200123,"reason":"ok"}
//
// reason is the operators.Reason's String: "ok" for a record that becomes a
// row, otherwise the dead-letter reason. uuid is canonical, or null for a
// refused record whose uuid was not parsed (a zero UUID). is_new and late
// are 0 or 1. Every member is always present; for a refused record
// first_seen_ms, is_new and late are 0 and event_time_ms is whatever was
// decoded (0 if nothing). [ReadOracle] reads the lines back exactly.
func WriteOracle(w io.Writer, exp []Expected) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	line := make([]byte, 0, 256)
	for i := range exp {
		e := &exp[i]
		line = append(line[:0], `{"partition":`...)
		line = strconv.AppendInt(line, int64(e.Partition), 10)
		line = append(line, `,"offset":`...)
		line = strconv.AppendInt(line, e.Offset, 10)
		line = append(line, `,"uuid":`...)
		if e.Reason != operators.OK && e.UUID == (operators.UUID{}) {
			line = append(line, "null"...)
		} else {
			line = append(line, '"')
			line = e.UUID.AppendCanonical(line)
			line = append(line, '"')
		}
		line = append(line, `,"event_time_ms":`...)
		line = strconv.AppendInt(line, e.EventTime, 10)
		line = append(line, `,"is_new":`...)
		line = append(line, b01(e.IsNew))
		line = append(line, `,"late":`...)
		line = append(line, b01(e.Late))
		line = append(line, `,"first_seen_ms":`...)
		line = strconv.AppendInt(line, e.FirstSeen, 10)
		line = append(line, `,"reason":"`...)
		line = append(line, e.Reason.String()...) // reason names need no escaping
		line = append(line, '"', '}', '\n')
		if _, err := bw.Write(line); err != nil {
			return err
		}
	}
	return bw.Flush()
}

func b01(b bool) byte {
	if b {
		return '1'
	}
	return '0'
}

// oracleLine is one line of [WriteOracle]'s output. Pointers tell a missing
// member from a zero one.
type oracleLine struct {
	Partition   *int32          `json:"partition"`
	Offset      *int64          `json:"offset"`
	UUID        json.RawMessage `json:"uuid"`
	EventTimeMs *int64          `json:"event_time_ms"`
	IsNew       *uint8          `json:"is_new"`
	Late        *uint8          `json:"late"`
	FirstSeenMs *int64          `json:"first_seen_ms"`
	Reason      *string         `json:"reason"`
}

// reasons maps a Reason's String back to the Reason.
var reasons = func() map[string]operators.Reason {
	m := map[string]operators.Reason{}
	for r := operators.OK; ; r++ {
		s := r.String()
		if _, dup := m[s]; dup || s == "unknown" || r == 255 {
			return m
		}
		m[s] = r
	}
}()

// ReadOracle reads what [WriteOracle] wrote. Every member must be present;
// is_new and late must be 0 or 1, reason a known reason, uuid null or a
// uuid in any spelling [operators.ParseUUID] accepts.
func ReadOracle(r io.Reader) ([]Expected, error) {
	dec := json.NewDecoder(bufio.NewReaderSize(r, 1<<16))
	dec.DisallowUnknownFields()
	var out []Expected
	for {
		var l oracleLine
		if err := dec.Decode(&l); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return out, fmt.Errorf("workload: oracle line %d: %w", len(out)+1, err)
		}
		e, err := l.expected()
		if err != nil {
			return out, fmt.Errorf("workload: oracle line %d: %w", len(out)+1, err)
		}
		out = append(out, e)
	}
}

func (l *oracleLine) expected() (Expected, error) {
	var e Expected
	switch {
	case l.Partition == nil, l.Offset == nil, l.UUID == nil, l.EventTimeMs == nil,
		l.IsNew == nil, l.Late == nil, l.FirstSeenMs == nil, l.Reason == nil:
		return e, errors.New("a member is missing: want partition, offset, uuid, event_time_ms, is_new, late, first_seen_ms and reason")
	case *l.IsNew > 1 || *l.Late > 1:
		return e, fmt.Errorf("is_new %d and late %d must be 0 or 1", *l.IsNew, *l.Late)
	}
	var ok bool
	if e.Reason, ok = reasons[*l.Reason]; !ok {
		return e, fmt.Errorf("unknown reason %q", *l.Reason)
	}
	if !bytes.Equal(l.UUID, []byte("null")) {
		var s string
		if err := json.Unmarshal(l.UUID, &s); err != nil {
			return e, fmt.Errorf("uuid: %w", err)
		}
		if e.UUID, ok = operators.ParseUUID([]byte(s)); !ok {
			return e, fmt.Errorf("uuid %q is not a uuid", s)
		}
	}
	e.Partition, e.Offset = *l.Partition, *l.Offset
	e.EventTime, e.FirstSeen = *l.EventTimeMs, *l.FirstSeenMs
	e.IsNew, e.Late = *l.IsNew == 1, *l.Late == 1
	return e, nil
}
