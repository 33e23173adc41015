package filesink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

func TestWriteReadBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "b", "out.jsonl")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var b sinks.Batch
	var all []operators.Row
	for epoch, n := range []int{500, 0, 7000, 3} {
		rows := randomBatch(rng, &b, uint64(epoch), n, int64(len(all)))
		if err := s.Write(context.Background(), &b); err != nil {
			t.Fatal(err)
		}
		all = append(all, rows...)
		// Write returned: the rows are in the file already.
		got, err := ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		checkLines(t, got, all)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Write(context.Background(), &b); err == nil {
		t.Fatal("Write after Close succeeded")
	}

	// Reopening appends.
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rows := randomBatch(rng, &b, 9, 10, int64(len(all)))
	if err := s.Write(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	all = append(all, rows...)
	got, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	checkLines(t, got, all)

	// Every line is one JSON object.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != len(all) {
		t.Fatalf("%d lines, want %d", len(lines), len(all))
	}
	for i, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Fatalf("line %d is not valid JSON: %s", i, l)
		}
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

func TestFsyncFailureIsUndone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	var b sinks.Batch
	first := randomBatch(rng, &b, 1, 100, 0)
	if err := s.Write(context.Background(), &b); err != nil {
		t.Fatal(err)
	}

	syncs := 0
	failSync := errors.New("injected fsync failure")
	defer func(f func(*os.File) error) { syncFile = f }(syncFile)
	syncFile = func(f *os.File) error {
		syncs++
		if syncs == 1 {
			return failSync
		}
		return f.Sync()
	}
	second := randomBatch(rng, &b, 2, 50, 100)
	if err := s.Write(context.Background(), &b); !errors.Is(err, failSync) {
		t.Fatalf("Write = %v, want the fsync failure", err)
	}
	got, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	checkLines(t, got, first) // the failed write left nothing behind
	// The engine retries the same batch.
	if err := s.Write(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	if syncs != 2 {
		t.Errorf("%d fsyncs, want 2", syncs)
	}
	got, err = ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	checkLines(t, got, append(first, second...))
}

func TestOpenCutsIncompleteLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	var b sinks.Batch
	first := randomBatch(rng, &b, 1, 20, 0)
	if err := s.Write(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	// A crash in the middle of a write leaves half a line.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(`{"uuid":"0000`)
	_ = f.Close()
	if got, err := ReadFile(path); err != nil || len(got) != len(first) {
		t.Fatalf("ReadFile of a file with half a line = %d lines, %v", len(got), err)
	}
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	second := randomBatch(rng, &b, 2, 5, 20)
	if err := s.Write(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	got, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	checkLines(t, got, append(first, second...))
}

func TestOpenError(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Open(filepath.Join(dir, "file", "out.jsonl")) // parent is a file
	if err == nil || !strings.Contains(err.Error(), "filesink "+filepath.Join(dir, "file", "out.jsonl")) {
		t.Fatalf("Open = %v, want an error naming the path", err)
	}
}

func BenchmarkWrite(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "out.jsonl"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var batch sinks.Batch
	randomBatch(rand.New(rand.NewPCG(1, 1)), &batch, 1, 100_000, 0)
	b.ResetTimer()
	for range b.N {
		if err := s.Write(context.Background(), &batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(100_000*b.N)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkEncode measures the JSON Lines encoding of a row, with the write
// and the fsync of its 1000-row batch shared out (ns/op is per row).
func BenchmarkEncode(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "rows.jsonl"))
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
	for i := 0; i < b.N; i += batch.Len() {
		if err := s.Write(context.Background(), &batch); err != nil {
			b.Fatal(err)
		}
	}
}
