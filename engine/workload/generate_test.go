package workload

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/operators"
)

func mustGenerate(t testing.TB, cfg Config) ([]Record, []int64) {
	t.Helper()
	recs, times, err := generate(cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	return recs, times
}

func jsonl(t testing.TB, recs []Record) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteJSONL(&buf, recs); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDefaults(t *testing.T) {
	got := Config{}.WithDefaults()
	want := Config{
		Users: 5000, Days: 2, Start: time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC), RecordsPerUser: 5,
		Skew: 1.1, NewShare: 0.3, Tolerance: 10 * time.Minute, LateShare: 0.002, MalformedShare: 0.003,
		Partitions: 4,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("defaults\n got %+v\nwant %+v", got, want)
	}
	if again := got.WithDefaults(); !reflect.DeepEqual(again, got) {
		t.Fatalf("WithDefaults is not idempotent: %+v", again)
	}
	neg := Config{NewShare: -1, LateShare: -1, MalformedShare: -1, Skew: -1}.WithDefaults()
	if neg.NewShare != -1 || neg.LateShare != -1 || neg.MalformedShare != -1 || neg.Skew != -1 {
		t.Fatalf("negative values must survive WithDefaults: %+v", neg)
	}
}

func TestInvalidConfigs(t *testing.T) {
	for name, cfg := range map[string]Config{
		"start not midnight":    {Start: defaultStart.Add(time.Hour)},
		"start sub-millisecond": {Start: defaultStart.Add(time.Nanosecond)},
		"users":                 {Users: -1},
		"days":                  {Days: -2},
		"records per user":      {RecordsPerUser: -3},
		"records per user NaN":  {RecordsPerUser: math.NaN()},
		"skew NaN":              {Skew: math.NaN()},
		"new share":             {NewShare: 1.5},
		"late share":            {LateShare: 2},
		"malformed share":       {MalformedShare: 1},
		"tolerance":             {Tolerance: time.Microsecond},
		"negative tolerance":    {Tolerance: -time.Minute},
		"partitions":            {Partitions: -4},
		"too many records":      {Users: 1 << 30, RecordsPerUser: 10},
	} {
		if recs, err := Generate(cfg); err == nil {
			t.Errorf("%s: Generate(%+v) returned %d records and no error", name, cfg, len(recs))
		}
	}
	// A UTC midnight in another zone is fine.
	if _, err := Generate(Config{Users: 10, Start: defaultStart.In(time.FixedZone("x", 3600))}); err != nil {
		t.Errorf("Start in another zone: %v", err)
	}
}

func TestDeterministic(t *testing.T) {
	cfg := Config{Users: 8000, Days: 3, Seed: 42}
	a := jsonl(t, mustRecs(t, cfg))
	b := jsonl(t, mustRecs(t, cfg))
	if !bytes.Equal(a, b) {
		t.Fatal("the same config gave different workloads")
	}
	if n := bytes.Count(a, []byte{'\n'}); n <= 2*formatChunk {
		t.Fatalf("only %d records: the test should span several format chunks", n)
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	if c := jsonl(t, mustRecs(t, cfg)); !bytes.Equal(a, c) {
		t.Fatal("GOMAXPROCS changed the workload")
	}
	runtime.GOMAXPROCS(7)
	if c := jsonl(t, mustRecs(t, cfg)); !bytes.Equal(a, c) {
		t.Fatal("GOMAXPROCS changed the workload")
	}
	cfg.Seed = 43
	if d := jsonl(t, mustRecs(t, cfg)); bytes.Equal(a, d) {
		t.Fatal("different seeds gave the same workload")
	}
}

func mustRecs(t testing.TB, cfg Config) []Record {
	t.Helper()
	recs, err := Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

var wantReason = map[Kind]operators.Reason{
	Valid:        operators.OK,
	Late:         operators.OK,
	NotJSON:      operators.NotJSON,
	NotObject:    operators.NotObject,
	NoUUID:       operators.NoUUID,
	BadUUID:      operators.BadUUID,
	NoEventTime:  operators.NoEventTime,
	BadEventTime: operators.BadEventTime,
	Future:       operators.OK, // refused by its timestamp, not by decoding
}

// checkRecords checks the invariants every workload has.
func checkRecords(t *testing.T, cfg Config, recs []Record, times []int64) {
	t.Helper()
	cfg = cfg.WithDefaults()
	startMs, tolMs := cfg.Start.UnixMilli(), cfg.Tolerance.Milliseconds()
	dec := operators.NewDecoder("uuid", "event_time")
	var ev operators.Event
	fails := 0
	fail := func(i int, format string, args ...any) {
		t.Helper()
		if fails++; fails <= 20 {
			t.Errorf("record %d (%s, key %s, ts %d, value %q): "+format,
				append([]any{i, recs[i].Kind, recs[i].Key, recs[i].Timestamp.UnixMilli(), recs[i].Value}, args...)...)
		}
	}
	for i := range recs {
		rec := &recs[i]
		ts := rec.Timestamp.UnixMilli()
		if i > 0 && rec.Timestamp.Before(recs[i-1].Timestamp) {
			fail(i, "timestamp before the previous record's %s", recs[i-1].Timestamp)
		}
		if rec.Timestamp.Location() != time.UTC || !time.UnixMilli(ts).UTC().Equal(rec.Timestamp) {
			fail(i, "timestamp %v is not whole milliseconds UTC", rec.Timestamp)
		}
		if rec.Partition < 0 || int(rec.Partition) >= cfg.Partitions {
			fail(i, "partition %d out of range", rec.Partition)
		}
		if rec.Key != nil {
			if p := Partition(rec.Key, cfg.Partitions); p != rec.Partition {
				fail(i, "partition %d, want %d", rec.Partition, p)
			}
			if u, ok := operators.ParseUUID(rec.Key); !ok || u.String() != string(rec.Key) {
				fail(i, "key is not a canonical uuid")
			} else if u[6]>>4 != 4 || u[8]>>6 != 2 {
				fail(i, "key is not a version 4 uuid")
			}
		} else if !rec.Kind.Malformed() {
			fail(i, "a valid record without a key")
		}
		want, ok := wantReason[rec.Kind]
		if !ok {
			fail(i, "unknown kind")
			continue
		}
		got := dec.Decode(rec.Value, &ev)
		if got != want {
			fail(i, "decodes to %s, want %s", got, want)
			continue
		}
		if rec.Kind.Malformed() && rec.Kind != Future && rec.Kind.Refusal() != got.String() {
			fail(i, "Refusal %q, decoder says %q", rec.Kind.Refusal(), got)
		}
		if json.Valid(rec.Value) != (rec.Kind != NotJSON) {
			fail(i, "encoding/json.Valid says %v", json.Valid(rec.Value))
		}
		if rec.Kind.Malformed() {
			if d := int(floorDiv(ts-startMs, dayMs)); rec.Day != d {
				fail(i, "day %d, want %d (of the timestamp)", rec.Day, d)
			}
		}
		if got != operators.OK {
			continue
		}
		if ev.UUID.String() != string(rec.Key) {
			fail(i, "decoded uuid %s, key %s", ev.UUID, rec.Key)
		}
		if times != nil && ev.EventTime != times[i] {
			fail(i, "decoded event time %d, intended %d", ev.EventTime, times[i])
		}
		lag := ts - ev.EventTime
		switch rec.Kind {
		case Valid:
			if lag < 0 || lag >= tolMs {
				fail(i, "delivered %dms after its event time, not within [0, %d)", lag, tolMs)
			}
		case Late:
			if lag < 2*tolMs || lag >= 4*tolMs {
				fail(i, "delivered %dms after its event time, not within [%d, %d)", lag, 2*tolMs, 4*tolMs)
			}
		case Future:
			if -lag <= time.Hour.Milliseconds() {
				fail(i, "event time only %dms after the timestamp", -lag)
			}
			if rec.Kind.Refusal() != operators.TooFarInFuture.String() {
				fail(i, "Refusal %q", rec.Kind.Refusal())
			}
		}
		if !rec.Kind.Malformed() {
			d := floorDiv(ev.EventTime-startMs, dayMs)
			if d < 0 || d >= int64(cfg.Days) || rec.Day != int(d) {
				fail(i, "day %d, event time's day %d", rec.Day, d)
			}
			if rec.Kind.Refusal() != "" {
				fail(i, "Refusal %q", rec.Kind.Refusal())
			}
			var obj map[string]any
			if err := json.Unmarshal(rec.Value, &obj); err != nil {
				fail(i, "encoding/json: %v", err)
			}
		}
	}
	if fails > 20 {
		t.Errorf("... %d failures in all", fails)
	}
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func TestRecordsDecode(t *testing.T) {
	cfg := Config{Users: 4000, Days: 3, Seed: 7, MalformedShare: 0.05, LateShare: 0.01, Partitions: 6}
	recs, times := mustGenerate(t, cfg)
	checkRecords(t, cfg, recs, times)

	// Every encoding shows up, in roughly the intended shares.
	var uuidForms, timeForms [3]int
	kinds := make(map[Kind]int)
	var valid int
	for _, rec := range recs {
		kinds[rec.Kind]++
		if rec.Kind != Valid && rec.Kind != Late {
			continue
		}
		valid++
		var obj map[string]any
		if err := json.Unmarshal(rec.Value, &obj); err != nil {
			t.Fatal(err)
		}
		switch u := obj["uuid"].(string); {
		case u == string(rec.Key):
			uuidForms[0]++
		case u == strings.ToUpper(string(rec.Key)):
			uuidForms[1]++
		case u == strings.ReplaceAll(string(rec.Key), "-", ""):
			uuidForms[2]++
		default:
			t.Fatalf("uuid %q for key %s", u, rec.Key)
		}
		switch et := obj["event_time"].(type) {
		case float64:
			timeForms[0]++
		case string:
			switch {
			case strings.HasSuffix(et, "Z") && len(et) == len("2026-01-05T23:59:58.123Z"):
				timeForms[1]++
			case strings.HasSuffix(et, "+08:00") && len(et) == len("2026-01-05T23:59:58.123+08:00"):
				timeForms[2]++
			default:
				t.Fatalf("event_time %q", et)
			}
		default:
			t.Fatalf("event_time %v", et)
		}
	}
	t.Logf("uuid forms %v, event_time forms %v, kinds %v", uuidForms, timeForms, kinds)
	for i, share := range []float64{0.90, 0.05, 0.05} {
		if got := float64(uuidForms[i]) / float64(valid); math.Abs(got-share) > 0.02 {
			t.Errorf("uuid form %d: share %.3f, want about %.2f", i, got, share)
		}
	}
	for i, share := range []float64{0.80, 0.17, 0.03} {
		if got := float64(timeForms[i]) / float64(valid); math.Abs(got-share) > 0.02 {
			t.Errorf("event_time form %d: share %.3f, want about %.2f", i, got, share)
		}
	}
	for k := range numKinds {
		if kinds[k] == 0 {
			t.Errorf("no record of kind %s", k)
		}
	}
}

func TestSmallAndOddConfigs(t *testing.T) {
	for _, cfg := range []Config{
		{Users: 1},
		{Users: 1, RecordsPerUser: 1, Seed: 3},
		{Users: 50, Days: 1, NewShare: 1},
		{Users: 300, RecordsPerUser: 0.4, Skew: -1},
		{Users: 200, Tolerance: time.Millisecond, Partitions: 1},
		{Users: 200, Tolerance: 3 * time.Hour, Days: 1},
		{Users: 500, NewShare: -1, LateShare: -1, MalformedShare: -1},
		{Users: 500, LateShare: 1, MalformedShare: 0.5, Days: 5, Partitions: 100},
		{Users: 300, Start: time.Date(1999, 12, 31, 0, 0, 0, 0, time.UTC), Days: 3},
	} {
		recs, times, err := generate(cfg, true)
		if err != nil {
			t.Errorf("%+v: %v", cfg, err)
			continue
		}
		checkRecords(t, cfg, recs, times)
		if cfg.NewShare < 0 || cfg.Days == 1 {
			for user, d := range firstDays(recs) {
				if d > 0 {
					t.Fatalf("%+v: user %s is new on day %d", cfg, user, d)
				}
			}
		}
		for _, rec := range recs {
			if (cfg.LateShare < 0 && rec.Kind == Late) || (cfg.MalformedShare < 0 && rec.Kind.Malformed()) {
				t.Fatalf("%+v: a record of kind %s", cfg, rec.Kind)
			}
		}
	}
}

// firstDays returns the day of every user's first valid record.
func firstDays(recs []Record) map[string]int {
	first := make(map[string]int)
	for _, rec := range recs {
		if rec.Kind.Malformed() {
			continue
		}
		if d, ok := first[string(rec.Key)]; !ok || rec.Day < d {
			first[string(rec.Key)] = rec.Day
		}
	}
	return first
}

func TestShares(t *testing.T) {
	cfg := Config{Users: 20000, Days: 4, NewShare: 0.4, LateShare: 0.01, MalformedShare: 0.02, RecordsPerUser: 6, Seed: 11}
	recs := mustRecs(t, cfg)
	cfg = cfg.WithDefaults()
	kinds := make(map[Kind]int)
	perUser := make(map[string]int)
	perDay := make([]int, cfg.Days)
	for _, rec := range recs {
		kinds[rec.Kind]++
		if !rec.Kind.Malformed() {
			perUser[string(rec.Key)]++
			perDay[rec.Day]++
		}
	}
	total := float64(len(recs))
	valid := float64(kinds[Valid] + kinds[Late])
	within := func(what string, got, want, tol float64) {
		t.Helper()
		if math.Abs(got-want) > tol {
			t.Errorf("%s: %.4f, want %.4f ± %.4f", what, got, want, tol)
		}
	}
	within("malformed share", (total-valid)/total, cfg.MalformedShare, 0.0005)
	for _, k := range malformedKinds {
		within(k.String()+" share", float64(kinds[k])/total, cfg.MalformedShare/float64(len(malformedKinds)), 0.0005)
	}
	within("late share of valid", float64(kinds[Late])/valid, cfg.LateShare, 0.0005)
	if len(perUser) != cfg.Users {
		t.Errorf("%d users have records, want %d", len(perUser), cfg.Users)
	}
	within("records per user", valid/float64(cfg.Users), cfg.RecordsPerUser, 0.05*cfg.RecordsPerUser)
	heaviest := 0
	for _, n := range perUser {
		heaviest = max(heaviest, n)
	}
	if float64(heaviest) < 100*cfg.RecordsPerUser {
		t.Errorf("the heaviest user has %d records: not skewed", heaviest)
	}
	newByDay := make([]int, cfg.Days)
	for _, d := range firstDays(recs) {
		newByDay[d]++
	}
	within("new user share", 1-float64(newByDay[0])/float64(cfg.Users), cfg.NewShare, 0.015)
	for d := 1; d < cfg.Days; d++ {
		within("new users' first day share", float64(newByDay[d])/float64(cfg.Users-newByDay[0]), 1/float64(cfg.Days-1), 0.03)
	}
	for d, n := range perDay {
		if n == 0 {
			t.Errorf("no record on day %d", d)
		}
	}
	t.Logf("kinds %v, heaviest user %d records, first days %v, records by day %v", kinds, heaviest, newByDay, perDay)
}

// TestLateness replays each partition's records through the processor's
// watermark rule and checks that valid records are on time and late ones
// (mostly) late.
func TestLateness(t *testing.T) {
	for _, cfg := range []Config{
		{Seed: 5},
		{Users: 20000, Days: 3, LateShare: 0.02, Partitions: 8, Seed: 6},
		{Users: 3000, Tolerance: time.Minute, Seed: 8},
	} {
		recs, times := mustGenerate(t, cfg)
		cfg = cfg.WithDefaults()
		tol := cfg.Tolerance.Milliseconds()
		type part struct{ maxEvent, watermark int64 }
		parts := make([]part, cfg.Partitions)
		for i := range parts {
			parts[i] = part{math.MinInt64, math.MinInt64}
		}
		var late, lateLate int
		for i, rec := range recs {
			if rec.Kind.Malformed() {
				continue
			}
			p, et := &parts[rec.Partition], times[i]
			isLate := et < p.watermark
			if !isLate {
				p.maxEvent = max(p.maxEvent, et)
				p.watermark = max(p.watermark, p.maxEvent-tol)
			}
			switch {
			case rec.Kind == Valid && isLate:
				t.Fatalf("%+v: valid record %d is late: event time %d, watermark %d", cfg, i, et, p.watermark)
			case rec.Kind == Late:
				late++
				if isLate {
					lateLate++
				}
			}
		}
		if late == 0 || float64(lateLate) < 0.95*float64(late) {
			t.Errorf("%+v: only %d of %d late records are late", cfg, lateLate, late)
		}
		t.Logf("%d of %d late records are late", lateLate, late)
	}
}

func TestMidnight(t *testing.T) {
	cfg := Config{Users: 10000, Days: 4, Seed: 9}.WithDefaults()
	recs, times := mustGenerate(t, cfg)
	startMs := cfg.Start.UnixMilli()
	const spike = 10 * minuteMs
	var near, all int
	var delayNear, delayFar, nNear, nFar float64
	// For each interior midnight and partition: the first arrival of a
	// record of the new day, and how many records of the old day's last
	// minutes arrived after it.
	type key struct {
		midnight int64
		part     int32
	}
	firstNewDay := make(map[key]int64)
	var overtaken int
	for i, rec := range recs {
		if rec.Kind != Valid {
			continue
		}
		all++
		et := times[i]
		off := floorDiv(et-startMs, dayMs)
		m := startMs + floorDiv(et-startMs+dayMs/2, dayMs)*dayMs // nearest midnight
		if m > startMs && m < startMs+int64(cfg.Days)*dayMs && et >= m-spike && et < m+spike {
			near++
		}
		if d := et - m; d >= -15*minuteMs && d < 15*minuteMs {
			delayNear += float64(rec.Timestamp.UnixMilli() - et)
			nNear++
		} else {
			delayFar += float64(rec.Timestamp.UnixMilli() - et)
			nFar++
		}
		k := key{startMs + (off+1)*dayMs, rec.Partition}
		if et >= k.midnight-5*minuteMs {
			if f, ok := firstNewDay[k]; ok && f < rec.Timestamp.UnixMilli() {
				overtaken++
			}
		}
		k = key{startMs + off*dayMs, rec.Partition}
		if _, ok := firstNewDay[k]; !ok {
			firstNewDay[k] = rec.Timestamp.UnixMilli()
		}
	}
	interior := cfg.Days - 1
	perMinuteNear := float64(near) / float64(interior*20)
	perMinute := float64(all) / float64(cfg.Days*24*60)
	t.Logf("%.1f records a minute within 10 minutes of a midnight, %.1f on average; delays %.0fs near midnight, %.0fs elsewhere; %d records of a day's last 5 minutes arrived after the next day's first",
		perMinuteNear, perMinute, delayNear/nNear/1000, delayFar/nFar/1000, overtaken)
	if perMinuteNear < 4*perMinute {
		t.Errorf("no midnight spike: %.1f records a minute near midnight, %.1f on average", perMinuteNear, perMinute)
	}
	if delayNear/nNear < 1.2*delayFar/nFar {
		t.Errorf("delays near midnight (%.0fms) are not longer than elsewhere (%.0fms)", delayNear/nNear, delayFar/nFar)
	}
	if overtaken < 100 {
		t.Errorf("only %d records of a day's last minutes arrived after records of the next day", overtaken)
	}

	// Some users' first two records straddle a midnight.
	lastMinutes := make(map[string]int) // user -> day with a record in its last 10 minutes
	straddle := 0
	for i, rec := range recs {
		if rec.Kind != Valid {
			continue
		}
		off := floorDiv(times[i]-startMs, dayMs)
		if pos := times[i] - startMs - off*dayMs; pos >= dayMs-spike {
			lastMinutes[string(rec.Key)] = int(off) + 1
		}
	}
	for i, rec := range recs {
		off := floorDiv(times[i]-startMs, dayMs)
		if pos := times[i] - startMs - off*dayMs; rec.Kind == Valid && pos < spike && lastMinutes[string(rec.Key)] == int(off) {
			straddle++
		}
	}
	if straddle < cfg.Users/20 {
		t.Errorf("only %d records straddle a midnight with one of the same user", straddle)
	}
}

func TestPartitionMatchesFranzGo(t *testing.T) {
	part := kgo.StickyKeyPartitioner(nil).ForTopic("t")
	r := rand.New(rand.NewPCG(1, 2))
	recs := mustRecs(t, Config{Users: 1000, Seed: 4, Partitions: 12})
	for i := range 2000 {
		var key []byte
		if i < 1000 {
			key = make([]byte, 1+r.IntN(80))
			for j := range key {
				key[j] = byte(r.Uint32())
			}
		} else {
			key = recs[r.IntN(len(recs))].Key
			if key == nil {
				continue
			}
		}
		n := 1 + r.IntN(64)
		want := part.Partition(&kgo.Record{Key: key}, n)
		if got := Partition(key, n); int(got) != want {
			t.Fatalf("Partition(%x, %d) = %d, franz-go says %d", key, n, got, want)
		}
	}
}

func TestJSONLRoundTrip(t *testing.T) {
	recs := mustRecs(t, Config{Users: 3000, MalformedShare: 0.05, Seed: 12})
	recs = append(recs,
		Record{Partition: 3, Key: []byte("\xc3(key"), Value: []byte("\xff\xfe not UTF-8"), Timestamp: time.UnixMilli(1).UTC(), Kind: NotJSON},
		Record{Partition: 0, Key: []byte("k\"\\\x00\n"), Value: []byte("\"quoted\"\t\u2028\x1f</script>"), Timestamp: time.UnixMilli(-5).UTC(), Kind: NotObject, Day: -1},
		Record{Partition: 1, Key: []byte{}, Value: []byte{}, Timestamp: time.UnixMilli(0).UTC(), Kind: NoUUID},
		Record{Partition: 2, Value: nil, Timestamp: time.UnixMilli(7).UTC(), Kind: Future},
	)
	data := jsonl(t, recs)
	for i, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
		var obj map[string]any
		if err := json.Unmarshal(line, &obj); err != nil {
			t.Fatalf("line %d: %v: %s", i+1, err, line)
		}
		if i == 0 {
			for _, k := range []string{"partition", "key", "timestamp_ms", "kind", "day", "value"} {
				if _, ok := obj[k]; !ok {
					t.Fatalf("line 1 has no %q: %s", k, line)
				}
			}
		}
	}
	back, err := ReadJSONL(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != len(recs) {
		t.Fatalf("read %d records, wrote %d", len(back), len(recs))
	}
	for i := range recs {
		if !reflect.DeepEqual(back[i], recs[i]) {
			t.Fatalf("record %d:\nwrote %+v\n read %+v", i, recs[i], back[i])
		}
	}
	if again := jsonl(t, back); !bytes.Equal(again, data) {
		t.Fatal("rewriting what was read gives different bytes")
	}
	for _, bad := range []string{`{"partition":0,"timestamp_ms":1,"kind":"what","day":0,"value":"x"}`, `{"partition":0,`, `{"kind":"valid"}`} {
		if _, err := ReadJSONL(strings.NewReader(bad)); err == nil {
			t.Errorf("ReadJSONL(%s) did not fail", bad)
		}
	}
}

func TestKinds(t *testing.T) {
	for k := range numKinds {
		if back, ok := ParseKind(k.String()); !ok || back != k {
			t.Errorf("ParseKind(%q) = %v, %v", k.String(), back, ok)
		}
		if k.Malformed() != (k != Valid && k != Late) {
			t.Errorf("%s.Malformed() = %v", k, k.Malformed())
		}
	}
	if _, ok := ParseKind("nope"); ok {
		t.Error("ParseKind accepted nope")
	}
	if Kind(200).Malformed() || Kind(200).String() != "kind(200)" {
		t.Error("an unknown kind")
	}
}

func TestRFC3339Milli(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	zones := map[int]*time.Location{0: time.UTC, 480: time.FixedZone("", 480*60), -330: time.FixedZone("", -330*60)}
	for i := range 100000 {
		ms := r.Int64N(8e12) - 1e12 // 1938 to 2223
		if i < 10 {
			ms = []int64{0, -1, 1, 86399999, 86400000, 951782400000, 951868799999, -62135596800000, 253402271999999, 1767657599999}[i]
		}
		for off, loc := range zones {
			want := time.UnixMilli(ms).In(loc).Format("2006-01-02T15:04:05.000Z07:00")
			if got := string(appendRFC3339Milli(nil, ms, off)); got != want {
				t.Fatalf("appendRFC3339Milli(%d, %d) = %s, want %s", ms, off, got, want)
			}
		}
	}
}

// BenchmarkGenerate5M generates a workload of about 5 million records.
func BenchmarkGenerate5M(b *testing.B) {
	b.ReportAllocs()
	var n int
	for b.Loop() {
		recs, err := Generate(Config{Users: 1_000_000, Seed: 1})
		if err != nil {
			b.Fatal(err)
		}
		n = len(recs)
	}
	b.ReportMetric(float64(n), "records/op")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/record")
}
