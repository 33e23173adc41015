package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
)

// peekLine returns the first line of br (without consuming it), up to the
// buffer's size.
func peekLine(br *bufio.Reader) ([]byte, error) {
	for n := 4096; ; n *= 2 {
		b, err := br.Peek(min(n, br.Size()))
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			return b[:i], nil
		}
		if err != nil || n >= br.Size() {
			if err == io.EOF || errors.Is(err, bufio.ErrBufferFull) {
				err = nil
			}
			return b, err
		}
	}
}

// detectFormat resolves --format: by the file name's extension, then by
// the first line. A JSON Lines file whose first line has "timestamp_ms" and
// "value" (or "value_b64") members is a workload file (generate --output).
func detectFormat(flag, name string, first []byte) string {
	format := flag
	if format == "auto" {
		switch ext := filepath.Ext(strings.TrimSuffix(strings.ToLower(name), ".gz")); ext {
		case ".csv":
			format = "csv"
		case ".jsonl", ".ndjson", ".json":
			format = "jsonl"
		default:
			if t := bytes.TrimSpace(first); len(t) > 0 && (t[0] == '{' || json.Valid(t)) {
				format = "jsonl"
			} else {
				format = "csv"
			}
		}
	}
	if format == "jsonl" && isWorkloadLine(first) {
		format = "workload"
	}
	return format
}

// isWorkloadLine reports whether line is an object with a numeric
// "timestamp_ms" and a "value" (string or null) or "value_b64" member.
func isWorkloadLine(line []byte) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(line, &m) != nil {
		return false
	}
	var ts int64
	if json.Unmarshal(m["timestamp_ms"], &ts) != nil {
		return false
	}
	var v *string
	if raw, ok := m["value"]; ok {
		return json.Unmarshal(raw, &v) == nil
	}
	raw, ok := m["value_b64"]
	return ok && json.Unmarshal(raw, &v) == nil && v != nil
}

// lines produces JSON Lines: verbatim, or the records of a workload file.
func (p *dumpProducer) lines(ctx context.Context, br *bufio.Reader, wl bool) error {
	var long []byte
	for !p.stop {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err != nil && err != io.EOF {
			return err
		}
		if len(line) > 0 {
			p.line++
			line = bytes.TrimSuffix(line, []byte("\n"))
			line = bytes.TrimSuffix(line, []byte("\r"))
		}
		if len(line) > 0 {
			var perr error
			if wl {
				perr = p.workloadLine(ctx, line)
			} else {
				perr = p.keyed(ctx, p.slab.copy(line))
			}
			if perr != nil {
				return perr
			}
		}
		if err == io.EOF {
			return nil
		}
	}
	return nil
}

// wireLine is a line of a workload file (workload.WriteJSONL), as much of
// it as produce needs: kind and day are ignored, partition is optional.
type wireLine struct {
	Partition   *int32  `json:"partition"`
	Key         *string `json:"key"`
	KeyB64      *string `json:"key_b64"`
	TimestampMs *int64  `json:"timestamp_ms"`
	Value       *string `json:"value"`
	ValueB64    *string `json:"value_b64"`
}

// wireFields is a parsed workload line. Key and value are nil when null or
// absent; the _b64 members are their raw (still encoded) text.
type wireFields struct {
	partition        int32
	hasPartition     bool
	ts               int64
	hasTS            bool
	key, value       []byte
	keyB64, valueB64 []byte
}

// parseWire reads a workload line into w the way encoding/json reads it
// into a wireLine, with strings decoded into sl.
func parseWire(line []byte, sl *slab, w *wireFields) error {
	if parseWireFast(line, sl, w) {
		return nil
	}
	return parseWireJSON(line, sl, w)
}

func parseWireJSON(line []byte, sl *slab, w *wireFields) error {
	var l wireLine
	if err := json.Unmarshal(line, &l); err != nil {
		return err
	}
	*w = wireFields{}
	if l.Partition != nil {
		w.partition, w.hasPartition = *l.Partition, true
	}
	if l.TimestampMs != nil {
		w.ts, w.hasTS = *l.TimestampMs, true
	}
	str := func(s *string) []byte {
		if s == nil {
			return nil
		}
		return sl.copyString(*s)
	}
	w.key, w.keyB64, w.value, w.valueB64 = str(l.Key), str(l.KeyB64), str(l.Value), str(l.ValueB64)
	return nil
}

// parseWireFast reads lines as WriteJSONL writes them: one flat object of
// its members, with integers, strings and nulls. For anything else (other
// members, other values, invalid UTF-8 or escapes, which encoding/json
// would replace) it returns false, and the caller uses encoding/json.
func parseWireFast(b []byte, sl *slab, w *wireFields) bool {
	*w = wireFields{}
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return skipWS(b, i+1) == len(b)
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return false
		}
		end := i + 1
		for end < len(b) && b[end] != '"' && b[end] != '\\' {
			end++
		}
		if end >= len(b) || b[end] != '"' {
			return false
		}
		name := b[i+1 : end]
		i = skipWS(b, end+1)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return false
		}
		var ok bool
		switch string(name) {
		case "partition":
			var n int64
			if n, i, ok = wireInt(b, i); !ok || n != int64(int32(n)) {
				return false
			}
			w.partition, w.hasPartition = int32(n), true
		case "timestamp_ms":
			if w.ts, i, ok = wireInt(b, i); !ok {
				return false
			}
			w.hasTS = true
		case "day":
			if _, i, ok = wireInt(b, i); !ok {
				return false
			}
		case "key", "value", "key_b64", "value_b64", "kind":
			var v []byte
			if b[i] == 'n' && i+4 <= len(b) && string(b[i:i+4]) == "null" {
				i += 4
			} else if v, i, ok = sl.unquote(b, i); !ok {
				return false
			}
			switch string(name) {
			case "key":
				w.key = v
			case "value":
				w.value = v
			case "key_b64":
				w.keyB64 = v
			case "value_b64":
				w.valueB64 = v
			}
		default:
			return false
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return skipWS(b, i+1) == len(b)
		default:
			return false
		}
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// wireInt reads a JSON integer that fits an int64 at b[i:].
func wireInt(b []byte, i int) (int64, int, bool) {
	neg := i < len(b) && b[i] == '-'
	if neg {
		i++
	}
	start := i
	var n uint64
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		if n > (1<<63)/10 {
			return 0, i, false
		}
		n = n*10 + uint64(b[i]-'0')
		i++
	}
	switch {
	case i == start, i-start > 1 && b[start] == '0', n > 1<<63, n == 1<<63 && !neg:
		return 0, i, false
	case i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E'):
		return 0, i, false
	case neg:
		return -int64(n), i, true
	}
	return int64(n), i, true
}

// unquote decodes the JSON string at b[i] (its opening quote) into the
// slab. It refuses (false) what encoding/json would decode with
// replacements: invalid UTF-8 and lone surrogates.
func (s *slab) unquote(b []byte, i int) ([]byte, int, bool) {
	if b[i] != '"' {
		return nil, i, false
	}
	j := i + 1
	for j < len(b) && b[j] != '"' {
		if b[j] == '\\' {
			j++
		}
		j++
	}
	if j >= len(b) {
		return nil, i, false
	}
	raw := b[i+1 : j]
	dst := s.take(len(raw))
	for k := 0; k < len(raw); {
		run := k
		for k < len(raw) && raw[k] >= 0x20 && raw[k] < utf8.RuneSelf && raw[k] != '\\' {
			k++
		}
		dst = append(dst, raw[run:k]...)
		if k == len(raw) {
			break
		}
		switch c := raw[k]; {
		case c < 0x20:
			return nil, i, false
		case c >= utf8.RuneSelf:
			r, size := utf8.DecodeRune(raw[k:])
			if r == utf8.RuneError && size == 1 {
				return nil, i, false
			}
			dst = append(dst, raw[k:k+size]...)
			k += size
		default: // a backslash
			if k+1 >= len(raw) {
				return nil, i, false
			}
			e := raw[k+1]
			k += 2
			switch e {
			case '"', '\\', '/':
				dst = append(dst, e)
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				r, ok := hex4(raw, k)
				if !ok {
					return nil, i, false
				}
				k += 4
				if utf16.IsSurrogate(r) {
					if k+6 > len(raw) || raw[k] != '\\' || raw[k+1] != 'u' {
						return nil, i, false
					}
					r2, ok := hex4(raw, k+2)
					if r = utf16.DecodeRune(r, r2); !ok || r == utf8.RuneError {
						return nil, i, false
					}
					k += 6
				}
				dst = utf8.AppendRune(dst, r)
			default:
				return nil, i, false
			}
		}
	}
	return dst, j + 1, true
}

func hex4(b []byte, k int) (rune, bool) {
	if k+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[k : k+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

func (p *dumpProducer) workloadLine(ctx context.Context, line []byte) error {
	w := &p.wire
	if err := parseWire(line, &p.slab, w); err != nil {
		return fmt.Errorf("line %d: %w (the first line was in generate's workload format, so all must be)", p.line, err)
	}
	if !w.hasTS {
		return fmt.Errorf("line %d: no timestamp_ms (the first line was in generate's workload format, so all must be)", p.line)
	}
	r := p.next()
	r.Timestamp = time.UnixMilli(w.ts)
	r.Key, r.Value = w.key, w.value
	var err error
	if w.keyB64 != nil {
		if r.Key, err = base64.StdEncoding.AppendDecode(nil, w.keyB64); err != nil {
			return fmt.Errorf("line %d: key_b64: %w", p.line, err)
		}
	}
	if w.valueB64 != nil {
		if r.Value, err = base64.StdEncoding.AppendDecode(nil, w.valueB64); err != nil {
			return fmt.Errorf("line %d: value_b64: %w", p.line, err)
		}
	}
	filePart := int32(-1)
	if w.hasPartition {
		filePart = w.partition
	}
	r.Partition = placePartition(r.Key, r.Value, filePart, p.n)
	if r.Key == nil {
		p.st.unkeyed++
	}
	return p.send(ctx, r)
}

// placePartition is where a workload record goes in a topic of n
// partitions: the default partitioner's choice for a key, else the
// record's own partition modulo n, else (none given) a hash of the value.
func placePartition(key, value []byte, part int32, n int) int32 {
	switch {
	case key != nil:
		return workload.Partition(key, n)
	case part >= 0:
		return part % int32(n)
	}
	return workload.Partition(value, n)
}

// csv produces the rows of a CSV file with a header as JSON objects.
func (p *dumpProducer) csv(ctx context.Context, br *bufio.Reader, uuidField string, log *slog.Logger) error {
	cr := csv.NewReader(br)
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err == io.EOF {
		return nil
	}
	if err != nil {
		return fmt.Errorf("header: %w", err)
	}
	names := make([][]byte, len(header)) // `"name":`
	uuidCol := -1
	for i, h := range header {
		names[i] = append(workload.AppendJSONString(nil, h), ':')
		if h == uuidField {
			uuidCol = i // the last one, as the decoder takes the last member
		}
	}
	if uuidCol < 0 {
		log.Warn("the CSV header has no uuid column: every record is produced unkeyed and run will dead-letter it",
			"uuid_field", uuidField, "header", strings.Join(header, ","))
	}
	var buf []byte
	for !p.stop {
		row, err := cr.Read()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		line, _ := cr.FieldPos(0)
		p.line = int64(line)
		buf = append(buf[:0], '{')
		for i, v := range row {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, names[i]...)
			if i != uuidCol && isJSONNumber(v) {
				buf = append(buf, v...)
			} else {
				buf = workload.AppendJSONString(buf, v)
			}
		}
		buf = append(buf, '}')
		if err := p.keyed(ctx, p.slab.copy(buf)); err != nil {
			return err
		}
	}
	return nil
}

// isJSONNumber reports whether s is a number in JSON's grammar.
func isJSONNumber(s string) bool {
	i := 0
	digits := func() int {
		n := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i, n = i+1, n+1
		}
		return n
	}
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case digits() == 0:
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(s)
}

// slab hands out record keys and values from large blocks, one allocation
// for many records; a block is freed when its last record is.
type slab struct{ b []byte }

const (
	slabBlock = 1 << 20
	slabMax   = 64 << 10 // larger values get their own allocation
)

func (s *slab) take(n int) []byte {
	switch {
	case n == 0:
		return []byte{} // empty, not nil: nil means no key or value
	case n > slabMax:
		return make([]byte, 0, n)
	}
	if cap(s.b)-len(s.b) < n {
		s.b = make([]byte, 0, slabBlock)
	}
	at := len(s.b)
	s.b = s.b[:at+n]
	return s.b[at : at : at+n]
}

func (s *slab) copy(p []byte) []byte          { return append(s.take(len(p)), p...) }
func (s *slab) copyString(p string) []byte    { return append(s.take(len(p)), p...) }
func (s *slab) uuid(u *operators.UUID) []byte { return u.AppendCanonical(s.take(36)) }

// countingReader counts the bytes read through it, into a progress.
type countingReader struct {
	r io.Reader
	n int64
	p *progress
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	if n > 0 && c.p != nil {
		c.p.Add(int64(n))
	}
	return n, err
}
