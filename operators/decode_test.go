package operators

import (
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseUUIDForms(t *testing.T) {
	want, ok := ParseUUID([]byte("3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21"))
	if !ok {
		t.Fatal("canonical form refused")
	}
	for _, s := range []string{"3F1C2B9E-8A47-4C1E-9D2F-0B6A5E4C3D21", "3f1c2b9e8a474c1e9d2f0b6a5e4c3d21",
		"3F1c2B9e8A474C1E9d2F0b6A5E4c3D21"} {
		if got, ok := ParseUUID([]byte(s)); !ok || got != want {
			t.Errorf("%s: got %v %v, want %v", s, got, ok, want)
		}
	}
	if want.String() != "3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21" {
		t.Errorf("canonical output %s", want)
	}
	for _, s := range []string{"", "3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d2", "3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d2g",
		"3f1c2b9e+8a47-4c1e-9d2f-0b6a5e4c3d21", "3f1c2b9e8a474c1e9d2f0b6a5e4c3d2", "{3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21}",
		"3f1c2b9e-8a47-4c1e-9d2f0-b6a5e4c3d21"} {
		if _, ok := ParseUUID([]byte(s)); ok {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestKeyGroupIsStableAndSpread(t *testing.T) {
	u, _ := ParseUUID([]byte("3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21"))
	// The key group is part of the on-disk format: it must never change.
	if g := u.KeyGroup(); g != u.KeyGroup() || g >= MaxKeyGroups {
		t.Fatalf("key group %d", g)
	}
	// Time-ordered uuids (same leading bytes) still spread over the groups.
	seen := map[uint16]int{}
	var v UUID
	for i := 0; i < 40960; i++ {
		v[14], v[15] = byte(i>>8), byte(i)
		seen[v.KeyGroup()]++
	}
	if len(seen) < MaxKeyGroups*9/10 {
		t.Fatalf("40960 sequential uuids hit only %d of %d key groups", len(seen), MaxKeyGroups)
	}
}

func TestRFC3339MatchesTimePackage(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	layouts := []string{"2006-01-02T15:04:05Z07:00", "2006-01-02T15:04:05.000Z07:00", "2006-01-02T15:04:05.999999999Z07:00",
		"2006-01-02 15:04:05.0Z07:00"}
	for i := 0; i < 100000; i++ {
		ts := time.Unix(r.Int64N(5_000_000_000)-1_000_000_000, r.Int64N(1e9))
		zone := time.FixedZone("", (r.IntN(28)-14)*1800)
		s := ts.In(zone).Format(layouts[i%len(layouts)])
		got, ok := parseTimeString([]byte(s))
		want, err := time.Parse(layouts[i%len(layouts)], s)
		if err != nil {
			t.Fatal(err)
		}
		if !ok || got != want.UnixMilli() {
			t.Fatalf("%s: got %d %v, want %d", s, got, ok, want.UnixMilli())
		}
	}
	for _, bad := range []string{"2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T00:00:00",
		"2026-01-01T00:00:00.Z", "2026-01-01T00:00:00+0800", "2026-01-01", "yesterday", "2026-01-01T00:00:00Zjunk"} {
		if _, ok := parseTimeString([]byte(bad)); ok {
			t.Errorf("%q accepted", bad)
		}
	}
	if ms, ok := parseTimeString([]byte("1767225600123")); !ok || ms != 1767225600123 {
		t.Errorf("digit string: %d %v", ms, ok)
	}
}

func TestDecodeKeepsOtherMembers(t *testing.T) {
	d := NewDecoder("uuid", "event_time")
	var ev Event
	in := `{ "page" : "/a\"b" , "uuid":"3F1C2B9E8A474C1E9D2F0B6A5E4C3D21","ctx":{"app":"ios","v":[1,2.5e3,null]},"event_time":1767225600123.9,"é":true}`
	if r := d.Decode([]byte(in), &ev); r != OK {
		t.Fatal(r)
	}
	if ev.EventTime != 1767225600123 || ev.UUID.String() != "3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21" {
		t.Fatalf("got %+v", ev)
	}
	want := `{"page" : "/a\"b","ctx":{"app":"ios","v":[1,2.5e3,null]},"é":true}`
	if string(ev.Payload) != want {
		t.Fatalf("payload %s\nwant    %s", ev.Payload, want)
	}
	var m map[string]any
	if err := json.Unmarshal(ev.Payload, &m); err != nil || len(m) != 3 {
		t.Fatalf("payload is not the 3 other members: %v %v", m, err)
	}
	if r := d.Decode([]byte(`{"uuid":"3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21","event_time":1}`), &ev); r != OK || string(ev.Payload) != "{}" {
		t.Fatalf("no other members: %v %s", r, ev.Payload)
	}
}

// TestDecodeAgreesWithEncodingJSON: on random mutations of valid records the
// decoder calls a value JSON exactly when encoding/json does.
func TestDecodeAgreesWithEncodingJSON(t *testing.T) {
	d := NewDecoder("uuid", "event_time")
	r := rand.New(rand.NewPCG(3, 4))
	seed := `{"uuid":"3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21","event_time":"2026-01-01T00:00:00Z","a":[1,{"b":"\u00e9\n"}],"c":-0.5e-3}`
	alphabet := `{}[]",:0123456789.eE+-tfnul\ ab`
	var ev Event
	for i := 0; i < 200000; i++ {
		b := []byte(seed)
		for k := r.IntN(3); k >= 0; k-- {
			switch pos := r.IntN(len(b)); r.IntN(3) {
			case 0:
				b = append(b[:pos], b[pos+1:]...)
			case 1:
				b[pos] = alphabet[r.IntN(len(alphabet))]
			default:
				b = append(b[:pos], append([]byte{alphabet[r.IntN(len(alphabet))]}, b[pos:]...)...)
			}
		}
		reason := d.Decode(b, &ev)
		valid := json.Valid(b)
		if valid != (reason != NotJSON) {
			t.Fatalf("%s: decoder says %v, encoding/json valid=%v", b, reason, valid)
		}
		if valid && strings.HasPrefix(strings.TrimSpace(string(b)), "{") == (reason == NotObject) {
			t.Fatalf("%s: object-ness disagrees: %v", b, reason)
		}
	}
}

func TestCalendarMatchesTimePackage(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, name := range []string{"UTC", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "America/Santiago"} {
		loc, err := time.LoadLocation(name)
		if err != nil {
			t.Skip(err)
		}
		c := NewCalendar(loc)
		for i := 0; i < 20000; i++ {
			ms := r.Int64N(4_000_000_000_000) - 500_000_000_000
			lt := time.UnixMilli(ms).In(loc)
			y, m, d := lt.Date()
			wantStart := time.Date(y, m, d, 0, 0, 0, 0, loc).UnixMilli()
			wantDay := int32(time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Unix() / 86400)
			if i%2 == 0 { // also exercise the cache with a neighbour
				c.Day(ms + 1)
			}
			start, day := c.Day(ms)
			if start != wantStart || day != wantDay {
				t.Fatalf("%s %s: got start %d day %d, want %d %d", name, lt, start, day, wantStart, wantDay)
			}
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	d := NewDecoder("uuid", "event_time")
	v := []byte(`{"uuid":"3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21","event_time":1767225600123,"event":"page_view","page":"/products/42","ctx":{"app":"ios","ver":"3.2.1"}}`)
	var ev Event
	b.SetBytes(int64(len(v)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		d.Decode(v, &ev)
	}
}

// BenchmarkDecodeMix decodes records shaped like engine/workload's: the
// members in one of four orders, a space after colons and commas in one
// record of ten, upper-case or undashed uuids, RFC 3339 times, nested
// contexts, escapes and non-ASCII text in some.
func BenchmarkDecodeMix(b *testing.B) {
	recs := workloadLikeRecords(1024)
	var size int
	for _, v := range recs {
		size += len(v)
	}
	d := NewDecoder("uuid", "event_time")
	var ev Event
	b.SetBytes(int64(size / len(recs)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if d.Decode(recs[i%len(recs)], &ev) != OK {
			b.Fatalf("%s refused", recs[i%len(recs)])
		}
	}
}

// workloadLikeRecords returns n valid records in the shapes and
// proportions engine/workload's generator writes them in (see
// engine/workload/value.go; that package imports this one).
func workloadLikeRecords(n int) [][]byte {
	r := rand.New(rand.NewPCG(13, 14))
	orders := [][]string{{"uuid", "event_time", "event", "page", "extra"}, {"event", "uuid", "page", "event_time", "extra"},
		{"event_time", "uuid", "extra", "event", "page"}, {"extra", "page", "event", "event_time", "uuid"}}
	refs := []string{`"He said \"hi\" and left"`, `"caf\u00e9 cr\u00e8me br\u00fbl\u00e9e"`, `"Zürich → 東京 🚀"`,
		`"C:\\Users\\demo\\notes.txt"`, `"line one\nline two\ttabbed"`, `"\ud83d\ude00 via a surrogate pair"`}
	pages := []string{"/", "/home", "/cart", "/checkout", "/search?q=running+shoes", "/account/settings", "/products/1234"}
	events := []string{"page_view", "page_view", "page_view", "click", "click", "add_to_cart", "purchase", "login"}
	recs := make([][]byte, n)
	for i := range recs {
		var u UUID
		for k := range u {
			u[k] = byte(r.Uint32())
		}
		et := 1767225600000 + r.Int64N(2*86400000)
		sep, colon := ",", ":"
		if r.IntN(10) == 0 {
			sep, colon = ", ", ": "
		}
		order := orders[0]
		if n := r.IntN(100); n >= 70 {
			order = orders[1+min(2, (n-70)/10)]
		}
		ev := events[r.IntN(len(events))]
		var m []string // the members, name and value
		for _, name := range order {
			switch name {
			case "uuid":
				s := u.String()
				switch n := r.IntN(100); {
				case n >= 95:
					s = strings.ReplaceAll(s, "-", "")
				case n >= 90:
					s = strings.ToUpper(s)
				}
				m = append(m, "uuid", `"`+s+`"`)
			case "event_time":
				t := strconv.FormatInt(et, 10)
				if r.IntN(100) >= 80 {
					t = `"` + time.UnixMilli(et).UTC().Format("2006-01-02T15:04:05.000Z07:00") + `"`
				}
				m = append(m, "event_time", t)
			case "event":
				m = append(m, "event", `"`+ev+`"`)
			case "page":
				m = append(m, "page", `"`+pages[r.IntN(len(pages))]+`"`)
			case "extra":
				if r.IntN(4) == 0 {
					m = append(m, "ctx", `{"app":"ios","ver":"3.2.1"}`)
				}
				if ev == "purchase" {
					m = append(m, "amount", "42.99")
				}
				if r.IntN(25) == 0 {
					m = append(m, "ref", refs[r.IntN(len(refs))])
				}
				if r.IntN(33) == 0 {
					m = append(m, "session", "null")
				}
				if r.IntN(20) == 0 {
					m = append(m, "tags", `["new", "promo"]`)
				}
			}
		}
		v := []byte{'{'}
		for k := 0; k < len(m); k += 2 {
			if k > 0 {
				v = append(v, sep...)
			}
			v = append(v, `"`+m[k]+`"`+colon+m[k+1]...)
		}
		recs[i] = append(v, '}')
	}
	return recs
}

func BenchmarkParseUUID(b *testing.B) {
	s := []byte("3F1C2B9E-8A47-4C1E-9D2F-0B6A5E4C3D21")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		ParseUUID(s)
	}
}

func BenchmarkKeyGroup(b *testing.B) {
	u, _ := ParseUUID([]byte("3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21"))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		u[15] = byte(i)
		u.KeyGroup()
	}
}

func TestEventTimeRange(t *testing.T) {
	d := NewDecoder("uuid", "event_time")
	var ev Event
	for v, want := range map[string]Reason{
		"0": BadEventTime, "-5": BadEventTime, "1": OK, `"1970-01-01T00:00:00Z"`: BadEventTime,
		`"2106-02-07T06:28:15.999Z"`: OK, `"2106-02-07T06:28:16Z"`: BadEventTime, "4294967296000": BadEventTime,
	} {
		if got := d.Decode([]byte(`{"uuid":"3f1c2b9e-8a47-4c1e-9d2f-0b6a5e4c3d21","event_time":`+v+`}`), &ev); got != want {
			t.Errorf("event_time %s: %v, want %v", v, got, want)
		}
	}
}
