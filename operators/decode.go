package operators

import (
	"encoding/binary"
	"math"
	"math/bits"
	"strconv"
	"unsafe"
)

// Reason says why a record was refused. Refused records go to the
// dead-letter topic with the reason's String in a header.
type Reason uint8

// The reasons a record can be refused. The zero value means accepted.
const (
	OK Reason = iota
	NotJSON
	NotObject
	NoUUID
	BadUUID
	NoEventTime
	BadEventTime
	TooFarInFuture
)

var reasonText = [...]string{
	OK:             "ok",
	NotJSON:        "not_json",
	NotObject:      "not_object",
	NoUUID:         "missing_uuid",
	BadUUID:        "bad_uuid",
	NoEventTime:    "missing_event_time",
	BadEventTime:   "bad_event_time",
	TooFarInFuture: "event_time_too_far_in_future",
}

func (r Reason) String() string {
	if int(r) < len(reasonText) {
		return reasonText[r]
	}
	return "unknown"
}

// Event is a decoded input record.
type Event struct {
	UUID      UUID
	EventTime int64  // epoch milliseconds
	Payload   []byte // the JSON object without the uuid and event-time members; aliases the decoder's buffer
}

// Decoder extracts the uuid and event-time members from a JSON object
// without allocating. It validates the whole value as JSON and rebuilds the
// payload from the remaining members, byte for byte, in their order.
//
// It makes one pass over the value, and takes a few shortcuts on the way:
// strings are scanned 8 bytes at a time (see specialBytes); the members
// that go to the payload are copied in runs rather than one by one (see
// Decode); a uuid is parsed as it is scanned (see scanUUIDValue); integers
// are read 8 digits at a time (see parseInt). decode_ref_test.go keeps the
// plain implementation these must agree with.
type Decoder struct {
	uuidField memberName
	timeField memberName
	payload   []byte

	// Where the last call found the uuid and event-time values:
	// b[uuidAt:uuidEnd] and b[timeAt:timeEnd], an end of 0 meaning none
	// (a value cannot end there). They live here rather than in Decode's
	// locals to leave its loop more registers.
	uuidAt, uuidEnd, timeAt, timeEnd int
	// The uuid of the last uuid member, and whether it was one.
	uuid       UUID
	uuidParsed bool
}

// NewDecoder returns a decoder for the given member names.
func NewDecoder(uuidField, timeField string) *Decoder {
	return &Decoder{uuidField: newMemberName(uuidField), timeField: newMemberName(timeField), payload: make([]byte, 0, 512)}
}

// memberName is a member name the decoder looks for. Names of up to 8
// bytes, the usual, compare with one load and no call.
type memberName struct {
	s    string
	word uint64 // s's first 8 bytes (at most), little-endian
	mask uint64 // the bytes of word that s fills
}

func newMemberName(s string) memberName {
	n := memberName{s: s}
	for i := 0; i < len(s) && i < 8; i++ {
		n.word |= uint64(s[i]) << (8 * i)
		n.mask |= 0xff << (8 * i)
	}
	return n
}

// is tells whether the raw name b[start:end] is n.
func (n *memberName) is(b []byte, start, end int) bool {
	if end-start != len(n.s) {
		return false
	}
	if len(n.s) <= 8 && start+8 <= len(b) {
		return binary.LittleEndian.Uint64(b[start:start+8])&n.mask == n.word
	}
	return string(b[start:end]) == n.s
}

// Decode parses value into ev. ev.Payload stays valid until the next call.
//
// Member names are compared as they are written, escapes and all. When a
// name occurs more than once the last member wins, and all of them are left
// out of the payload. The payload is "{", the other members (from the
// opening quote of the name to the end of the value, whitespace inside a
// member kept) joined by ",", and "}".
func (d *Decoder) Decode(value []byte, ev *Event) Reason {
	b := value
	i := ws(b, 0)
	if i >= len(b) {
		return NotJSON
	}
	if b[i] != '{' {
		var ok bool
		if i, ok = scanValue(b, i, 0); !ok || ws(b, i) != len(b) {
			return NotJSON
		}
		return NotObject
	}
	d.payload = append(d.payload[:0], '{')
	// The members that go to the payload are copied in runs: a run is a
	// span b[runStart:runEnd] of members separated by bare commas, which
	// is exactly what the payload holds for them, so it is copied at once
	// when the next member is not adjacent (or is extracted) and at the
	// end. runEnd < 0 means no run is pending.
	runStart, runEnd := 0, -1
	d.uuidAt, d.uuidEnd, d.timeAt, d.timeEnd = 0, 0, 0, 0
	if i = ws(b, i+1); i < len(b) && b[i] == '}' {
		i++
	} else {
		for {
			var ok bool
			if i, ok = skipTo(b, i, '"'); !ok {
				return NotJSON
			}
			memberStart := i
			keyEnd, ok := scanString(b, i+1)
			if !ok {
				return NotJSON
			}
			if i, ok = skipTo(b, keyEnd, ':'); !ok {
				return NotJSON
			}
			valStart := ws(b, i+1)
			if d.uuidField.is(b, memberStart+1, keyEnd-1) {
				if i, ok = d.scanUUIDValue(b, valStart); !ok {
					return NotJSON
				}
				d.uuidAt, d.uuidEnd = valStart, i
			} else {
				if valStart < len(b) && b[valStart] == '"' { // the commonest value, without going through scanValue
					i, ok = scanString(b, valStart+1)
				} else {
					i, ok = scanValue(b, valStart, 0)
				}
				if !ok {
					return NotJSON
				}
				if d.timeField.is(b, memberStart+1, keyEnd-1) {
					d.timeAt, d.timeEnd = valStart, i
				} else {
					if memberStart != runEnd+1 { // not adjacent to the run (nor is there one)
						d.flush(b, runStart, runEnd)
						runStart = memberStart
					}
					runEnd = i
				}
			}
			if i, ok = skipTo(b, i, ','); ok {
				i++
				continue
			}
			if i < len(b) && b[i] == '}' {
				i++
				break
			}
			return NotJSON
		}
	}
	if ws(b, i) != len(b) {
		return NotJSON
	}
	d.flush(b, runStart, runEnd)
	d.payload = append(d.payload, '}')
	ev.Payload = d.payload

	uuidVal := b[d.uuidAt:d.uuidEnd]
	if d.uuidEnd == 0 || string(uuidVal) == "null" {
		return NoUUID
	}
	if !d.uuidParsed { // (a string scanUUIDValue could not parse is no uuid)
		return BadUUID
	}
	ev.UUID = d.uuid
	timeVal := b[d.timeAt:d.timeEnd]
	if d.timeEnd == 0 || string(timeVal) == "null" {
		return NoEventTime
	}
	var ok bool
	if timeVal[0] == '"' {
		ev.EventTime, ok = parseTimeString(timeVal[1 : len(timeVal)-1])
	} else {
		ev.EventTime, ok = parseEpochMillis(timeVal)
	}
	if !ok || ev.EventTime < MinEventTime || ev.EventTime > MaxEventTime {
		return BadEventTime
	}
	return OK
}

// scanUUIDValue scans the value at i of a uuid member. A string in either
// form ParseUUID accepts is parsed on the way, into d.uuid, and needs no
// other scan: hex digits and dashes are plain string content, so its
// closing quote is the first one. d.uuidParsed tells whether it was such
// a string.
func (d *Decoder) scanUUIDValue(b []byte, i int) (int, bool) {
	d.uuidParsed = false
	if i >= len(b) || b[i] != '"' {
		return scanValue(b, i, 0)
	}
	for _, n := range [...]int{36, 32} {
		if end := i + 1 + n; end < len(b) && b[end] == '"' && parseUUID(&d.uuid, b[i+1:end]) {
			d.uuidParsed = true
			return end + 1, true
		}
	}
	return scanString(b, i+1)
}

// flush appends the run of payload members b[start:end], if any (end >= 0).
func (d *Decoder) flush(b []byte, start, end int) {
	if end < 0 {
		return
	}
	if len(d.payload) > 1 {
		d.payload = append(d.payload, ',')
	}
	d.payload = append(d.payload, b[start:end]...)
}

// The accepted event times: after the epoch (0 is the usual "unset" bug of
// a client, and would make its user never new again) and before 2106-02-07,
// where ClickHouse's DateTime ends.
const (
	MinEventTime int64 = 1
	MaxEventTime int64 = 1<<32*1000 - 1
)

// ParseEventTime reads an event time given as bare text (a CSV field, say)
// by the rules Decoder applies to the event-time member: text that is a
// JSON number is read as that number would be (epoch milliseconds, a
// fraction truncated towards minus infinity), anything else as the contents
// of a JSON string (decimal epoch milliseconds, or RFC 3339). The time must
// lie in MinEventTime..MaxEventTime.
func ParseEventTime(b []byte) (int64, bool) {
	n, ok := parseInt(b)
	if !ok {
		if isJSONNumber(b) {
			n, ok = parseEpochMillis(b)
		} else {
			n, ok = parseTimeString(b)
		}
	}
	return n, ok && n >= MinEventTime && n <= MaxEventTime
}

// isJSONNumber tells whether b is exactly one JSON number.
func isJSONNumber(b []byte) bool {
	i, ok := scanNumber(b, 0)
	return ok && i == len(b)
}

// parseEpochMillis parses a JSON number of epoch milliseconds. A fraction is
// truncated towards minus infinity.
func parseEpochMillis(b []byte) (int64, bool) {
	if n, ok := parseInt(b); ok {
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

// parseInt parses an optionally negative decimal integer of up to 18
// digits, 8 digits at a time while there are 8.
func parseInt(b []byte) (int64, bool) {
	neg := false
	if len(b) > 0 && b[0] == '-' {
		neg, b = true, b[1:]
	}
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n uint64
	for ; len(b) >= 8; b = b[8:] {
		w := binary.LittleEndian.Uint64(b)
		if nonDigits(w) != 0 {
			return 0, false
		}
		n = n*1e8 + eightDigits(w)
	}
	for _, c := range b {
		if c-'0' > 9 {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	if neg {
		return -int64(n), true
	}
	return int64(n), true
}

// nonDigits flags the bytes of w (8 bytes of text, little-endian) that are
// not decimal digits: such a byte has its high bit set in the result. As in
// specialBytes, only the lowest flag is exact. A byte x is flagged when
// x < '0' (x - '0' borrows, x has no high bit), when x > '9' (x + 0x46
// reaches the high bit) or when it has the high bit itself.
func nonDigits(w uint64) uint64 {
	return ((w-'0'*lsb)&^w | (w + (0x80-':')*lsb) | w) & msb
}

// eightDigits returns the value of the 8 decimal digits in w, the first in
// its lowest byte: pairs of digits are combined into bytes, pairs of those
// into 16-bit halves, and the two 4-digit halves of each 32-bit half with
// one multiplication (see Lemire, "Quickly parsing eight digits", 2018).
func eightDigits(w uint64) uint64 {
	w -= '0' * lsb
	w = w*10 + w>>8 // byte 2k: 10*digit(2k) + digit(2k+1)
	return ((w&0x000000ff000000ff)*(100+1000000<<32) + (w>>16&0x000000ff000000ff)*(1+10000<<32)) >> 32
}

// parseTimeString accepts RFC 3339 (T, t or a space between date and time;
// Z, z or a numeric offset; any number of fraction digits, kept to the
// millisecond) or a string of decimal epoch milliseconds.
func parseTimeString(b []byte) (int64, bool) {
	if n, ok := parseInt(b); ok {
		return n, true
	}
	if len(b) < 20 || b[4] != '-' || b[7] != '-' || (b[10] != 'T' && b[10] != 't' && b[10] != ' ') || b[13] != ':' || b[16] != ':' {
		return 0, false
	}
	year, ok1 := digits(b[0:4])
	month, ok2 := digits(b[5:7])
	day, ok3 := digits(b[8:10])
	hour, ok4 := digits(b[11:13])
	minute, ok5 := digits(b[14:16])
	sec, ok6 := digits(b[17:19])
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
		oh, ok1 := digits(b[i+1 : i+3])
		om, ok2 := digits(b[i+4 : i+6])
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

func digits(b []byte) (int64, bool) {
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func daysIn(year, month int64) int64 {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil returns the days since 1970-01-01 of a proleptic Gregorian
// date (H. Hinnant's algorithm).
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := floorDiv(y, 400)
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

// The JSON validator. Each scan function takes the index where a token
// starts and returns the index just past it, and whether it is well formed.
// Indexes rather than a scanner struct keep the position in a register.

// ws returns the index of the first byte at or after i that is not JSON
// whitespace. It is small enough to inline, so the common case, no
// whitespace at all, costs no call.
func ws(b []byte, i int) int {
	if i < len(b) && b[i] > ' ' {
		return i
	}
	return skipWS(b, i)
}

// skipTo skips whitespace from i and tells whether c comes next. It
// returns the index of c, or of whatever is there instead (len(b) at the
// end). Compact JSON has no whitespace, so c is tried first.
func skipTo(b []byte, i int, c byte) (int, bool) {
	if i < len(b) && b[i] == c {
		return i, true
	}
	i = skipWS(b, i)
	return i, i < len(b) && b[i] == c
}

func skipWS(b []byte, i int) int {
	for ; i < len(b); i++ {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
		default:
			return i
		}
	}
	return i
}

// Masks for the SWAR (SIMD within a register) string scan: lsb has the
// lowest bit of every byte set, msb the highest.
const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// specialBytes flags the bytes of w (8 bytes of a string, little-endian)
// that end a run of plain string content: '"', '\\' and the control
// characters below 0x20. A flagged byte has its high bit set in the result.
//
// It is the classic test for a byte below n, (x - n*lsb) &^ x & msb, applied
// to w with n = 0x20, and with n = 1 (a zero byte) to w xor '"' and w xor
// '\\'. The xors do not change high bits, so one &^ w serves all three. A
// borrow can also flag a byte above a flagged one, never below it: the
// lowest flag is exact, and it is the only one used.
func specialBytes(w uint64) uint64 {
	q := w ^ ('"' * lsb)   // zero bytes where w has '"'
	bs := w ^ ('\\' * lsb) // zero bytes where w has '\\'
	return ((q - lsb) | (bs - lsb) | (w - 0x20*lsb)) &^ w & msb
}

// scanString scans the rest of a string whose opening quote is at i-1 and
// returns the index past its closing quote. Plain content is skipped 8
// bytes at a time; only the bytes specialBytes flags are looked at one by
// one. Escapes are validated, not decoded.
func scanString(b []byte, i int) (int, bool) {
	for {
		// Skip to the next special byte, c at b[i]: 8 bytes at a time
		// while there are 8, then bytewise.
		var c byte
		for ; i+8 <= len(b); i += 8 {
			w := binary.LittleEndian.Uint64(b[i : i+8]) // (b[i:] would cost more bounds checks)
			if m := specialBytes(w); m != 0 {
				n := bits.TrailingZeros64(m) // the flag is the top bit of byte n/8
				i += n >> 3
				if c = byte(w >> (n & 56)); c == '"' { // the usual end
					return i + 1, true
				}
				goto special
			}
		}
		for ; ; i++ {
			if i >= len(b) {
				return i, false
			}
			if c = b[i]; c == '"' || c == '\\' || c < 0x20 {
				break
			}
		}
	special:
		switch c {
		case '"':
			return i + 1, true
		case '\\':
			if i+1 >= len(b) {
				return i, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+5 >= len(b) || hexVal[b[i+2]]|hexVal[b[i+3]]|hexVal[b[i+4]]|hexVal[b[i+5]] > 15 {
					return i, false
				}
				i += 6
			default:
				return i, false
			}
		default: // a control character
			return i, false
		}
	}
}

const maxDepth = 512

// scanValue scans the value at i, which is nested depth containers deep.
func scanValue(b []byte, i, depth int) (int, bool) {
	if i >= len(b) || depth > maxDepth {
		return i, false
	}
	switch c := b[i]; {
	case c == '"':
		return scanString(b, i+1)
	case c == '-' || (c >= '0' && c <= '9'):
		return scanNumber(b, i)
	case c == '{':
		return scanObject(b, i+1, depth)
	case c == '[':
		return scanArray(b, i+1, depth)
	case c == 't':
		return lit(b, i, "true")
	case c == 'f':
		return lit(b, i, "false")
	case c == 'n':
		return lit(b, i, "null")
	}
	return i, false
}

// scanObject scans the rest of an object whose '{' is at i-1.
func scanObject(b []byte, i, depth int) (int, bool) {
	if i = ws(b, i); i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	var ok bool
	for {
		if i, ok = skipTo(b, i, '"'); !ok {
			return i, false
		}
		if i, ok = scanString(b, i+1); !ok {
			return i, false
		}
		if i, ok = skipTo(b, i, ':'); !ok {
			return i, false
		}
		if i, ok = scanValue(b, ws(b, i+1), depth+1); !ok {
			return i, false
		}
		if i, ok = skipTo(b, i, ','); ok {
			i++
		} else if i < len(b) && b[i] == '}' {
			return i + 1, true
		} else {
			return i, false
		}
	}
}

// scanArray scans the rest of an array whose '[' is at i-1.
func scanArray(b []byte, i, depth int) (int, bool) {
	if i = ws(b, i); i < len(b) && b[i] == ']' {
		return i + 1, true
	}
	var ok bool
	for {
		if i, ok = scanValue(b, ws(b, i), depth+1); !ok {
			return i, false
		}
		if i, ok = skipTo(b, i, ','); ok {
			i++
		} else if i < len(b) && b[i] == ']' {
			return i + 1, true
		} else {
			return i, false
		}
	}
}

func lit(b []byte, i int, w string) (int, bool) {
	if len(b)-i < len(w) || string(b[i:i+len(w)]) != w {
		return i, false
	}
	return i + len(w), true
}

// scanNumber scans the number at i (b[i] is '-' or a digit, or, from
// isJSONNumber, anything).
func scanNumber(b []byte, i int) (int, bool) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return i, false
	case b[i] == '0':
		i++
	case b[i] >= '1' && b[i] <= '9':
		i = digitsEnd(b, i+1)
	default:
		return i, false
	}
	if i < len(b) && b[i] == '.' {
		n := i + 1
		if i = digitsEnd(b, n); i == n {
			return i, false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		n := i
		if i = digitsEnd(b, n); i == n {
			return i, false
		}
	}
	return i, true
}

// digitsEnd returns the index of the first byte at or after i that is not
// a decimal digit, looking at 8 bytes at a time while there are 8.
func digitsEnd(b []byte, i int) int {
	for ; i+8 <= len(b); i += 8 {
		if m := nonDigits(binary.LittleEndian.Uint64(b[i : i+8])); m != 0 {
			return i + bits.TrailingZeros64(m)>>3
		}
	}
	for i < len(b) && b[i]-'0' <= 9 {
		i++
	}
	return i
}
