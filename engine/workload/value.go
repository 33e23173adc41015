package workload

import (
	"math/rand/v2"
	"strconv"
	"time"
)

// builder formats records. Values are appended to slab, a block of
// memory shared by many values; each value's capacity ends with it, so
// appending to one never overwrites another.
type builder struct {
	g    *gen
	slab []byte
}

const (
	slabSize = 1 << 20
	maxValue = 1 << 10 // no value is longer
)

// record formats ev into rec.
func (b *builder) record(r *rand.Rand, ev *event, rec *Record) {
	g := b.g
	if cap(b.slab)-len(b.slab) < maxValue {
		b.slab = make([]byte, 0, slabSize)
	}
	at := len(b.slab)
	key := g.key(ev.user)
	switch ev.kind {
	case Valid, Late, Future:
		b.slab = b.valid(b.slab, r, ev.user, ev.et)
	default:
		var keyed bool
		b.slab, keyed = b.malformed(b.slab, r, ev)
		if !keyed {
			key = nil
		}
	}
	rec.Value = b.slab[at:len(b.slab):len(b.slab)]
	rec.Kind = ev.kind
	rec.Key = key
	if key != nil {
		rec.Partition = g.parts[ev.user]
	} else {
		rec.Partition = int32(r.IntN(g.cfg.Partitions))
	}
	rec.Timestamp = time.UnixMilli(ev.ts).UTC()
	if ev.kind.Malformed() {
		rec.Day = int((ev.ts - g.startMs) / dayMs)
	} else {
		rec.Day = int((ev.et - g.startMs) / dayMs)
	}
}

// dice deals small random numbers out of one 64-bit draw, which is much
// cheaper than a draw each. The product of the bounds dealt from one draw
// must stay far below 2^64 for the numbers to be uniform.
type dice struct{ x uint64 }

// n returns a number in [0, k).
func (d *dice) n(k int) int {
	v := d.x % uint64(k)
	d.x /= uint64(k)
	return int(v)
}

// object writes a JSON object's members, compact or with a space after
// every colon and comma.
type object struct {
	b      []byte
	n      int
	spaced bool
}

func (o *object) key(k string) {
	if o.n > 0 {
		o.b = append(o.b, ',')
		if o.spaced {
			o.b = append(o.b, ' ')
		}
	} else {
		o.b = append(o.b, '{')
	}
	o.n++
	o.b = append(o.b, '"')
	o.b = append(o.b, k...)
	o.b = append(o.b, '"', ':')
	if o.spaced {
		o.b = append(o.b, ' ')
	}
}

func (o *object) str(s string) {
	o.b = append(o.b, '"')
	o.b = append(o.b, s...)
	o.b = append(o.b, '"')
}

func (o *object) end() []byte {
	if o.n == 0 {
		o.b = append(o.b, '{')
	}
	return append(o.b, '}')
}

// The members of a valid value, and the orders they are written in.
const (
	mUUID = iota
	mTime
	mEvent
	mPage
	mExtra
)

var memberOrders = [...][5]uint8{
	{mUUID, mTime, mEvent, mPage, mExtra},
	{mEvent, mUUID, mPage, mTime, mExtra},
	{mTime, mUUID, mExtra, mEvent, mPage},
	{mExtra, mPage, mEvent, mTime, mUUID},
}

// memberOrder draws an order: mostly the first.
func memberOrder(d *dice) *[5]uint8 {
	switch n := d.n(100); {
	case n < 70:
		return &memberOrders[0]
	case n < 82:
		return &memberOrders[1]
	case n < 92:
		return &memberOrders[2]
	default:
		return &memberOrders[3]
	}
}

const (
	evPageView = iota
	evClick
	evAddToCart
	evPurchase
	evLogin
)

var eventNames = [...]string{"page_view", "click", "add_to_cart", "purchase", "login"}

func eventType(d *dice) int {
	switch n := d.n(100); {
	case n < 60:
		return evPageView
	case n < 85:
		return evClick
	case n < 91:
		return evAddToCart
	case n < 94:
		return evPurchase
	default:
		return evLogin
	}
}

var pages = [...]string{"/", "/home", "/cart", "/checkout", "/search?q=running+shoes", "/account/settings", "/blog/2026/01/first-seen"}

var apps = [...]string{"ios", "android", "web"}

var versions = [...]string{"3.2.1", "3.2.0", "3.1.7", "2.9.12"}

// refs are JSON string literals, escapes and all.
var refs = [...]string{
	`"He said \"hi\" and left"`,
	`"caf\u00e9 cr\u00e8me br\u00fbl\u00e9e"`,
	`"Zürich → 東京 🚀"`,
	`"C:\\Users\\demo\\notes.txt"`,
	`"line one\nline two\ttabbed"`,
	`"\ud83d\ude00 via a surrogate pair"`,
	`"<script>alert(\"x\")<\/script>"`,
}

// valid appends a valid value for user u at event time et to dst.
func (b *builder) valid(dst []byte, r *rand.Rand, u int32, et int64) []byte {
	d1, d2 := dice{r.Uint64()}, dice{r.Uint64()} // 1e9 and about 1e14 dealt
	o := object{b: dst, spaced: d1.n(10) == 0}
	ev := eventType(&d1)
	for _, m := range memberOrder(&d1) {
		switch m {
		case mUUID:
			o.key("uuid")
			o.b = b.appendUUID(o.b, &d1, u)
		case mTime:
			o.key("event_time")
			o.b = appendEventTime(o.b, &d1, et)
		case mEvent:
			o.key("event")
			o.str(eventNames[ev])
		case mPage:
			o.key("page")
			o.b = appendPage(o.b, &d2)
		case mExtra:
			appendExtras(&o, &d2, ev)
		}
	}
	return o.end()
}

// appendUUID appends user u's uuid as a JSON string: mostly canonical
// lower-case, sometimes upper-case, sometimes 32 hex digits without dashes.
func (b *builder) appendUUID(dst []byte, d *dice, u int32) []byte {
	dst = append(dst, '"')
	switch n := d.n(100); {
	case n < 90:
		dst = append(dst, b.g.key(u)...)
	case n < 95:
		for _, c := range b.g.key(u) {
			if c >= 'a' && c <= 'f' {
				c -= 'a' - 'A'
			}
			dst = append(dst, c)
		}
	default:
		for _, c := range &b.g.ids[u] {
			dst = append(dst, hexLower[c>>4], hexLower[c&15])
		}
	}
	return append(dst, '"')
}

// appendEventTime appends et: mostly epoch milliseconds as a JSON number,
// sometimes an RFC 3339 string in UTC, a few with a +08:00 offset.
func appendEventTime(dst []byte, d *dice, et int64) []byte {
	switch n := d.n(100); {
	case n < 80:
		return strconv.AppendInt(dst, et, 10)
	case n < 97:
		dst = append(dst, '"')
		dst = appendRFC3339Milli(dst, et, 0)
	default:
		dst = append(dst, '"')
		dst = appendRFC3339Milli(dst, et, 8*60)
	}
	return append(dst, '"')
}

func appendPage(dst []byte, d *dice) []byte {
	dst = append(dst, '"')
	if d.n(5) < 2 {
		dst = append(dst, "/products/"...)
		dst = strconv.AppendInt(dst, int64(1+d.n(9999)), 10)
	} else {
		dst = append(dst, pages[d.n(len(pages))]...)
	}
	return append(dst, '"')
}

// appendExtras writes the optional members: a nested context, an amount
// for purchases, a string with escapes and non-ASCII text, a null, an array.
func appendExtras(o *object, d *dice, ev int) {
	if d.n(4) == 0 {
		o.key("ctx")
		o.b = append(o.b, `{"app":"`...)
		o.b = append(o.b, apps[d.n(len(apps))]...)
		o.b = append(o.b, `","ver":"`...)
		o.b = append(o.b, versions[d.n(len(versions))]...)
		o.b = append(o.b, `"}`...)
	}
	if ev == evPurchase {
		cents := 99 + d.n(50000)
		o.key("amount")
		o.b = strconv.AppendInt(o.b, int64(cents/100), 10)
		o.b = append(o.b, '.', byte('0'+cents/10%10), byte('0'+cents%10))
	}
	if d.n(25) == 0 {
		o.key("ref")
		o.b = append(o.b, refs[d.n(len(refs))]...)
	}
	if d.n(33) == 0 {
		o.key("session")
		o.b = append(o.b, "null"...)
	}
	if d.n(20) == 0 {
		o.key("tags")
		o.b = append(o.b, `["new", "promo"]`...)
	}
}

// appendRFC3339Milli appends the time ms (epoch milliseconds) in RFC 3339
// with milliseconds, at a UTC offset of offsetMin minutes ("Z" for 0). The
// year must be within 0..9999.
func appendRFC3339Milli(dst []byte, ms int64, offsetMin int) []byte {
	local := ms + int64(offsetMin)*minuteMs
	days := local / dayMs
	rem := local % dayMs
	if rem < 0 {
		days, rem = days-1, rem+dayMs
	}
	y, m, d := civil(days)
	dst = append4(dst, y)
	dst = append(dst, '-')
	dst = append2(dst, m)
	dst = append(dst, '-')
	dst = append2(dst, d)
	dst = append(dst, 'T')
	dst = append2(dst, int(rem/3600000))
	dst = append(dst, ':')
	dst = append2(dst, int(rem/60000%60))
	dst = append(dst, ':')
	dst = append2(dst, int(rem/1000%60))
	dst = append(dst, '.')
	dst = append(dst, byte('0'+rem/100%10), byte('0'+rem/10%10), byte('0'+rem%10))
	if offsetMin == 0 {
		return append(dst, 'Z')
	}
	sign := byte('+')
	if offsetMin < 0 {
		sign, offsetMin = '-', -offsetMin
	}
	dst = append(dst, sign)
	dst = append2(dst, offsetMin/60)
	dst = append(dst, ':')
	return append2(dst, offsetMin%60)
}

// civil returns the proleptic Gregorian date of a day counted from
// 1970-01-01 (H. Hinnant's civil_from_days).
func civil(days int64) (year, month, day int) {
	z := days + 719468
	era := z / 146097
	if z < 0 && z%146097 != 0 {
		era--
	}
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	day = int(doy - (153*mp+2)/5 + 1)
	month = int(mp + 3)
	if month > 12 {
		month -= 12
	}
	year = int(yoe + era*400)
	if month <= 2 {
		year++
	}
	return year, month, day
}

func append2(dst []byte, n int) []byte {
	return append(dst, byte('0'+n/10%10), byte('0'+n%10))
}

func append4(dst []byte, n int) []byte {
	return append(dst, byte('0'+n/1000%10), byte('0'+n/100%10), byte('0'+n/10%10), byte('0'+n%10))
}

// malformed appends the value of a malformed record to d and says whether
// the record has its user's key.
func (b *builder) malformed(d []byte, r *rand.Rand, ev *event) (_ []byte, keyed bool) {
	key := b.g.key(ev.user)
	start := len(d)
	switch ev.kind {
	case NotJSON:
		switch r.IntN(8) {
		case 0: // truncated
			d = b.valid(d, r, ev.user, ev.et)
			cut := start + 1 + r.IntN(len(d)-start-1)
			for cut > start+1 && d[cut]&0xc0 == 0x80 { // keep whole UTF-8 sequences
				cut--
			}
			return d[:cut], true
		case 1:
			d = append(d, "user "...)
			d = append(d, key...)
			d = append(d, " viewed /home at "...)
			d = strconv.AppendInt(d, ev.et, 10)
		case 2: // trailing comma
			d = appendMinimal(d, key, ev.et)
			d = append(d[:len(d)-1], ",}"...)
			keyed = true
		case 3: // single quotes
			d = append(d, "{'uuid': '"...)
			d = append(d, key...)
			d = append(d, "', 'event_time': "...)
			d = strconv.AppendInt(d, ev.et, 10)
			d = append(d, '}')
		case 4: // two objects
			d = appendMinimal(d, key, ev.et)
			d = appendMinimal(d, key, ev.et)
			keyed = true
		case 5: // a bad escape
			d = appendMinimal(d, key, ev.et)
			d = append(d[:len(d)-1], `,"page":"/a\qb"}`...)
			keyed = true
		case 6:
			d = append(d, " \n"...)
		default: // unquoted member names
			d = append(d, "{uuid:\""...)
			d = append(d, key...)
			d = append(d, "\",event_time:"...)
			d = strconv.AppendInt(d, ev.et, 10)
			d = append(d, '}')
		}
	case NotObject:
		switch r.IntN(6) {
		case 0:
			d = append(d, "[1,2,3]"...)
		case 1:
			d = strconv.AppendInt(d, ev.et, 10)
		case 2:
			d = append(d, '"')
			d = append(d, key...)
			d = append(d, '"')
			keyed = true
		case 3:
			d = append(d, "null"...)
		case 4:
			d = append(d, "true"...)
		default: // a batch
			d = append(d, '[')
			d = appendMinimal(d, key, ev.et)
			d = append(d, ']')
			keyed = true
		}
	case NoUUID:
		switch r.IntN(5) {
		case 0:
			d = append(d, `{"event_time":`...)
			d = strconv.AppendInt(d, ev.et, 10)
			d = append(d, `,"event":"click","page":"/"}`...)
		case 1:
			d = append(d, `{"uuid":null,"event_time":`...)
			d = strconv.AppendInt(d, ev.et, 10)
			d = append(d, `,"event":"page_view"}`...)
		case 2:
			d = append(d, `{"user_id":"`...)
			d = append(d, key...)
			d = append(d, `","event_time":`...)
			d = strconv.AppendInt(d, ev.et, 10)
			d = append(d, '}')
			keyed = true
		case 3:
			d = append(d, "{}"...)
		default: // member names are case-sensitive
			d = append(d, `{"UUID":"`...)
			d = append(d, key...)
			d = append(d, `","event_time":`...)
			d = strconv.AppendInt(d, ev.et, 10)
			d = append(d, '}')
			keyed = true
		}
	case BadUUID:
		d = append(d, `{"uuid":`...)
		switch r.IntN(8) {
		case 0:
			d = append(d, `"not-a-uuid"`...)
		case 1: // 35 characters
			d = append(d, '"')
			d = append(d, key[:35]...)
			d = append(d, '"')
		case 2: // a letter that is not a hex digit
			d = append(d, '"')
			at := len(d)
			d = append(d, key...)
			d[at+r.IntN(8)] = 'x'
			d = append(d, '"')
		case 3:
			d = append(d, "12345"...)
		case 4:
			d = append(d, `""`...)
		case 5: // braces
			d = append(d, `"{`...)
			d = append(d, key...)
			d = append(d, `}"`...)
		case 6: // a dash out of place
			d = append(d, '"')
			d = append(d, key[:8]...)
			d = append(d, key[9])
			d = append(d, '-')
			d = append(d, key[10:]...)
			d = append(d, '"')
		default:
			d = append(d, `["`...)
			d = append(d, key...)
			d = append(d, `"]`...)
		}
		d = append(d, `,"event_time":`...)
		d = strconv.AppendInt(d, ev.et, 10)
		d = append(d, '}')
	case NoEventTime:
		keyed = true
		d = append(d, `{"uuid":"`...)
		d = append(d, key...)
		d = append(d, '"')
		switch r.IntN(4) {
		case 0:
		case 1:
			d = append(d, `,"event_time":null`...)
		case 2:
			d = append(d, `,"eventTime":`...)
			d = strconv.AppendInt(d, ev.et, 10)
		default:
			d = append(d, `,"ts":`...)
			d = strconv.AppendInt(d, ev.et, 10)
		}
		d = append(d, `,"event":"click","page":"/cart"}`...)
	case BadEventTime:
		keyed = true
		d = append(d, `{"uuid":"`...)
		d = append(d, key...)
		d = append(d, `","event_time":`...)
		switch r.IntN(9) {
		case 0:
			d = append(d, `"yesterday"`...)
		case 1:
			d = append(d, "true"...)
		case 2:
			d = append(d, "false"...)
		case 3:
			d = append(d, `"2026-13-45T25:61:00Z"`...)
		case 4:
			d = append(d, `{"ms":`...)
			d = strconv.AppendInt(d, ev.et, 10)
			d = append(d, '}')
		case 5:
			d = append(d, `""`...)
		case 6:
			d = append(d, "1e300"...)
		case 7: // no zone
			d = append(d, '"')
			d = appendRFC3339Milli(d, ev.et, 0)
			d[len(d)-14] = ' ' // no T
			d = d[:len(d)-1]   // no zone
			d = append(d, '"')
		default:
			d = append(d, '"')
			d = strconv.AppendInt(d, ev.et, 10)
			d = append(d, ` ms"`...)
		}
		d = append(d, '}')
	}
	return d, keyed
}

// appendMinimal appends {"uuid":"<key>","event_time":<et>}.
func appendMinimal(d, key []byte, et int64) []byte {
	d = append(d, `{"uuid":"`...)
	d = append(d, key...)
	d = append(d, `","event_time":`...)
	d = strconv.AppendInt(d, et, 10)
	return append(d, '}')
}
