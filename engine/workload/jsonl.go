package workload

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
	"unicode/utf8"
)

// WriteJSONL writes recs to w as JSON Lines, one object a record:
//
//	{"partition":0,"key":"…","timestamp_ms":1767571200123,"kind":"valid","day":0,"value":"…"}
//
// key is null for a nil key. value is the record's value as a JSON string,
// or null for a nil value. A key or value that is not valid UTF-8 is written
// in standard base64 as "key_b64" or "value_b64" instead (and "key" is null,
// "value" absent). Timestamps are written in whole
// milliseconds. [ReadJSONL] reads the records back exactly.
func WriteJSONL(w io.Writer, recs []Record) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	var line []byte
	for i := range recs {
		rec := &recs[i]
		line = append(line[:0], `{"partition":`...)
		line = strconv.AppendInt(line, int64(rec.Partition), 10)
		line = append(line, `,"key":`...)
		switch {
		case rec.Key == nil:
			line = append(line, "null"...)
		case utf8.Valid(rec.Key):
			line = AppendJSONString(line, rec.Key)
		default:
			line = append(line, `null,"key_b64":"`...)
			line = base64.StdEncoding.AppendEncode(line, rec.Key)
			line = append(line, '"')
		}
		line = append(line, `,"timestamp_ms":`...)
		line = strconv.AppendInt(line, rec.Timestamp.UnixMilli(), 10)
		line = append(line, `,"kind":"`...)
		line = append(line, rec.Kind.String()...)
		line = append(line, `","day":`...)
		line = strconv.AppendInt(line, int64(rec.Day), 10)
		switch {
		case rec.Value == nil:
			line = append(line, `,"value":null`...)
		case utf8.Valid(rec.Value):
			line = append(line, `,"value":`...)
			line = AppendJSONString(line, rec.Value)
		default:
			line = append(line, `,"value_b64":"`...)
			line = base64.StdEncoding.AppendEncode(line, rec.Value)
			line = append(line, '"')
		}
		line = append(line, '}', '\n')
		if _, err := bw.Write(line); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// AppendJSONString appends s as a JSON string literal. Only the characters
// JSON requires are escaped; invalid UTF-8 is replaced by U+FFFD, as
// encoding/json does.
func AppendJSONString[S ~string | ~[]byte](dst []byte, s S) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			// At most UTFMax bytes: converting them from a []byte does
			// not allocate.
			r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
			if r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexLower[c>>4], hexLower[c&15])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// jsonlLine is one line of [WriteJSONL]'s output.
type jsonlLine struct {
	Partition   *int32  `json:"partition"`
	Key         *string `json:"key"`
	KeyB64      *string `json:"key_b64"`
	TimestampMs *int64  `json:"timestamp_ms"`
	Kind        string  `json:"kind"`
	Day         int     `json:"day"`
	Value       *string `json:"value"`
	ValueB64    *string `json:"value_b64"`
}

// ReadJSONL reads records written by [WriteJSONL].
func ReadJSONL(r io.Reader) ([]Record, error) {
	dec := json.NewDecoder(bufio.NewReaderSize(r, 1<<16))
	var recs []Record
	for {
		var l jsonlLine
		if err := dec.Decode(&l); err != nil {
			if errors.Is(err, io.EOF) {
				return recs, nil
			}
			return recs, fmt.Errorf("workload: line %d: %w", len(recs)+1, err)
		}
		rec := Record{Day: l.Day}
		var ok bool
		if rec.Kind, ok = ParseKind(l.Kind); !ok {
			return recs, fmt.Errorf("workload: line %d: unknown kind %q", len(recs)+1, l.Kind)
		}
		if l.Partition == nil || l.TimestampMs == nil {
			return recs, fmt.Errorf("workload: line %d: partition or timestamp_ms missing", len(recs)+1)
		}
		rec.Partition = *l.Partition
		rec.Timestamp = time.UnixMilli(*l.TimestampMs).UTC()
		switch {
		case l.KeyB64 != nil:
			k, err := base64.StdEncoding.DecodeString(*l.KeyB64)
			if err != nil {
				return recs, fmt.Errorf("workload: line %d: key_b64: %w", len(recs)+1, err)
			}
			rec.Key = k
		case l.Key != nil:
			rec.Key = []byte(*l.Key)
		}
		switch {
		case l.ValueB64 != nil:
			v, err := base64.StdEncoding.DecodeString(*l.ValueB64)
			if err != nil {
				return recs, fmt.Errorf("workload: line %d: value_b64: %w", len(recs)+1, err)
			}
			rec.Value = v
		case l.Value != nil:
			rec.Value = []byte(*l.Value)
		}
		recs = append(recs, rec)
	}
}
