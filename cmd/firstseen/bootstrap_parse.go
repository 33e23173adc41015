package main

import (
	"bytes"
	"fmt"

	"github.com/firstseen/firstseen/operators"
)

// rowParser parses one record (a line, or CSV lines joined by quotes).
// Parsers are not shared between goroutines.
type rowParser interface {
	parse(rec []byte, u *operators.UUID) (firstSeen int64, bad string)
}

func parseFileChunk(p rowParser, c *fileChunk, quotes bool) {
	if c.err != nil {
		return
	}
	data := c.data
	var line int64
	var u operators.UUID
	for len(data) > 0 {
		end, breaks, open := recordEnd(data, quotes)
		rec := data[:end]
		if end < len(data) {
			data = data[end+1:]
		} else {
			data = nil
		}
		start := line
		line += int64(breaks) + 1
		rec = trimEOL(rec)
		if isBlank(rec) {
			continue
		}
		if open {
			c.bad = append(c.bad, badRow{start, "a quoted field is not closed before the end of the input"})
			continue
		}
		t, bad := p.parse(rec, &u)
		if bad != "" {
			c.bad = append(c.bad, badRow{start, bad})
			continue
		}
		c.rows = append(c.rows, parsedRow{u, t})
	}
	c.lines = line
}

// jsonlParser reads JSON Lines with the stream's own decoder.
type jsonlParser struct {
	dec              *operators.Decoder
	ev               operators.Event
	uuidCol, timeCol string
}

func (p *jsonlParser) parse(rec []byte, u *operators.UUID) (int64, string) {
	switch p.dec.Decode(rec, &p.ev) {
	case operators.OK:
		*u = p.ev.UUID
		return p.ev.EventTime, ""
	case operators.NotJSON:
		return 0, "not JSON"
	case operators.NotObject:
		return 0, "not a JSON object"
	case operators.NoUUID:
		return 0, fmt.Sprintf("no %q member", p.uuidCol)
	case operators.BadUUID:
		return 0, fmt.Sprintf("bad uuid in %q: %s", p.uuidCol, badUUIDWant)
	case operators.NoEventTime:
		return 0, fmt.Sprintf("no %q member", p.timeCol)
	}
	return 0, fmt.Sprintf("bad first_seen in %q: %s", p.timeCol, badTimeWant)
}

const (
	badUUIDWant = "want 32 hex digits, with or without dashes"
	badTimeWant = "want RFC 3339 with a zone, or epoch milliseconds, from 1970-01-01 to 2106-02-07"
)

// delimParser reads a CSV (RFC 4180 quoting) or TSV (no quoting) record.
type delimParser struct {
	delim   byte
	quotes  bool
	uuidIdx int
	timeIdx int
	need    int // columns a row needs
	ncols   int // columns of the header
	fields  [][]byte
	rec     []byte // unquoted fields of the slow path
	ends    []int
}

func (p *delimParser) parse(rec []byte, u *operators.UUID) (int64, string) {
	fields := p.split(rec, p.need)
	if len(fields) < p.need {
		return 0, fmt.Sprintf("%d columns, the header has %d", len(fields), p.ncols)
	}
	uf, tf := fields[p.uuidIdx], fields[p.timeIdx]
	var ok bool
	if *u, ok = parseUUID(uf); !ok {
		if len(uf) == 0 {
			return 0, "empty uuid"
		}
		return 0, fmt.Sprintf("bad uuid %s: %s", quoteExcerpt(uf), badUUIDWant)
	}
	t, ok := operators.ParseEventTime(tf)
	if !ok {
		if len(tf) == 0 {
			return 0, "empty first_seen"
		}
		return 0, fmt.Sprintf("bad first_seen %s: %s", quoteExcerpt(tf), timeHint(tf))
	}
	return t, ""
}

// timeHint explains a refused time, naming the usual mistake of a time
// without a zone (ClickHouse's DateTime text).
func timeHint(b []byte) string {
	if len(b) == 19 && b[4] == '-' && (b[10] == ' ' || b[10] == 'T') {
		return badTimeWant + " (this one has no zone: append Z for UTC)"
	}
	return badTimeWant
}

func quoteExcerpt(b []byte) string {
	if len(b) > 60 {
		return fmt.Sprintf("%q...", b[:60])
	}
	return fmt.Sprintf("%q", b)
}

// split cuts a record into at most n fields (all of them if n < 0),
// trimming spaces around unquoted ones. A CSV field in double quotes may
// hold the delimiter, line breaks, and "" for a quote; text between its
// closing quote and the delimiter is kept, and a quote inside an unquoted
// field is an ordinary character. The fields stay valid until the next
// call.
func (p *delimParser) split(rec []byte, n int) [][]byte {
	p.fields = p.fields[:0]
	if !p.quotes || bytes.IndexByte(rec, '"') < 0 {
		for n < 0 || len(p.fields) < n {
			i := bytes.IndexByte(rec, p.delim)
			if i < 0 {
				p.fields = append(p.fields, trimSpaces(rec))
				break
			}
			p.fields = append(p.fields, trimSpaces(rec[:i]))
			rec = rec[i+1:]
		}
		return p.fields
	}
	p.rec, p.ends = p.rec[:0], p.ends[:0]
	i := 0
	for n < 0 || len(p.ends) < n {
		for i < len(rec) && rec[i] == ' ' {
			i++
		}
		if i < len(rec) && rec[i] == '"' {
			i++
			for i < len(rec) {
				j := bytes.IndexByte(rec[i:], '"')
				if j < 0 {
					j = len(rec) - i // not closed: take the rest
				}
				p.rec = append(p.rec, rec[i:i+j]...)
				i += j + 1
				if i < len(rec) && rec[i] == '"' {
					p.rec = append(p.rec, '"')
					i++
					continue
				}
				break
			}
		}
		j := 0
		if i < len(rec) {
			if j = bytes.IndexByte(rec[i:], p.delim); j < 0 {
				j = len(rec) - i
			}
		}
		if j > 0 {
			p.rec = append(p.rec, trimSpaces(rec[i:i+j])...)
		}
		i += j
		p.ends = append(p.ends, len(p.rec))
		if i >= len(rec) {
			break
		}
		i++ // the delimiter
	}
	start := 0
	for _, end := range p.ends {
		p.fields = append(p.fields, p.rec[start:end])
		start = end
	}
	return p.fields
}

func trimSpaces(b []byte) []byte {
	for len(b) > 0 && b[0] == ' ' {
		b = b[1:]
	}
	for len(b) > 0 && b[len(b)-1] == ' ' {
		b = b[:len(b)-1]
	}
	return b
}

// hexValues maps a hex digit to its value and anything else to 0xff.
var hexValues = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i, c := range "0123456789abcdef" {
		t[c] = byte(i)
	}
	for i, c := range "ABCDEF" {
		t[c] = byte(10 + i)
	}
	return t
}()

// uuidDigits36 are where the 16 byte pairs start in the canonical form.
var uuidDigits36 = [16]int{0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34}

// parseUUID is operators.ParseUUID with a table-driven fast path for the
// two usual forms (a bulk load parses millions of them); whatever the fast
// path does not accept is decided by operators.ParseUUID itself, so the
// accepted forms are the stream's. A test checks that both agree.
func parseUUID(b []byte) (u operators.UUID, ok bool) {
	var bad byte
	switch {
	case len(b) == 36 && b[8] == '-' && b[13] == '-' && b[18] == '-' && b[23] == '-':
		for j, i := range uuidDigits36 {
			hi, lo := hexValues[b[i]], hexValues[b[i+1]]
			bad |= hi | lo
			u[j] = hi<<4 | lo
		}
	case len(b) == 32:
		for j := range 16 {
			hi, lo := hexValues[b[2*j]], hexValues[b[2*j+1]]
			bad |= hi | lo
			u[j] = hi<<4 | lo
		}
	default:
		return operators.ParseUUID(b)
	}
	if bad > 15 {
		return operators.ParseUUID(b)
	}
	return u, true
}
