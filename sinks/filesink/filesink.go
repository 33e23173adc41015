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
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/firstseen/firstseen/sinks"
)

const (
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
			buf = append(sinks.AppendJSON(buf, part, i), '\n')
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
type Line = sinks.Line

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
		l, err := sinks.ParseJSON(raw)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		out = append(out, l)
	}
}
