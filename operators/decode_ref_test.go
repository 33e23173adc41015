package operators

import (
	"math"
	"strconv"
	"unsafe"
)

// This file keeps, for tests only, the decoder as it was before its fast
// paths (SWAR string scanning, bulk payload copies, table-driven uuid
// parsing) were written: the fuzz and randomized tests in
// decode_equiv_test.go check that the live Decoder agrees with it on every
// input. Only the names differ from the original. (The calendar arithmetic,
// daysIn and daysFromCivil, did not change and is shared.)

// refDecoder is the reference Decoder.
type refDecoder struct {
	uuidField []byte
	timeField []byte
	payload   []byte
}

func newRefDecoder(uuidField, timeField string) *refDecoder {
	return &refDecoder{uuidField: []byte(uuidField), timeField: []byte(timeField), payload: make([]byte, 0, 512)}
}

// Decode parses value into ev. ev.Payload stays valid until the next call.
func (d *refDecoder) Decode(value []byte, ev *Event) Reason {
	s := refScanner{b: value}
	s.ws()
	if s.i >= len(s.b) {
		return NotJSON
	}
	if s.b[s.i] != '{' {
		if !s.value() {
			return NotJSON
		}
		if s.ws(); s.i != len(s.b) {
			return NotJSON
		}
		return NotObject
	}
	s.i++
	d.payload = append(d.payload[:0], '{')
	var uuidVal, timeVal []byte
	var timeIsString, haveUUID, haveTime, uuidIsString bool
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
	} else {
		for {
			s.ws()
			memberStart := s.i
			key, ok := s.str()
			if !ok {
				return NotJSON
			}
			s.ws()
			if s.i >= len(s.b) || s.b[s.i] != ':' {
				return NotJSON
			}
			s.i++
			s.ws()
			valStart := s.i
			if !s.value() {
				return NotJSON
			}
			val := s.b[valStart:s.i]
			switch {
			case string(key) == string(d.uuidField):
				uuidVal, haveUUID, uuidIsString = val, true, val[0] == '"'
			case string(key) == string(d.timeField):
				timeVal, haveTime, timeIsString = val, true, val[0] == '"'
			default:
				if len(d.payload) > 1 {
					d.payload = append(d.payload, ',')
				}
				d.payload = append(d.payload, s.b[memberStart:s.i]...)
			}
			s.ws()
			if s.i >= len(s.b) {
				return NotJSON
			}
			if s.b[s.i] == ',' {
				s.i++
				continue
			}
			if s.b[s.i] == '}' {
				s.i++
				break
			}
			return NotJSON
		}
	}
	s.ws()
	if s.i != len(s.b) {
		return NotJSON
	}
	d.payload = append(d.payload, '}')
	ev.Payload = d.payload

	if !haveUUID || string(uuidVal) == "null" {
		return NoUUID
	}
	if !uuidIsString {
		return BadUUID
	}
	var ok bool
	if ev.UUID, ok = refParseUUID(uuidVal[1 : len(uuidVal)-1]); !ok {
		return BadUUID
	}
	if !haveTime || string(timeVal) == "null" {
		return NoEventTime
	}
	if timeIsString {
		ev.EventTime, ok = refParseTimeString(timeVal[1 : len(timeVal)-1])
	} else {
		ev.EventTime, ok = refParseEpochMillis(timeVal)
	}
	if !ok || ev.EventTime < MinEventTime || ev.EventTime > MaxEventTime {
		return BadEventTime
	}
	return OK
}

// refIsJSONNumber tells whether b is exactly one JSON number.
func refIsJSONNumber(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	s := refScanner{b: b}
	return s.number() && s.i == len(b)
}

// refParseUUID accepts the canonical form (8-4-4-4-12 hex digits with dashes),
// the same in upper or mixed case, or 32 hex digits without dashes. All of
// them denote the same user.
func refParseUUID(s []byte) (u UUID, ok bool) {
	switch len(s) {
	case 36:
		if s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
			return u, false
		}
		j := 0
		for i := 0; i < 36; {
			if i == 8 || i == 13 || i == 18 || i == 23 {
				i++
				continue
			}
			hi, lo := refUnhex(s[i]), refUnhex(s[i+1])
			if hi|lo > 15 {
				return u, false
			}
			u[j] = hi<<4 | lo
			j++
			i += 2
		}
		return u, true
	case 32:
		for j := 0; j < 16; j++ {
			hi, lo := refUnhex(s[2*j]), refUnhex(s[2*j+1])
			if hi|lo > 15 {
				return u, false
			}
			u[j] = hi<<4 | lo
		}
		return u, true
	}
	return u, false
}

func refUnhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10
	}
	return 255
}

// refParseEventTime reads an event time given as bare text (a CSV field, say)
// by the rules Decoder applies to the event-time member: text that is a
// JSON number is read as that number would be (epoch milliseconds, a
// fraction truncated towards minus infinity), anything else as the contents
// of a JSON string (decimal epoch milliseconds, or RFC 3339). The time must
// lie in MinEventTime..MaxEventTime.
func refParseEventTime(b []byte) (int64, bool) {
	n, ok := refParseInt(b)
	if !ok {
		if refIsJSONNumber(b) {
			n, ok = refParseEpochMillis(b)
		} else {
			n, ok = refParseTimeString(b)
		}
	}
	return n, ok && n >= MinEventTime && n <= MaxEventTime
}

// refParseEpochMillis parses a JSON number of epoch milliseconds. A fraction is
// truncated towards minus infinity.
func refParseEpochMillis(b []byte) (int64, bool) {
	if n, ok := refParseInt(b); ok {
		return n, true
	}
	if b[0] != '-' && (b[0] < '0' || b[0] > '9') {
		return 0, false
	}
	f, err := strconv.ParseFloat(unsafe.String(&b[0], len(b)), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) || math.Abs(f) > 1<<53 {
		return 0, false
	}
	return int64(math.Floor(f)), true
}

func refParseInt(b []byte) (int64, bool) {
	neg := false
	if len(b) > 0 && b[0] == '-' {
		neg, b = true, b[1:]
	}
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// refParseTimeString accepts RFC 3339 (T, t or a space between date and time;
// Z, z or a numeric offset; any number of fraction digits, kept to the
// millisecond) or a string of decimal epoch milliseconds.
func refParseTimeString(b []byte) (int64, bool) {
	if n, ok := refParseInt(b); ok {
		return n, true
	}
	if len(b) < 20 || b[4] != '-' || b[7] != '-' || (b[10] != 'T' && b[10] != 't' && b[10] != ' ') || b[13] != ':' || b[16] != ':' {
		return 0, false
	}
	year, ok1 := refDigits(b[0:4])
	month, ok2 := refDigits(b[5:7])
	day, ok3 := refDigits(b[8:10])
	hour, ok4 := refDigits(b[11:13])
	minute, ok5 := refDigits(b[14:16])
	sec, ok6 := refDigits(b[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || month < 1 || month > 12 || day < 1 ||
		day > daysIn(year, month) || hour > 23 || minute > 59 || sec > 60 {
		return 0, false
	}
	if sec == 60 { // a leap second counts as the last instant of its minute
		sec = 59
	}
	i := 19
	var ms int64
	if i < len(b) && b[i] == '.' {
		i++
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			if i-start < 3 {
				ms = ms*10 + int64(b[i]-'0')
			}
			i++
		}
		n := i - start
		if n == 0 {
			return 0, false
		}
		for ; n < 3; n++ {
			ms *= 10
		}
	}
	if i >= len(b) {
		return 0, false
	}
	var offset int64
	switch b[i] {
	case 'Z', 'z':
		i++
	case '+', '-':
		if len(b)-i != 6 || b[i+3] != ':' {
			return 0, false
		}
		oh, ok1 := refDigits(b[i+1 : i+3])
		om, ok2 := refDigits(b[i+4 : i+6])
		if !ok1 || !ok2 || oh > 23 || om > 59 {
			return 0, false
		}
		offset = (oh*60 + om) * 60 * 1000
		if b[i] == '-' {
			offset = -offset
		}
		i += 6
	default:
		return 0, false
	}
	if i != len(b) {
		return 0, false
	}
	days := daysFromCivil(year, month, day)
	return days*msPerDay + ((hour*60+minute)*60+sec)*1000 + ms - offset, true
}

func refDigits(b []byte) (int64, bool) {
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// refScanner is a minimal JSON validator over a byte slice.
type refScanner struct {
	b []byte
	i int
}

func (s *refScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// str scans a string and returns its raw contents (escapes not decoded).
func (s *refScanner) str() ([]byte, bool) {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false
	}
	s.i++
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			raw := s.b[start:s.i]
			s.i++
			return raw, true
		case c == '\\':
			s.i++
			if s.i >= len(s.b) {
				return nil, false
			}
			switch s.b[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i++
			case 'u':
				if s.i+4 >= len(s.b) {
					return nil, false
				}
				for k := 1; k <= 4; k++ {
					if refUnhex(s.b[s.i+k]) > 15 {
						return nil, false
					}
				}
				s.i += 5
			default:
				return nil, false
			}
		case c < 0x20:
			return nil, false
		default:
			s.i++
		}
	}
	return nil, false
}

const refMaxDepth = 512

func (s *refScanner) value() bool { return s.valueDepth(0) }

func (s *refScanner) valueDepth(depth int) bool {
	if s.i >= len(s.b) || depth > refMaxDepth {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		_, ok := s.str()
		return ok
	case c == '{':
		s.i++
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == '}' {
			s.i++
			return true
		}
		for {
			s.ws()
			if _, ok := s.str(); !ok {
				return false
			}
			s.ws()
			if s.i >= len(s.b) || s.b[s.i] != ':' {
				return false
			}
			s.i++
			s.ws()
			if !s.valueDepth(depth + 1) {
				return false
			}
			s.ws()
			if s.i >= len(s.b) {
				return false
			}
			if s.b[s.i] == ',' {
				s.i++
				continue
			}
			if s.b[s.i] == '}' {
				s.i++
				return true
			}
			return false
		}
	case c == '[':
		s.i++
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == ']' {
			s.i++
			return true
		}
		for {
			s.ws()
			if !s.valueDepth(depth + 1) {
				return false
			}
			s.ws()
			if s.i >= len(s.b) {
				return false
			}
			if s.b[s.i] == ',' {
				s.i++
				continue
			}
			if s.b[s.i] == ']' {
				s.i++
				return true
			}
			return false
		}
	case c == 't':
		return s.lit("true")
	case c == 'f':
		return s.lit("false")
	case c == 'n':
		return s.lit("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	}
	return false
}

func (s *refScanner) lit(w string) bool {
	if len(s.b)-s.i < len(w) || string(s.b[s.i:s.i+len(w)]) != w {
		return false
	}
	s.i += len(w)
	return true
}

func (s *refScanner) number() bool {
	if s.b[s.i] == '-' {
		s.i++
	}
	if s.i >= len(s.b) {
		return false
	}
	if s.b[s.i] == '0' {
		s.i++
	} else if s.b[s.i] >= '1' && s.b[s.i] <= '9' {
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
		}
	} else {
		return false
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		n := s.i
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
		}
		if s.i == n {
			return false
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		n := s.i
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
		}
		if s.i == n {
			return false
		}
	}
	return true
}
