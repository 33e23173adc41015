package filesink

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
)

var payloads = []string{
	`{}`,
	`{"a":1}`,
	`{"msg":"she said \"hi\"","path":"C:\\temp"}`,
	`{"text":"naïve café – 日本語 – 🙂","ctl":"a\tb\nc\u0000"}`,
	"{\n  \"pretty\": [1, 2,\r\n 3]\n}",
}

func randomBatch(rng *rand.Rand, b *sinks.Batch, epoch uint64, n int, firstOffset int64) []operators.Row {
	b.Reset()
	b.Epoch = epoch
	rows := make([]operators.Row, n)
	for i := range rows {
		var u operators.UUID
		for j := range u {
			u[j] = byte(rng.IntN(256))
		}
		t := 1_706_745_600_000 + rng.Int64N(10*86_400_000) // from 2024-02-01
		rows[i] = operators.Row{
			UUID: u, EventTime: t, EventDate: int32(t / 86_400_000), FirstSeen: t - rng.Int64N(1e9),
			IsNew: rng.IntN(2) == 0, Late: rng.IntN(4) == 0, Partition: int32(rng.IntN(3)),
			Offset: firstOffset + int64(i), Timestamp: t + rng.Int64N(5000),
			Payload: []byte(payloads[rng.IntN(len(payloads))]),
		}
		b.Append(&rows[i])
	}
	return rows
}

func checkLines(t *testing.T, got []Line, want []operators.Row) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("read %d lines, wrote %d rows", len(got), len(want))
	}
	for i, l := range got {
		r := &want[i]
		w := Line{
			UUID:      r.UUID.String(),
			EventTime: time.UnixMilli(r.EventTime).UTC(),
			FirstSeen: time.UnixMilli(r.FirstSeen).UTC(),
			KafkaTime: time.UnixMilli(r.Timestamp).UTC(),
			EventDate: time.Unix(int64(r.EventDate)*86400, 0).UTC().Format(time.DateOnly),
			IsNew:     r.IsNew, Late: r.Late, Partition: r.Partition, Offset: r.Offset,
		}
		gotPayload := l.Payload
		l.Payload = nil
		if l.UUID != w.UUID || !l.EventTime.Equal(w.EventTime) || !l.FirstSeen.Equal(w.FirstSeen) ||
			!l.KafkaTime.Equal(w.KafkaTime) || l.EventDate != w.EventDate || l.IsNew != w.IsNew ||
			l.Late != w.Late || l.Partition != w.Partition || l.Offset != w.Offset {
			t.Errorf("line %d = %+v, want %+v", i, l, w)
		}
		if !sameJSON(t, gotPayload, r.Payload) {
			t.Errorf("line %d payload = %s, want %s", i, gotPayload, r.Payload)
		}
	}
}

func sameJSON(t *testing.T, a, b []byte) bool {
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("payload %s: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("payload %s: %v", b, err)
	}
	ja, _ := json.Marshal(va)
	jb, _ := json.Marshal(vb)
	return bytes.Equal(ja, jb)
}

// sortRows orders rows by source partition and offset, the order ReadDir
// returns a single date's files in.
func sortRows(rows []operators.Row) []operators.Row {
	rows = slices.Clone(rows)
	slices.SortStableFunc(rows, func(a, b operators.Row) int {
		return cmp.Or(cmp.Compare(a.EventDate, b.EventDate), cmp.Compare(a.Partition, b.Partition), cmp.Compare(a.Offset, b.Offset))
	})
	return rows
}

func TestWriteReadBack(t *testing.T) {
	for _, f := range []Format{JSONL, Parquet} {
		t.Run(string(f), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "a", "b")
			s, err := Open(dir, f)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			rng := rand.New(rand.NewPCG(1, 2))
			var b sinks.Batch
			var all []operators.Row
			for epoch, n := range []int{500, 0, 3000, 3} {
				rows := randomBatch(rng, &b, uint64(epoch), n, int64(len(all)))
				if err := s.Write(context.Background(), &b); err != nil {
					t.Fatal(err)
				}
				all = append(all, rows...)
				// Write returned: the rows are visible already.
				got, err := ReadDir(dir)
				if err != nil {
					t.Fatal(err)
				}
				checkLines(t, got, sortRows(all))
			}
			checkNoTemps(t, dir)
		})
	}
}

// TestLayout checks the directories, the names and the contents of the
// files of a batch: one per date and partition, rows in batch order.
func TestLayout(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, JSONL)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d1 := int32(time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC).Unix() / 86400)
	var b sinks.Batch
	var rows []operators.Row
	for _, r := range []struct {
		date int32
		p    int32
		off  int64
	}{{d1, 3, 123}, {d1 + 1, 3, 124}, {d1, 0, 7}, {d1, 3, 456}, {d1, 3, 200}, {d1 + 1, 0, 9}} {
		row := operators.Row{EventDate: r.date, EventTime: int64(r.date) * 86400_000, Partition: r.p, Offset: r.off, Payload: []byte(`{}`)}
		b.Append(&row)
		rows = append(rows, row)
	}
	if err := s.Write(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	want := map[string][]int64{
		"event_date=2026-11-22/part-p0000-o000000000007-000000000007.jsonl": {7},
		"event_date=2026-11-22/part-p0003-o000000000123-000000000456.jsonl": {123, 456, 200},
		"event_date=2026-11-23/part-p0000-o000000000009-000000000009.jsonl": {9},
		"event_date=2026-11-23/part-p0003-o000000000124-000000000124.jsonl": {124},
	}
	got := map[string][]int64{}
	err = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		lines, err := readJSONL(path)
		for _, l := range lines {
			got[rel] = append(got[rel], l.Offset)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("files\n%v\nwant\n%v", got, want)
	}
	// The same batch again, as a replay, stores nothing new.
	b.Retry = true
	s2, err := Open(dir, Parquet) // stored rows are skipped whatever the format
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Write(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	all, err := ReadDir(dir)
	if err != nil || len(all) != len(rows) {
		t.Fatalf("after the replay: %d rows, %v; want %d", len(all), err, len(rows))
	}
}

func checkNoTemps(t *testing.T, dir string) {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(dir, "*", tmpPrefix+"*"))
	if len(matches) > 0 {
		t.Errorf("temporary files left: %v", matches)
	}
}
func TestLineFormat(t *testing.T) {
	u, _ := operators.ParseUUID([]byte("6BA7B810-9DAD-11D1-80B4-00C04FD430C8"))
	r := operators.Row{
		UUID:      u,
		EventTime: time.Date(2024, 1, 31, 23, 59, 58, 123e6, time.UTC).UnixMilli(),
		EventDate: int32(time.Date(2024, 1, 31, 0, 0, 0, 0, time.UTC).Unix() / 86400),
		FirstSeen: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC).UnixMilli(),
		IsNew:     true, Partition: 3, Offset: 12,
		Timestamp: time.Date(2024, 2, 1, 0, 0, 0, 1e6, time.UTC).UnixMilli(),
		Payload:   []byte("{\"a\": \"x\\ny\",\n\"b\":[1]}"),
	}
	var b sinks.Batch
	b.Append(&r)
	got := string(append(sinks.AppendJSON(nil, &b, 0), '\n'))
	want := `{"uuid":"6ba7b810-9dad-11d1-80b4-00c04fd430c8","event_time":"2024-01-31T23:59:58.123Z",` +
		`"event_date":"2024-01-31","first_seen":"2024-01-02T03:04:05.000Z","is_new":1,"late":0,` +
		`"src_partition":3,"src_offset":12,"kafka_time":"2024-02-01T00:00:00.001Z",` +
		`"payload":{"a": "x\ny", "b":[1]}}` + "\n"
	if got != want {
		t.Errorf("line\n%s\nwant\n%s", got, want)
	}
	if n := testing.AllocsPerRun(100, func() { _ = sinks.AppendJSON(make([]byte, 0, 1024)[:0], &b, 0) }); n > 1 {
		t.Errorf("appendLine allocates %v times", n)
	}
}

func TestOpenRemovesTemps(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "event_date=2026-11-22")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(sub, tmpPrefix+"abc-part-p0000-o000000000001-000000000002.jsonl")
	keep := filepath.Join(sub, "_SUCCESS")
	for _, p := range []string{tmp, keep} {
		if err := os.WriteFile(p, []byte(`{"uuid":"00`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if lines, err := ReadDir(dir); err != nil || len(lines) != 0 {
		t.Fatalf("ReadDir with a temporary file = %v, %v; want nothing", lines, err)
	}
	s, err := Open(dir, JSONL)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the temporary file is still there: %v", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("Open removed another file: %v", err)
	}
}

// TestFailedRenameLeavesNothing fails the rename of the second file of a
// batch: the first file stays (whole), no temporary file is left, and the
// retry of the same batch writes the rest, each row once.
func TestFailedRenameLeavesNothing(t *testing.T) {
	for _, f := range []Format{JSONL, Parquet} {
		t.Run(string(f), func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, f)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var b sinks.Batch
			rows := randomBatch(rand.New(rand.NewPCG(3, 4)), &b, 1, 300, 0)
			renames := 0
			errRename := errors.New("injected rename failure")
			defer func(r func(string, string) error) { renameFile = r }(renameFile)
			renameFile = func(from, to string) error {
				renames++
				if renames == 2 {
					return errRename
				}
				return os.Rename(from, to)
			}
			if err := s.Write(context.Background(), &b); !errors.Is(err, errRename) {
				t.Fatalf("Write = %v, want the rename failure", err)
			}
			checkNoTemps(t, dir)
			got, err := ReadDir(dir)
			if err != nil || len(got) == 0 || len(got) >= len(rows) {
				t.Fatalf("after the failure: %d rows, %v; want some of %d", len(got), err, len(rows))
			}
			if err := s.Write(context.Background(), &b); err != nil {
				t.Fatal(err)
			}
			got, err = ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			checkLines(t, got, sortRows(rows))
		})
	}
}

// TestParquetSchema reads a file back with the Parquet library's generic
// row API: the columns, their types, and the values.
func TestParquetSchema(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Parquet)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u, _ := operators.ParseUUID([]byte("6ba7b810-9dad-11d1-80b4-00c04fd430c8"))
	et := time.Date(2024, 1, 31, 23, 59, 58, 123e6, time.UTC)
	r := operators.Row{UUID: u, EventTime: et.UnixMilli(), EventDate: int32(et.Unix() / 86400),
		FirstSeen: et.Add(-time.Hour).UnixMilli(), IsNew: true, Partition: 3, Offset: 12,
		Timestamp: et.Add(time.Second).UnixMilli(), Payload: []byte(`{"a":[1]}`)}
	var b sinks.Batch
	b.Append(&r)
	if err := s.Write(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "event_date=2024-01-31", FileName(3, 12, 12, Parquet))
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := parquet.OpenFile(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	var cols []string
	for _, f := range pf.Schema().Fields() {
		cols = append(cols, f.Name()+" "+f.Type().String())
	}
	wantCols := []string{"uuid STRING", "event_time TIMESTAMP(isAdjustedToUTC=true,unit=MILLIS)", "event_date DATE",
		"first_seen TIMESTAMP(isAdjustedToUTC=true,unit=MILLIS)", "is_new INT(8,false)", "late INT(8,false)",
		"src_partition INT(32,true)", "src_offset INT(64,true)", "kafka_time TIMESTAMP(isAdjustedToUTC=true,unit=MILLIS)", "payload STRING"}
	if !reflect.DeepEqual(cols, wantCols) {
		t.Errorf("columns\n%q\nwant\n%q", cols, wantCols)
	}
	if n := pf.NumRows(); n != 1 {
		t.Fatalf("%d rows", n)
	}
	rr := pf.RowGroups()[0].Rows()
	defer rr.Close()
	prow := make([]parquet.Row, 1)
	if n, err := rr.ReadRows(prow); n != 1 {
		t.Fatalf("ReadRows = %d, %v", n, err)
	}
	v := prow[0]
	got := fmt.Sprint(string(v[0].ByteArray()), v[1].Int64(), v[2].Int32(), v[3].Int64(), v[4].Int32(), v[5].Int32(),
		v[6].Int32(), v[7].Int64(), v[8].Int64(), string(v[9].ByteArray()))
	want := fmt.Sprint("6ba7b810-9dad-11d1-80b4-00c04fd430c8", r.EventTime, r.EventDate, r.FirstSeen, 1, 0, 3, 12, r.Timestamp, `{"a":[1]}`)
	if got != want {
		t.Errorf("row = %s, want %s", got, want)
	}
	lines, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkLines(t, lines, []operators.Row{r})
}

func BenchmarkWrite(b *testing.B) {
	s, err := Open(b.TempDir(), JSONL)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var batch sinks.Batch
	randomBatch(rand.New(rand.NewPCG(1, 1)), &batch, 1, 100_000, 0)
	b.ResetTimer()
	for range b.N {
		for j := range batch.Offset {
			batch.Offset[j] += 100_000 // new rows, not a replay
		}
		if err := s.Write(context.Background(), &batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(100_000*b.N)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkEncode measures the JSON Lines encoding of a row, with the write
// and the fsync of its 1000-row batch shared out (ns/op is per row).
func BenchmarkEncode(b *testing.B) {
	s, err := Open(b.TempDir(), JSONL)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var batch sinks.Batch
	row := operators.Row{EventTime: 1767225600123, EventDate: 20454, FirstSeen: 1767225600000, IsNew: true,
		Offset: 42, Timestamp: 1767225600200, Payload: []byte(`{"event":"page_view","page":"/products/42"}`)}
	for i := 0; i < 1000; i++ {
		batch.Append(&row)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for j := range batch.Offset {
		batch.Offset[j] = int64(j)
	}
	for i := 0; i < b.N; i += batch.Len() {
		for j := range batch.Offset {
			batch.Offset[j] += int64(batch.Len()) // new rows, not a replay
		}
		if err := s.Write(context.Background(), &batch); err != nil {
			b.Fatal(err)
		}
	}
}

// TestHeldRecordInsideAnEarlierRange: a record held for the watermark is
// emitted by a later epoch than the records after it, so its offset lies
// inside the range of a file already written for its date and partition.
// It must be stored, by a normal write and by a replay of that epoch.
func TestHeldRecordInsideAnEarlierRange(t *testing.T) {
	for _, f := range []Format{JSONL, Parquet} {
		dir := t.TempDir()
		s, err := Open(dir, f)
		if err != nil {
			t.Fatal(err)
		}
		day := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
		row := func(off int64) operators.Row {
			return operators.Row{UUID: operators.UUID{1, byte(off)}, EventTime: day.UnixMilli(), EventDate: int32(day.Unix() / 86400),
				FirstSeen: day.UnixMilli(), Offset: off, Timestamp: day.UnixMilli(), Payload: []byte(`{}`)}
		}
		var first, held sinks.Batch
		for _, off := range []int64{10, 20} {
			r := row(off)
			first.Append(&r)
		}
		r := row(15)
		held.Append(&r)
		for _, b := range []*sinks.Batch{&first, &held} {
			if err := s.Write(context.Background(), b); err != nil {
				t.Fatal(err)
			}
		}
		held.Retry = true // and the epoch replayed after a crash
		if err := s.Write(context.Background(), &held); err != nil {
			t.Fatal(err)
		}
		s.Close()
		lines, err := ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var offs []int64
		for _, l := range lines {
			offs = append(offs, l.Offset)
		}
		slices.Sort(offs)
		if !slices.Equal(offs, []int64{10, 15, 20}) {
			t.Errorf("%s: stored offsets %v, want [10 15 20]", f, offs)
		}
	}
}
