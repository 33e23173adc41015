// Package filesink is a sink that appends rows to a JSON Lines file. The
// demo uses it when no ClickHouse is reachable.
//
// Each row is one line, with the keys in this order:
//
//	{"uuid":"6ba7b810-9dad-11d1-80b4-00c04fd430c8","event_time":"2024-01-31T23:59:58.123Z",
//	 "event_date":"2024-01-31","first_seen":"2024-01-02T03:04:05.000Z","is_new":0,"late":0,
//	 "src_partition":0,"src_offset":12,"kafka_time":"2024-01-31T23:59:59.001Z","payload":{...}}
//
// (shown on three lines here). Times are RFC 3339 in UTC with milliseconds;
// payload is the record's JSON verbatim, except that line breaks between its
// tokens become spaces so that a row stays on one line.
//
// [Sink.Write] returns after fsync. If it fails, it cuts the file back to
// its size before the write, so the engine's retry of the same batch writes
// each row once. Rows written before a crash and replayed after it do
// appear twice: the file sink is at-least-once across crashes.
// [ReadFile] parses a file back.
package filesink

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/firstseen/firstseen/sinks"
)

const (
	timeLayout = "2006-01-02T15:04:05.000Z07:00"
	dateLayout = "2006-01-02"
	// flushAt is the buffer size at which Write hands lines to the file
	// before the end of the batch.
	flushAt = 1 << 20
)

var _ sinks.Sink = (*Sink)(nil)

// syncFile is (*os.File).Sync; tests replace it to make fsync fail.
var syncFile = (*os.File).Sync

// Sink appends rows to one file. Its methods are safe for concurrent use.
type Sink struct {
	path string

	mu     sync.Mutex
	f      *os.File
	size   int64 // bytes acknowledged by the last successful Write
	buf    []byte
	closed bool
}

// Open opens path for appending, creating it and its parent directories
// when missing. A last line left incomplete by a crash during a write (never
// acknowledged) is cut off.
func Open(path string) (*Sink, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("filesink %s: %w", path, err)
	}
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, os.ErrNotExist)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("filesink %s: %w", path, err)
	}
	size, err := completeLines(f)
	if err == nil {
		err = syncFile(f)
	}
	if err == nil && created {
		err = syncDir(dir)
	}
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("filesink %s: %w", path, err)
	}
	return &Sink{path: path, f: f, size: size}, nil
}

// completeLines truncates f after its last newline and returns its new size.
func completeLines(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	end := size
	var chunk [4096]byte
	for end > 0 {
		n := int64(len(chunk))
		if end < n {
			n = end
		}
		if _, err := f.ReadAt(chunk[:n], end-n); err != nil && err != io.EOF {
			return 0, err
		}
		if i := bytes.LastIndexByte(chunk[:n], '\n'); i >= 0 {
			end = end - n + int64(i) + 1
			break
		}
		end -= n
	}
	if end != size {
		if err := f.Truncate(end); err != nil {
			return 0, err
		}
	}
	return end, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Path is the file the sink appends to.
func (s *Sink) Path() string { return s.path }

// Write appends one line per row of b and returns after fsync. An empty
// batch is a no-op. On error the file is cut back to its size before the
// call, so that the same batch can be written again.
func (s *Sink) Write(ctx context.Context, b *sinks.Batch) error {
	n := b.Len()
	if n == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("filesink %s: write after Close", s.path)
	}
	written, err := s.writeRows(b)
	if err == nil {
		err = syncFile(s.f)
	}
	if err != nil {
		if written > 0 {
			if terr := s.f.Truncate(s.size); terr != nil {
				err = errors.Join(err, fmt.Errorf("cannot cut the file back to %d bytes: %w", s.size, terr))
			}
		}
		return fmt.Errorf("filesink %s: write of %d row(s): %w", s.path, n, err)
	}
	s.size += written
	if cap(s.buf) > 4*flushAt {
		s.buf = nil // do not keep a huge batch's buffer
	}
	return nil
}

// writeRows writes the lines of b to the file and returns how many bytes it
// wrote.
func (s *Sink) writeRows(b *sinks.Batch) (int64, error) {
	var written int64
	buf := s.buf[:0]
	defer func() { s.buf = buf[:0] }()
	flush := func() error {
		m, err := s.f.Write(buf)
		written += int64(m)
		buf = buf[:0]
		return err
	}
	for _, part := range b.Parts() {
		for i := range part.Len() {
			buf = appendLine(buf, part, i)
			if len(buf) >= flushAt {
				if err := flush(); err != nil {
					return written, err
				}
			}
		}
	}
	if len(buf) > 0 {
		return written, flush()
	}
	return written, nil
}

// appendLine appends row i of b, a batch that is not joined, as one line.
func appendLine(dst []byte, b *sinks.Batch, i int) []byte {
	dst = append(dst, `{"uuid":"`...)
	dst = b.UUID[i].AppendCanonical(dst)
	dst = append(dst, `","event_time":"`...)
	dst = time.UnixMilli(b.EventTime[i]).UTC().AppendFormat(dst, timeLayout)
	dst = append(dst, `","event_date":"`...)
	dst = time.Unix(int64(b.EventDate[i])*86400, 0).UTC().AppendFormat(dst, dateLayout)
	dst = append(dst, `","first_seen":"`...)
	dst = time.UnixMilli(b.FirstSeen[i]).UTC().AppendFormat(dst, timeLayout)
	dst = append(dst, `","is_new":`...)
	dst = appendBool(dst, b.IsNew[i])
	dst = append(dst, `,"late":`...)
	dst = appendBool(dst, b.Late[i])
	dst = append(dst, `,"src_partition":`...)
	dst = strconv.AppendInt(dst, int64(b.Partition[i]), 10)
	dst = append(dst, `,"src_offset":`...)
	dst = strconv.AppendInt(dst, b.Offset[i], 10)
	dst = append(dst, `,"kafka_time":"`...)
	dst = time.UnixMilli(b.Timestamp[i]).UTC().AppendFormat(dst, timeLayout)
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
	return append(dst, "}\n"...)
}

func appendBool(dst []byte, v bool) []byte {
	if v {
		return append(dst, '1')
	}
	return append(dst, '0')
}

// Close closes the file. It is safe to call more than once.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.buf = nil
	if err := s.f.Close(); err != nil {
		return fmt.Errorf("filesink %s: %w", s.path, err)
	}
	return nil
}

// Line is one row of a file written by [Sink].
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

// ReadFile parses a file written by [Sink]. A last line without its newline
// (a write in progress, or cut short by a crash) is not returned.
func ReadFile(path string) ([]Line, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<16)
	var out []Line
	for n := 1; ; n++ {
		raw, err := r.ReadBytes('\n')
		if err == io.EOF {
			return out, nil // an incomplete last line, if any, is ignored
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		l, err := parseLine(raw)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		out = append(out, l)
	}
}

func parseLine(raw []byte) (Line, error) {
	var w wireLine
	if err := json.Unmarshal(raw, &w); err != nil {
		return Line{}, err
	}
	if w.UUID == "" || w.IsNew == nil || w.Late == nil || w.Partition == nil || w.Offset == nil {
		return Line{}, errors.New("missing member")
	}
	l := Line{UUID: w.UUID, EventDate: w.EventDate, IsNew: *w.IsNew != 0, Late: *w.Late != 0,
		Partition: *w.Partition, Offset: *w.Offset, Payload: w.Payload}
	if _, err := time.Parse(dateLayout, w.EventDate); err != nil {
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
