package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"

	"github.com/firstseen/firstseen/operators"
)

type bootstrapInput struct {
	name   string
	br     *bufio.Reader // the decompressed content
	fmt    string        // csv, tsv or jsonl
	gz     bool
	file   *os.File // nil for stdin
	closer io.Closer
	prog   *progress
	closed bool
}

func (in *bootstrapInput) close() {
	if in.closed {
		return
	}
	in.closed = true
	in.prog.Finish()
	if in.closer != nil {
		in.closer.Close()
	}
	if in.file != nil {
		in.file.Close()
	}
}

// bootstrapCounter reports the bytes read from the input (compressed, if it
// is) to the progress display.
type bootstrapCounter struct {
	r io.Reader
	p *progress
}

func (c *bootstrapCounter) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if n > 0 {
		c.p.Add(int64(n))
	}
	return n, err
}

func openBootstrapInput(path string, stdin io.Reader, format string, log *slog.Logger) (*bootstrapInput, error) {
	in := &bootstrapInput{name: path}
	var raw io.Reader
	size := int64(-1)
	if path == "-" {
		in.name, raw = "stdin", stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, usageError{fmt.Errorf("input: %w", err)}
		}
		in.file, raw = f, f
	}
	if f, ok := raw.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			size = fi.Size()
		}
	}
	in.prog = newProgress(os.Stderr, log, "bootstrap", size)
	br := bufio.NewReaderSize(&bootstrapCounter{r: raw, p: in.prog}, 1<<20)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			in.close()
			return nil, fmt.Errorf("%s: gzip: %w", in.name, err)
		}
		in.gz, in.closer = true, zr
		br = bufio.NewReaderSize(zr, 1<<20)
	}
	if bom, _ := br.Peek(len(utf8BOM)); bytes.Equal(bom, utf8BOM) {
		br.Discard(len(utf8BOM)) // as Excel writes CSV
	}
	in.br = br
	in.fmt = format
	if format == "auto" {
		in.fmt = bootstrapFormatByName(path)
		if in.fmt == "" {
			head, err := peekFirstLine(br)
			if err != nil {
				in.close()
				return nil, fmt.Errorf("%s: %w", in.name, err)
			}
			in.fmt = sniffBootstrapFormat(head)
		}
	}
	return in, nil
}

// peekFirstLine returns the buffered input up to its first line break (or
// 64 KiB, or the end), without waiting for more than that: a slow pipe
// still starts at once.
func peekFirstLine(br *bufio.Reader) ([]byte, error) {
	for n := 1; ; n = br.Buffered() + 1 {
		head, err := br.Peek(n)
		if err == io.EOF || bytes.IndexByte(head, '\n') >= 0 || len(head) >= 64<<10 {
			return head, nil
		}
		if err != nil {
			return nil, err
		}
		if head, _ = br.Peek(br.Buffered()); bytes.IndexByte(head, '\n') >= 0 {
			return head, nil
		}
	}
}

// bootstrapFormatByName is the format an input's name says, or "".
func bootstrapFormatByName(path string) string {
	name := strings.ToLower(path)
	name = strings.TrimSuffix(name, ".gz")
	switch filepath.Ext(name) {
	case ".csv":
		return "csv"
	case ".tsv":
		return "tsv"
	case ".jsonl", ".ndjson":
		return "jsonl"
	}
	return ""
}

// sniffBootstrapFormat: JSON Lines start with an object; otherwise the
// header line is tab-separated (TSV) or not (CSV).
func sniffBootstrapFormat(head []byte) string {
	head = bytes.TrimPrefix(head, utf8BOM)
	t := bytes.TrimLeft(head, " \t\r\n")
	if len(t) > 0 && t[0] == '{' {
		return "jsonl"
	}
	if i := bytes.IndexByte(head, '\n'); i >= 0 {
		head = head[:i]
	}
	if bytes.IndexByte(head, '\t') >= 0 {
		return "tsv"
	}
	return "csv"
}

var utf8BOM = []byte{0xef, 0xbb, 0xbf}

func (in *bootstrapInput) source(o bootstrapOptions) (bootstrapSource, error) {
	s := &fileSource{in: in, lr: &lineReader{br: in.br}, parsers: max(1, runtime.GOMAXPROCS(0))}
	if in.fmt == "jsonl" {
		s.newParser = func() rowParser {
			return &jsonlParser{dec: operators.NewDecoder(o.uuidColumn, o.firstSeenColumn), uuidCol: o.uuidColumn, timeCol: o.firstSeenColumn}
		}
		return s, nil
	}
	proto := delimParser{delim: ',', quotes: true}
	if in.fmt == "tsv" {
		proto.delim, proto.quotes = '\t', false
	}
	s.quotes = proto.quotes
	if err := s.header(&proto, o.uuidColumn, o.firstSeenColumn); err != nil {
		return nil, err
	}
	s.newParser = func() rowParser {
		p := proto
		p.fields, p.rec, p.ends = nil, nil, nil
		return &p
	}
	return s, nil
}

// lineReader reads lines of any length, counting them. It reads the header;
// the rows go through fileSource's chunks.
type lineReader struct {
	br   *bufio.Reader
	line int64 // number of the line last returned
	long []byte
}

// next returns the next line without its line ending. It stays valid until
// the next call. At the end it returns io.EOF.
func (r *lineReader) next() ([]byte, error) {
	line, err := r.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		r.long = append(r.long[:0], line...)
		for errors.Is(err, bufio.ErrBufferFull) {
			line, err = r.br.ReadSlice('\n')
			r.long = append(r.long, line...)
		}
		line = r.long
	}
	if err != nil && err != io.EOF {
		return nil, err
	}
	if len(line) == 0 {
		return nil, io.EOF
	}
	r.line++
	return trimEOL(line), nil
}

func trimEOL(line []byte) []byte {
	if len(line) > 0 && line[len(line)-1] == '\n' {
		line = line[:len(line)-1]
	}
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line
}

func isBlank(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\t' {
			return false
		}
	}
	return true
}

func gzName(f string, gz bool) string {
	if gz {
		return f + " (gzip)"
	}
	return f
}

// fileSource reads the rows of a file in chunks of whole records, parses
// the chunks on every core and hands the rows over in input order.
//
// Records are lines; in CSV a line break inside double quotes continues
// the record. Where that is decided by counting the quotes since the
// record's start (a line break at an odd count is inside quotes), which is
// exact for RFC 4180 and the same in the chunker and the parsers.
type fileSource struct {
	in        *bootstrapInput
	lr        *lineReader
	quotes    bool
	parsers   int
	newParser func() rowParser
}

func (s *fileSource) close()         { s.in.close() }
func (s *fileSource) name() string   { return s.in.name }
func (s *fileSource) unit() string   { return "line" }
func (s *fileSource) format() string { return gzName(s.in.fmt, s.in.gz) }

// header reads the CSV/TSV header and finds the two columns.
func (s *fileSource) header(p *delimParser, uuidCol, timeCol string) error {
	var rec []byte
	for {
		line, err := s.lr.next()
		if err == io.EOF {
			return usageError{fmt.Errorf("%s is empty: a %s file needs a header line naming the columns %q and %q", s.in.name, s.format(), uuidCol, timeCol)}
		}
		if err != nil {
			return fmt.Errorf("%s: %w", s.in.name, err)
		}
		rec = append(rec[:0], line...)
		for p.quotes && bytes.Count(rec, quote)%2 == 1 {
			line, err := s.lr.next()
			if err == io.EOF {
				return usageError{fmt.Errorf("%s: header: a quoted name is not closed", s.in.name)}
			}
			if err != nil {
				return fmt.Errorf("%s: %w", s.in.name, err)
			}
			rec = append(append(rec, '\n'), line...)
		}
		if !isBlank(rec) {
			break
		}
	}
	fields := p.split(rec, -1)
	p.uuidIdx, p.timeIdx, p.ncols = -1, -1, len(fields)
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = string(f)
		for _, c := range []struct {
			name string
			idx  *int
		}{{uuidCol, &p.uuidIdx}, {timeCol, &p.timeIdx}} {
			if names[i] == c.name {
				if *c.idx >= 0 {
					return usageError{fmt.Errorf("%s: the header names column %q twice", s.in.name, c.name)}
				}
				*c.idx = i
			}
		}
	}
	var missing []string
	if p.uuidIdx < 0 {
		missing = append(missing, fmt.Sprintf("%q (--uuid-column)", uuidCol))
	}
	if p.timeIdx < 0 {
		missing = append(missing, fmt.Sprintf("%q (--first-seen-column)", timeCol))
	}
	if len(missing) > 0 {
		return usageError{fmt.Errorf("%s: the header has no column %s; it has %q (read as %s)",
			s.in.name, strings.Join(missing, " or "), names, s.format())}
	}
	p.need = max(p.uuidIdx, p.timeIdx) + 1
	return nil
}

var quote = []byte{'"'}

// fileChunk is a run of whole records and, once parsed, its rows.
type fileChunk struct {
	buf    []byte // owned buffer; data is a prefix of it
	data   []byte
	err    error // a read error instead of data
	parsed chan struct{}

	rows  []parsedRow
	bad   []badRow
	lines int64
}

type parsedRow struct {
	u operators.UUID
	t int64
}

type badRow struct {
	line   int64 // in the chunk, from 0
	reason string
}

// fileChunkSize is the size of the chunks parsed in parallel; a variable
// so that tests can make records cross many chunk boundaries.
var fileChunkSize = 1 << 20

func (s *fileSource) each(sink *bootstrapSink) error {
	quit := make(chan struct{})
	order := make(chan *fileChunk, 2*s.parsers+2) // bounds the chunks in flight
	work := make(chan *fileChunk, 2*s.parsers+2)
	free := make(chan *fileChunk, 2*s.parsers+4)
	var wg sync.WaitGroup
	wg.Add(1 + s.parsers)
	go func() {
		defer wg.Done()
		defer close(order)
		defer close(work)
		s.read(quit, order, work, free)
	}()
	for range s.parsers {
		p := s.newParser()
		go func() {
			defer wg.Done()
			for c := range work {
				parseFileChunk(p, c, s.quotes)
				close(c.parsed)
			}
		}()
	}
	err := s.consume(sink, order, free)
	close(quit)
	for range order { // let the reader finish
	}
	wg.Wait()
	return err
}

func (s *fileSource) consume(sink *bootstrapSink, order <-chan *fileChunk, free chan<- *fileChunk) error {
	base := s.lr.line // lines before the first chunk: the header
	for c := range order {
		<-c.parsed
		if c.err != nil {
			return fmt.Errorf("%s: %w", s.in.name, c.err)
		}
		// Bad rows first: under --strict the first one stops the load, and
		// its line is the first bad line of the chunk.
		for _, b := range c.bad {
			if err := sink.bad(base+b.line+1, b.reason); err != nil {
				return err
			}
		}
		for i := range c.rows {
			if err := sink.good(&c.rows[i].u, c.rows[i].t); err != nil {
				return err
			}
		}
		base += c.lines
		select {
		case free <- c:
		default:
		}
	}
	return nil
}

// read cuts the input into chunks that end at a record boundary and sends
// them, in order, to order (for the consumer) and work (for a parser).
func (s *fileSource) read(quit <-chan struct{}, order, work chan<- *fileChunk, free <-chan *fileChunk) {
	var carry []byte
	for {
		var c *fileChunk
		select {
		case c = <-free:
		default:
			c = &fileChunk{}
		}
		// Room for what is carried over plus a chunk, or twice the carry
		// when one record is longer than a chunk.
		if need := len(carry) + max(fileChunkSize, len(carry)); cap(c.buf) < need {
			c.buf = make([]byte, need)
		}
		c.rows, c.bad, c.lines, c.err = c.rows[:0], nil, 0, nil
		c.parsed = make(chan struct{})
		buf := append(c.buf[:0], carry...)
		n, err := io.ReadFull(s.in.br, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		last := false
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			last = true
		case err != nil:
			c.err, last = err, true
		}
		cut := len(buf)
		if !last {
			if cut = lastRecordEnd(buf, s.quotes); cut == 0 {
				carry = append(carry[:0], buf...) // no record ends here yet: read on
				c.buf = buf
				continue
			}
		}
		c.buf, c.data = buf, buf[:cut]
		carry = append(carry[:0], buf[cut:]...)
		select {
		case order <- c:
		case <-quit:
			return
		}
		if c.err != nil {
			close(c.parsed)
			return
		}
		select {
		case work <- c:
		case <-quit:
			close(c.parsed)
			return
		}
		if last {
			return
		}
	}
}

// lastRecordEnd returns the length of the longest prefix of b made of whole
// records (ending with a line break), or 0.
func lastRecordEnd(b []byte, quotes bool) int {
	if !quotes || bytes.IndexByte(b, '"') < 0 {
		return bytes.LastIndexByte(b, '\n') + 1
	}
	end, in := 0, false
	for i, c := range b {
		switch c {
		case '"':
			in = !in
		case '\n':
			if !in {
				end = i + 1
			}
		}
	}
	return end
}

// recordEnd returns the end of the record at the start of b (the index of
// the line break that ends it, or len(b)), the line breaks inside it, and
// whether it ends inside quotes (a quoted field not closed by the end of
// the input).
func recordEnd(b []byte, quotes bool) (end, breaks int, open bool) {
	end = bytes.IndexByte(b, '\n')
	if end < 0 {
		end = len(b)
	}
	if !quotes {
		return end, 0, false
	}
	n := bytes.Count(b[:end], quote)
	for n%2 == 1 {
		if end >= len(b) {
			return end, breaks, true
		}
		next := bytes.IndexByte(b[end+1:], '\n')
		if next < 0 {
			next = len(b) - end - 1
		}
		n += bytes.Count(b[end+1:end+1+next], quote)
		end += 1 + next
		breaks++
	}
	return end, breaks, false
}
