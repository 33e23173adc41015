package operators

import "time"

const msPerDay = 24 * 60 * 60 * 1000

// Calendar maps event times (epoch milliseconds) to calendar days in one
// time zone. It caches the last day it computed, so the common case (many
// records on the same day) costs two comparisons. A Calendar is not safe for
// concurrent use: each operator has its own (see [Calendar.Clone]).
type Calendar struct {
	loc   *time.Location
	utc   bool
	start int64 // cached day: [start, end) in epoch ms
	end   int64
	day   int32 // days since 1970-01-01 of the cached day
}

// NewCalendar returns a calendar for loc (UTC when nil).
func NewCalendar(loc *time.Location) *Calendar {
	if loc == nil {
		loc = time.UTC
	}
	return &Calendar{loc: loc, utc: loc == time.UTC, start: 1, end: 0}
}

// Clone returns an independent calendar for the same zone.
func (c *Calendar) Clone() *Calendar { return NewCalendar(c.loc) }

// Location returns the calendar's time zone.
func (c *Calendar) Location() *time.Location { return c.loc }

// Day returns the local day containing t: its start (the local midnight, in
// epoch ms) and its number (days since 1970-01-01, the value of a ClickHouse
// Date).
func (c *Calendar) Day(t int64) (start int64, day int32) {
	if t >= c.start && t < c.end {
		return c.start, c.day
	}
	if c.utc {
		d := floorDiv(t, msPerDay)
		c.start, c.end, c.day = d*msPerDay, (d+1)*msPerDay, int32(d)
		return c.start, c.day
	}
	lt := time.UnixMilli(t).In(c.loc)
	y, m, d := lt.Date()
	s := time.Date(y, m, d, 0, 0, 0, 0, c.loc)
	e := time.Date(y, m, d+1, 0, 0, 0, 0, c.loc)
	c.start, c.end = s.UnixMilli(), e.UnixMilli()
	c.day = int32(floorDiv(time.Date(y, m, d, 0, 0, 0, 0, time.UTC).UnixMilli(), msPerDay))
	return c.start, c.day
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}
