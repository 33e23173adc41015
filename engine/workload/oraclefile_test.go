package workload

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/firstseen/firstseen/operators"
)

func TestGeneratedOracleRoundTripsThroughFile(t *testing.T) {
	recs, err := Generate(Config{Users: 500, Days: 3, Partitions: 3, Seed: 9,
		Start: time.Date(2026, 3, 7, 0, 0, 0, 0, time.UTC), LateShare: 0.02, MalformedShare: 0.05})
	if err != nil {
		t.Fatal(err)
	}
	want := Oracle(recs, operators.Config{Tolerance: 10 * time.Minute}, nil)
	// Cases the generator may not produce: a valid record of the zero
	// uuid, a refused record whose uuid was parsed, extreme numbers.
	want = append(want,
		Expected{Partition: 0, Offset: 1 << 40, Reason: operators.OK, EventTime: 1, IsNew: true, FirstSeen: 1},
		Expected{Partition: 2, Offset: 0, Reason: operators.BadEventTime, UUID: operators.UUID{15: 1}},
		Expected{Partition: 1<<31 - 1, Offset: 5, Reason: operators.TooFarInFuture, UUID: operators.UUID{0: 0xff}, EventTime: -7, Late: true, FirstSeen: 1<<63 - 1},
	)
	kinds := map[operators.Reason]int{}
	for _, e := range want {
		kinds[e.Reason]++
	}
	if len(kinds) < 8 {
		t.Fatalf("the test covers only the reasons %v", kinds)
	}

	var buf bytes.Buffer
	if err := WriteOracle(&buf, want); err != nil {
		t.Fatal(err)
	}
	text := buf.String()
	if n := strings.Count(text, "\n"); n != len(want) {
		t.Fatalf("%d lines for %d records", n, len(want))
	}
	first := text[:strings.IndexByte(text, '\n')]
	for _, m := range []string{`"partition":`, `"offset":`, `"uuid":`, `"event_time_ms":`, `"is_new":`, `"late":`, `"first_seen_ms":`, `"reason":"`} {
		if !strings.Contains(first, m) {
			t.Errorf("line %s lacks %s", first, m)
		}
	}
	if !strings.Contains(text, `"uuid":null,`) || !strings.Contains(text, `"reason":"not_json"`) ||
		!strings.Contains(text, `"uuid":"00000000-0000-0000-0000-000000000000"`) {
		t.Error("null uuids, reasons or the zero uuid are not written as documented")
	}
	got, err := ReadOracle(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		for i := range want {
			if i >= len(got) || got[i] != want[i] {
				t.Fatalf("record %d: got %+v, want %+v", i, got[min(i, len(got)-1)], want[i])
			}
		}
		t.Fatalf("got %d records, want %d", len(got), len(want))
	}
}

func TestGeneratedOracleFileRefusesBadLines(t *testing.T) {
	const good = `{"partition":1,"offset":2,"uuid":"3F1C2B9E8A4742B1A2B3C4D5E6F70819","event_time_ms":3,"is_new":1,"late":0,"first_seen_ms":3,"reason":"ok"}`
	got, err := ReadOracle(strings.NewReader(good + "\n"))
	if err != nil || len(got) != 1 || got[0].UUID.String() != "3f1c2b9e-8a47-42b1-a2b3-c4d5e6f70819" || !got[0].IsNew {
		t.Fatalf("good line: %+v, %v", got, err)
	}
	for _, bad := range []string{
		strings.Replace(good, `"offset":2,`, ``, 1),
		strings.Replace(good, `"reason":"ok"`, `"reason":"fine"`, 1),
		strings.Replace(good, `"is_new":1`, `"is_new":2`, 1),
		strings.Replace(good, `"late":0`, `"late":true`, 1),
		strings.Replace(good, `"3F1C2B9E8A4742B1A2B3C4D5E6F70819"`, `"nope"`, 1),
		strings.Replace(good, `"reason"`, `"extra":1,"reason"`, 1),
		`{"partition":1`,
	} {
		if _, err := ReadOracle(strings.NewReader(good + "\n" + bad + "\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("%s: got %v, want an error naming line 2", bad, err)
		}
	}
}
