package operators

import (
	"bytes"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

// The tests in this file check that the Decoder (and ParseUUID and
// isJSONNumber) agree with the reference implementation in
// decode_ref_test.go on generated, mutated and fuzzed inputs.

// equivFields are the member-name pairs the decoders are compared with: the
// defaults, short names, one name for both members, and the pair the
// producer's dump mode uses (an event-time name no record has).
var equivFields = [][2]string{{"uuid", "event_time"}, {"u", "t"}, {"id", "id"}, {"uuid", "\x00"}}

type decoderPair struct {
	fields [2]string
	d      *Decoder
	ref    *refDecoder
}

func newDecoderPairs() []decoderPair {
	var ps []decoderPair
	for _, f := range equivFields {
		ps = append(ps, decoderPair{f, NewDecoder(f[0], f[1]), newRefDecoder(f[0], f[1])})
	}
	return ps
}

// check decodes in with both decoders and reports any difference in the
// reason, the uuid (unless it was refused: ParseUUID's result on failure is
// not part of the contract), the event time or the payload. Both start from
// the same non-zero event, so fields a decoder leaves alone are compared
// too.
func (p *decoderPair) check(t testing.TB, in []byte) Reason {
	t.Helper()
	orig := bytes.Clone(in)
	sentinel := Event{UUID: UUID{0xde, 0xad}, EventTime: -42, Payload: []byte("sentinel")}
	got, want := sentinel, sentinel
	wr := p.ref.Decode(in, &want)
	gr := p.d.Decode(in, &got)
	if !bytes.Equal(in, orig) {
		t.Fatalf("fields %q: Decode changed its input %q to %q", p.fields, orig, in)
	}
	if gr != wr {
		t.Fatalf("fields %q, input %q: reason %v, reference %v", p.fields, in, gr, wr)
	}
	if wr != BadUUID && got.UUID != want.UUID {
		t.Fatalf("fields %q, input %q (%v): uuid %v, reference %v", p.fields, in, wr, got.UUID, want.UUID)
	}
	if got.EventTime != want.EventTime {
		t.Fatalf("fields %q, input %q (%v): event time %d, reference %d", p.fields, in, wr, got.EventTime, want.EventTime)
	}
	if !bytes.Equal(got.Payload, want.Payload) || (got.Payload == nil) != (want.Payload == nil) {
		t.Fatalf("fields %q, input %q (%v):\npayload   %q\nreference %q", p.fields, in, wr, got.Payload, want.Payload)
	}
	return wr
}

// checkScalars compares ParseUUID and isJSONNumber with the reference on in.
func checkScalars(t testing.TB, in []byte) {
	t.Helper()
	gu, gok := ParseUUID(in)
	wu, wok := refParseUUID(in)
	if gok != wok || (gok && gu != wu) {
		t.Fatalf("ParseUUID(%q) = %v %v, reference %v %v", in, gu, gok, wu, wok)
	}
	if !gok && gu != (UUID{}) {
		t.Fatalf("ParseUUID(%q) failed with a non-zero uuid %v", in, gu)
	}
	if g, w := isJSONNumber(in), refIsJSONNumber(in); g != w {
		t.Fatalf("isJSONNumber(%q) = %v, reference %v", in, g, w)
	}
	if g, gok := parseInt(in); true {
		if w, wok := refParseInt(in); g != w || gok != wok {
			t.Fatalf("parseInt(%q) = %d %v, reference %d %v", in, g, gok, w, wok)
		}
	}
	if g, gok := ParseEventTime(in); true {
		if w, wok := refParseEventTime(in); g != w || gok != wok {
			t.Fatalf("ParseEventTime(%q) = %d %v, reference %d %v", in, g, gok, w, wok)
		}
	}
	if i, j := digitsEnd(in, 0), refDigitsEnd(in); i != j {
		t.Fatalf("digitsEnd(%q) = %d, reference %d", in, i, j)
	}
}

// refDigitsEnd is digitsEnd one byte at a time.
func refDigitsEnd(b []byte) int {
	i := 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// TestNumbersMatchReference covers the integer fast paths: digit strings
// of every length around the 8-digit steps and the 18-digit limit, signed,
// with a non-digit (any byte) anywhere.
func TestNumbersMatchReference(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	for i := 0; i < 300000; i++ {
		s := make([]byte, r.IntN(22))
		for k := range s {
			s[k] = byte('0' + r.IntN(10))
		}
		if len(s) > 0 && r.IntN(4) == 0 {
			s[0] = '-'
		}
		if len(s) > 0 && r.IntN(2) == 0 {
			s[r.IntN(len(s))] = byte(r.IntN(256))
		}
		if len(s) > 1 && r.IntN(4) == 0 {
			s[r.IntN(len(s))] = ".eE+-"[r.IntN(5)]
		}
		checkScalars(t, s)
	}
	for _, s := range []string{"999999999999999999", "-999999999999999999", "1000000000000000000", "00000000", "99999999",
		"12345678", "123456789", "4294967295999", "4294967296000", "1767225600123", "-0", "0.5", "1e3"} {
		checkScalars(t, []byte(s))
	}
}

// jsonGen generates JSON-ish records: objects with the uuid and event-time
// members in every form the decoder distinguishes, other members of every
// JSON type with escapes, non-ASCII and invalid UTF-8 in strings, random
// whitespace, duplicates, and sometimes a mutation or truncation that breaks
// them.
type jsonGen struct {
	r          *rand.Rand
	uuid, time string
	b          []byte
}

func (g *jsonGen) ws() {
	if g.r.IntN(4) != 0 {
		return
	}
	for n := 1 + g.r.IntN(3); n > 0; n-- {
		g.b = append(g.b, " \t\n\r"[g.r.IntN(4)])
	}
}

var strPieces = []string{
	"a", "page_view", "/products/42", "Zürich", "東京", "🚀", "é", `\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`,
	`\u00e9`, `\u00E9`, `\ud83d\ude00`, `\uABCD`, " ", "\x7f", "\xff", "\xc3", "12345678", "abcdefghijklmnop", "<>", "'",
}

// str appends a string literal of 0 to about 40 bytes, so that the special
// bytes land at every offset of the 8-byte words the scanner reads.
func (g *jsonGen) str() {
	g.b = append(g.b, '"')
	for n := g.r.IntN(8); n > 0; n-- {
		if g.r.IntN(3) == 0 {
			g.b = append(g.b, strPieces[g.r.IntN(len(strPieces))]...)
		} else {
			for k := g.r.IntN(9); k > 0; k-- {
				g.b = append(g.b, byte('a'+g.r.IntN(26)))
			}
		}
	}
	g.b = append(g.b, '"')
}

var numbers = []string{"0", "-0", "1", "-1", "42", "1767225600123", "-1767225600123", "1767225600123.9", "2.5e3", "1E+2",
	"-0.5e-3", "1e300", "0.000", "123456789012345678", "1234567890123456789", "9007199254740993", "4294967296000"}

func (g *jsonGen) value(depth int) {
	switch n := g.r.IntN(12); {
	case n < 4:
		g.str()
	case n < 7:
		g.b = append(g.b, numbers[g.r.IntN(len(numbers))]...)
	case n == 7:
		g.b = append(g.b, []string{"true", "false", "null"}[g.r.IntN(3)]...)
	case n < 10 && depth < 4:
		g.b = append(g.b, '{')
		for k := g.r.IntN(4); k > 0; k-- {
			g.ws()
			g.str()
			g.ws()
			g.b = append(g.b, ':')
			g.ws()
			g.value(depth + 1)
			g.ws()
			if k > 1 {
				g.b = append(g.b, ',')
			}
		}
		g.b = append(g.b, '}')
	case depth < 4:
		g.b = append(g.b, '[')
		for k := g.r.IntN(4); k > 0; k-- {
			g.ws()
			g.value(depth + 1)
			g.ws()
			if k > 1 {
				g.b = append(g.b, ',')
			}
		}
		g.b = append(g.b, ']')
	default:
		g.b = append(g.b, '1')
	}
}

// appendJSONString appends s as a JSON string literal.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, `\u00`...)
			b = append(b, hexDigits[c>>4], hexDigits[c&15])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

const canonUUID = "3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21"

func (g *jsonGen) uuidValue() {
	switch g.r.IntN(24) {
	case 0, 1, 2, 3, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19:
		g.b = append(g.b, `"`+canonUUID+`"`...)
	case 4:
		g.b = append(g.b, `"`+strings.ToUpper(canonUUID)+`"`...)
	case 5:
		g.b = append(g.b, `"`+strings.ReplaceAll(canonUUID, "-", "")+`"`...)
	case 6: // a random digit replaced by a random byte
		s := []byte(canonUUID)
		s[g.r.IntN(len(s))] = byte(g.r.IntN(128))
		g.b = appendJSONString(g.b, string(s))
	case 7:
		g.b = append(g.b, `"`+canonUUID[:35]+`"`...)
	case 8:
		g.b = append(g.b, "null"...)
	case 9:
		g.b = append(g.b, `"\u0033f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21"`...)
	default:
		g.value(0)
	}
}

var timeStrings = []string{"2026-01-01T00:00:00Z", "2026-01-01T00:00:00.123Z", "2026-01-01 00:00:00.1+08:00",
	"2026-01-01t00:00:00.123456789z", "2026-01-01T00:00:00", "1767225600123", "yesterday", "", "2026-13-45T25:61:00Z",
	"1970-01-01T00:00:00Z", "2106-02-07T06:28:15.999Z", "2106-02-07T06:28:16Z"}

func (g *jsonGen) timeValue() {
	switch g.r.IntN(10) {
	case 0:
		g.b = append(g.b, numbers[g.r.IntN(len(numbers))]...)
	case 1, 2:
		g.b = strconv.AppendInt(g.b, 1767225600123+g.r.Int64N(1e9), 10)
	case 3, 4, 5:
		g.b = appendJSONString(g.b, timeStrings[g.r.IntN(len(timeStrings))])
	case 6:
		g.b = append(g.b, "null"...)
	default:
		g.value(0)
	}
}

// record appends a record to g.b and returns it.
func (g *jsonGen) record() []byte {
	g.b = g.b[:0]
	g.ws()
	if g.r.IntN(20) == 0 { // not an object
		g.value(0)
		g.ws()
		return g.mutate()
	}
	// The members: mostly one uuid and one event time, sometimes none or
	// two of them, among up to 6 others, some of them near misses of the
	// names.
	var kinds []int
	for _, k := range []int{0, 1} {
		switch n := g.r.IntN(20); {
		case n == 0:
		case n == 1:
			kinds = append(kinds, k, k)
		default:
			kinds = append(kinds, k)
		}
	}
	for n := g.r.IntN(7); n > 0; n-- {
		kinds = append(kinds, 2+g.r.IntN(6))
	}
	g.r.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	g.b = append(g.b, '{')
	for i, k := range kinds {
		g.ws()
		switch k {
		case 0:
			g.b = appendJSONString(g.b, g.uuid)
			g.ws()
			g.b = append(g.b, ':')
			g.ws()
			g.uuidValue()
		case 1:
			g.b = appendJSONString(g.b, g.time)
			g.ws()
			g.b = append(g.b, ':')
			g.ws()
			g.timeValue()
		case 2: // a near miss of a member name
			g.b = append(g.b, []string{`"uui"`, `"uuidx"`, `"UUID"`, `"uu\u0069d"`, `"event_tim"`, `"t "`, `""`}[g.r.IntN(7)]...)
			g.b = append(g.b, ':')
			g.value(0)
		default:
			g.str()
			g.ws()
			g.b = append(g.b, ':')
			g.ws()
			g.value(0)
		}
		g.ws()
		if i < len(kinds)-1 {
			g.b = append(g.b, ',')
		}
	}
	g.b = append(g.b, '}')
	g.ws()
	return g.mutate()
}

// mutate breaks a quarter of the records: a byte deleted, replaced or
// inserted, or the record truncated.
func (g *jsonGen) mutate() []byte {
	const alphabet = "{}[]\",:0123456789.eE+-tfnul\\ \t\x00\x1f\x80\xffau"
	if len(g.b) == 0 || g.r.IntN(4) != 0 {
		return g.b
	}
	switch pos := g.r.IntN(len(g.b)); g.r.IntN(4) {
	case 0:
		g.b = append(g.b[:pos], g.b[pos+1:]...)
	case 1:
		g.b[pos] = alphabet[g.r.IntN(len(alphabet))]
	case 2:
		g.b = append(g.b[:pos], append([]byte{alphabet[g.r.IntN(len(alphabet))]}, g.b[pos:]...)...)
	default:
		g.b = g.b[:pos]
	}
	return g.b
}

func TestDecodeMatchesReference(t *testing.T) {
	n := 100000
	if testing.Short() {
		n = 10000
	}
	r := rand.New(rand.NewPCG(7, 8))
	pairs := newDecoderPairs()
	var counts [TooFarInFuture + 1]int
	for i := 0; i < n; i++ {
		p := &pairs[i%len(pairs)]
		g := jsonGen{r: r, uuid: p.fields[0], time: p.fields[1]}
		counts[p.check(t, g.record())]++
	}
	// The generator must reach every reason the decoder gives.
	for reason, c := range counts[:TooFarInFuture] {
		if c < n/1000 {
			t.Errorf("only %d of %d records were %v", c, n, Reason(reason))
		}
	}
	t.Logf("reasons: %v", counts)
}

// TestDecodeMatchesReferenceOnEdges covers what random generation is
// unlikely to hit: the nesting limit, escapes cut short at the end of the
// input, and special bytes at every position of an 8-byte word.
func TestDecodeMatchesReferenceOnEdges(t *testing.T) {
	pairs := newDecoderPairs()
	p := &pairs[0]
	const rec = `{"uuid":"` + canonUUID + `","event_time":1767225600123,"x":`
	for depth := maxDepth - 2; depth <= maxDepth+2; depth++ {
		for _, open := range []string{"[", `{"a":`} {
			close := "]"
			if open != "[" {
				close = "}"
			}
			v := strings.Repeat(open, depth) + "1" + strings.Repeat(close, depth)
			p.check(t, []byte(rec+v+"}"))
			p.check(t, []byte(v))
		}
	}
	for _, s := range []string{`"\`, `"\u`, `"\u1`, `"\u12`, `"\u123`, `"\u1234`, `"\u1234"`, `"\u123g"`, `"\x"`, `"`, `"a`} {
		p.check(t, []byte(s))
		p.check(t, []byte(rec+s))
		p.check(t, []byte(rec+s+"}"))
		p.check(t, []byte(`{"uuid":"`+canonUUID+`","event_time":1,`+s+`:1}`))
	}
	for pad := 0; pad < 24; pad++ {
		for _, special := range []string{`"`, `\"`, `\\`, `\u00e9`, "\x00", "\x1f", "\x7f", "\x80", "\xff", "é", `\q`} {
			for _, tail := range []string{`"`, `"}`, `","event_time":1}`} {
				s := `{"uuid":"` + canonUUID + `","p":"` + strings.Repeat("a", pad) + special + strings.Repeat("b", pad%9) + tail
				p.check(t, []byte(s))
				p.check(t, []byte(s[:len(s)-1]))
			}
		}
	}
}

func TestParseUUIDMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	const alphabet = "0123456789abcdefABCDEFgG-x/:@`\x00\xff"
	for i := 0; i < 200000; i++ {
		var s []byte
		if i%2 == 0 { // a valid form with a few bytes changed
			s = []byte([]string{canonUUID, strings.ToUpper(canonUUID), strings.ReplaceAll(canonUUID, "-", "")}[r.IntN(3)])
			for k := r.IntN(3); k > 0; k-- {
				s[r.IntN(len(s))] = alphabet[r.IntN(len(alphabet))]
			}
		} else {
			s = make([]byte, []int{31, 32, 33, 35, 36, 37}[r.IntN(6)])
			for k := range s {
				s[k] = alphabet[r.IntN(len(alphabet))]
			}
		}
		checkScalars(t, s)
	}
	for c := 0; c < 256; c++ { // every byte in every position
		for pos := 0; pos < 36; pos++ {
			s := []byte(canonUUID)
			s[pos] = byte(c)
			checkScalars(t, s)
			if pos < 32 {
				s := []byte(strings.ReplaceAll(canonUUID, "-", ""))
				s[pos] = byte(c)
				checkScalars(t, s)
			}
		}
	}
}

// FuzzDecode compares the Decoder with the reference on arbitrary input:
//
//	go test -run XXX -fuzz FuzzDecode -fuzztime 5m ./operators/
func FuzzDecode(f *testing.F) {
	r := rand.New(rand.NewPCG(11, 12))
	for i := 0; i < 64; i++ {
		g := jsonGen{r: r, uuid: "uuid", time: "event_time"}
		f.Add(bytes.Clone(g.record()))
	}
	for _, s := range []string{
		`{ "page" : "/a\"b" , "uuid":"3F1C2B9E8A474C1E9D2F0B6A5E4C3D21","ctx":{"app":"ios","v":[1,2.5e3,null]},"event_time":1767225600123.9,"é":true}`,
		`{"uuid":"3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21","event_time":"2026-01-01T00:00:00Z","a":[1,{"b":"\u00e9\n"}],"c":-0.5e-3}`,
		`{"event": "click", "uuid": "3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21", "page": "/", "event_time": 1767225600123, "ref": "\ud83d\ude00"}`,
		`{"u":"3f1c2b9e8a474c1e9d2f0b6a5e4c3d21","t":1,"id":2}`, `[1,2,3]`, `"x"`, ` 1767225600123 `, `{}`, ``, `3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21`,
	} {
		f.Add([]byte(s))
	}
	pairs := newDecoderPairs()
	f.Fuzz(func(t *testing.T, in []byte) {
		for i := range pairs {
			pairs[i].check(t, in)
		}
		checkScalars(t, in)
		if len(in) >= 2 && in[0] == '"' && in[len(in)-1] == '"' {
			checkScalars(t, in[1:len(in)-1])
		}
	})
}
