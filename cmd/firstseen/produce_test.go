package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
)

// spellings of a uuid that all denote the same user.
func spellings(u operators.UUID) [3]string {
	c := u.String()
	return [3]string{c, strings.ToUpper(c), strings.ReplaceAll(c, "-", "")}
}

func testUUID(i int) operators.UUID {
	var u operators.UUID
	for j := range u {
		u[j] = byte(i*37 + j*11 + 5)
	}
	u[6], u[8] = u[6]&0x0f|0x40, u[8]&0x3f|0x80
	return u
}

// checkKeyed checks that the records in got are the input values in order
// per partition, each keyed by its canonical uuid (wantKey; "" for none)
// and, if keyed, on the partition Kafka's default partitioner picks. Every
// value holds its input index as member "i".
func checkKeyed(t *testing.T, got map[int32][]*kgo.Record, values []string, wantKey []string, partitions int) {
	t.Helper()
	seen := 0
	for p, rs := range got {
		last := -1
		for _, r := range rs {
			var m struct{ I *int }
			if err := json.Unmarshal(r.Value, &m); err != nil || m.I == nil {
				t.Fatalf("partition %d offset %d: value %q has no index", p, r.Offset, r.Value)
			}
			i := *m.I
			if i <= last {
				t.Fatalf("partition %d: record %d after record %d: order not preserved", p, i, last)
			}
			last = i
			seen++
			if string(r.Value) != values[i] {
				t.Errorf("record %d: value %q, want %q", i, r.Value, values[i])
			}
			switch {
			case wantKey[i] == "" && r.Key != nil:
				t.Errorf("record %d: key %q, want none", i, r.Key)
			case wantKey[i] != "" && string(r.Key) != wantKey[i]:
				t.Errorf("record %d: key %q, want %q", i, r.Key, wantKey[i])
			case wantKey[i] != "" && p != workload.Partition(r.Key, partitions):
				t.Errorf("record %d: partition %d, want %d", i, p, workload.Partition(r.Key, partitions))
			}
		}
	}
	if seen != len(values) {
		t.Fatalf("%d records, want %d", seen, len(values))
	}
}

// jsonlInput builds JSON Lines of users in every uuid spelling, plus lines
// whose uuid cannot be read (they must go unkeyed). Every line is a JSON
// object with its index "i".
func jsonlInput() (values, keys []string) {
	add := func(v, k string) {
		values, keys = append(values, v), append(keys, k)
	}
	for i := 0; len(values) < 400; i++ {
		u := testUUID(i % 37)
		sp := spellings(u)
		n := len(values)
		switch i % 11 {
		case 3:
			add(fmt.Sprintf(`{"i":%d,"uuid":"not-a-uuid-%d","event_time":1767225600123}`, n, i), "")
		case 5:
			add(fmt.Sprintf(`{"i":%d,"event_time":1767225600123}`, n), "")
		case 7:
			add(fmt.Sprintf(`{"i":%d,"uuid":12345,"event_time":1767225600123}`, n), "")
		case 9: // valid uuid, bad event time: keyed, run dead-letters it
			add(fmt.Sprintf(`{"i":%d, "uuid": %q, "event_time":"yesterday"}`, n, sp[i%3]), u.String())
		default:
			add(fmt.Sprintf(`{"i":%d,"uuid":%q,"event_time":%d,"page":"/a,b\"c"}`, n, sp[i%3], 1767225600123+int64(i)), u.String())
		}
	}
	return values, keys
}

func TestProduceJSONLKeysByCanonicalUUID(t *testing.T) {
	const parts = 4
	c := fakeKafka(t, parts, "logs")
	values, keys := jsonlInput()
	dir := t.TempDir()
	path := filepath.Join(dir, "dump.jsonl")
	// CRLF line ends, a blank line: neither ends up in a value.
	text := strings.Join(values[:10], "\r\n") + "\r\n\n" + strings.Join(values[10:], "\n") // no final newline
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, nil, "produce", "--brokers", c.ListenAddrs()[0], "--topic", "logs", "--log-level", "error", path)
	if err != nil {
		t.Fatal(err)
	}
	unkeyed := 0
	for _, k := range keys {
		if k == "" {
			unkeyed++
		}
	}
	for _, want := range []string{fmt.Sprintf("produced %d records", len(values)), fmt.Sprintf("unkeyed:  %d", unkeyed), "records/s", "(JSON Lines)"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	checkKeyed(t, consumeTopic(t, c, "logs", len(values)), values, keys, parts)
}

func TestProduceUnkeyedNotJSON(t *testing.T) {
	c := fakeKafka(t, 3, "logs")
	in := "not json at all\n[1,2]\n{\"uuid\":\"3F1C2B9E-8A47-42B1-A2B3-C4D5E6F70819\",\"event_time\":5}\n{\"uuid\":\"3f1c2b9e-8a47-42b1-a2b3-c4d5e6f70819\"\n"
	if _, _, err := runCLI(t, nil, "produce", "--brokers", c.ListenAddrs()[0], "--topic", "logs", "--format", "jsonl", "--log-level", "error",
		writeTemp(t, "dump.txt", []byte(in))); err != nil {
		t.Fatal(err)
	}
	got := consumeTopic(t, c, "logs", 4)
	keyed := 0
	for _, rs := range got {
		for _, r := range rs {
			if r.Key != nil {
				keyed++
				if string(r.Key) != "3f1c2b9e-8a47-42b1-a2b3-c4d5e6f70819" || string(r.Value) != strings.Split(in, "\n")[2] {
					t.Errorf("keyed record %q %q", r.Key, r.Value)
				}
			}
		}
	}
	if keyed != 1 {
		t.Errorf("%d keyed records, want 1 (truncated JSON is not keyed)", keyed)
	}
}

// csvInput is a CSV dump with its expected values and keys. Each row has an
// index column i.
func csvInput() (text string, values, keys []string) {
	var b strings.Builder
	b.WriteString("\ufeffi,uuid,event_time,page,note,score,zip\r\n") // Excel's BOM
	for n := 0; n < 120; n++ {
		u := testUUID(n % 13)
		sp := spellings(u)
		uuidCell, key := sp[n%3], u.String()
		switch n % 10 {
		case 4:
			uuidCell, key = "", ""
		case 6:
			uuidCell, key = "zz"+sp[0][2:], ""
		case 8: // all digits, yet a uuid: it must stay a string
			uuidCell, key = "12345678901234567890123456789012", "12345678-9012-3456-7890-123456789012"
		}
		note, noteJSON := fmt.Sprintf("plain %d", n), fmt.Sprintf(`"plain %d"`, n)
		switch n % 4 {
		case 1:
			note, noteJSON = `"a, b and ""c"""`, `"a, b and \"c\""`
		case 2:
			note, noteJSON = "\"two\nlines\"", `"two\nlines"`
		case 3:
			note, noteJSON = `"Zürich → 東京, \ ok"`, `"Zürich → 東京, \\ ok"`
		}
		score, scoreJSON := "-1.5e3", "-1.5e3"
		if n%3 == 0 {
			score, scoreJSON = "", `""`
		}
		fmt.Fprintf(&b, "%d,%s,%d,/p?q=%d,%s,%s,007\r\n", n, uuidCell, 1767225600123+int64(n), n, note, score)
		values = append(values, fmt.Sprintf(`{"i":%d,"uuid":%q,"event_time":%d,"page":"/p?q=%d","note":%s,"score":%s,"zip":"007"}`,
			n, uuidCell, 1767225600123+int64(n), n, noteJSON, scoreJSON))
		keys = append(keys, key)
	}
	return b.String(), values, keys
}

func TestProduceCSV(t *testing.T) {
	const parts = 3
	c := fakeKafka(t, parts, "logs")
	text, values, keys := csvInput()
	for _, v := range values {
		if !json.Valid([]byte(v)) {
			t.Fatalf("bad expectation %s", v)
		}
	}
	out, _, err := runCLI(t, nil, "produce", "--brokers", c.ListenAddrs()[0], "--topic", "logs", "--log-level", "error",
		writeTemp(t, "export.csv", []byte(text)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "(CSV)") || !strings.Contains(out, "unkeyed:  24") {
		t.Errorf("summary:\n%s", out)
	}
	checkKeyed(t, consumeTopic(t, c, "logs", len(values)), values, keys, parts)
}

func TestProduceCSVValuesAreJSON(t *testing.T) {
	for in, want := range map[string]bool{
		"0": true, "-0": true, "12": true, "1767225600123": true, "-1.5e3": true, "2.50": true, "1E+9": true, "3e-2": true,
		"": false, "-": false, "007": false, "1.": false, ".5": false, "1e": false, "+1": false, "0x10": false,
		"1 ": false, " 1": false, "NaN": false, "Infinity": false, "true": false, "1,5": false,
	} {
		if got := isJSONNumber(in); got != want {
			t.Errorf("isJSONNumber(%q) = %v, want %v", in, got, want)
		}
	}
	for _, s := range []string{"", "plain", `q"uote`, `back\slash`, "tab\tnl\ncr\r", "\x00\x1f\x7f", "é東🚀", "bad\xffutf8\xc3", "\u2028"} {
		b := workload.AppendJSONString(nil, s)
		var back string
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("%q -> %s: %v", s, b, err)
		}
		want, _ := json.Marshal(s) // encoding/json also replaces bad UTF-8 with U+FFFD
		var wantBack string
		json.Unmarshal(want, &wantBack)
		if back != wantBack {
			t.Errorf("%q -> %s -> %q, want %q", s, b, back, wantBack)
		}
	}
}

func TestProduceGzipAndStdin(t *testing.T) {
	const parts = 4
	values, keys := jsonlInput()
	plain := []byte(strings.Join(values, "\n") + "\n")
	csvText, csvValues, csvKeys := csvInput()
	cases := []struct {
		name   string
		file   string // "" for stdin
		data   []byte
		args   []string
		values []string
		keys   []string
	}{
		{"gzip file, no extension", "dump.data", gzipped(t, plain), nil, values, keys},
		{"gzip file .jsonl.gz", "dump.jsonl.gz", gzipped(t, plain), nil, values, keys},
		{"stdin", "", plain, nil, values, keys},
		{"gzip stdin", "", gzipped(t, plain), nil, values, keys},
		{"gzip csv stdin, sniffed", "", gzipped(t, []byte(csvText)), nil, csvValues, csvKeys},
		{"gzip csv file", "export.csv.gz", gzipped(t, []byte(csvText)), []string{"--format", "csv", "--batch", "7"}, csvValues, csvKeys},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := fakeKafka(t, parts, "logs")
			args := append([]string{"produce", "--brokers", c.ListenAddrs()[0], "--topic", "logs", "--log-level", "error"}, tc.args...)
			var stdin io.Reader
			if tc.file == "" {
				args, stdin = append(args, "-"), bytes.NewReader(tc.data)
			} else {
				args = append(args, writeTemp(t, tc.file, tc.data))
			}
			out, _, err := runCLI(t, stdin, args...)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "gzip") == bytes.HasPrefix(tc.data, []byte{0x1f, 0x8b}) {
				t.Errorf("summary does not say gzip:\n%s", out)
			}
			checkKeyed(t, consumeTopic(t, c, "logs", len(tc.values)), tc.values, tc.keys, parts)
		})
	}
}

func TestProduceRefusals(t *testing.T) {
	c := fakeKafka(t, 2, "logs")
	b := c.ListenAddrs()[0]
	good := writeTemp(t, "a.jsonl", []byte(`{"uuid":"3f1c2b9e-8a47-42b1-a2b3-c4d5e6f70819"}`+"\n"))
	usage := []struct {
		args []string
		want string
	}{
		{[]string{"produce", "--topic", "logs"}, "takes one argument"},
		{[]string{"produce", "--topic", "logs", good, good}, "takes one argument"},
		{[]string{"produce", good}, "--topic is required"},
		{[]string{"produce", "--topic", "logs", "--format", "xml", good}, `--format "xml"`},
		{[]string{"produce", "--topic", "logs", "--batch", "0", good}, "--batch 0"},
		{[]string{"produce", "--topic", "logs", "--uuid-field", "", good}, "--uuid-field is empty"},
		{[]string{"produce", "--topic", "logs", filepath.Join(t.TempDir(), "missing.jsonl")}, "no such file"},
	}
	for _, tc := range usage {
		_, _, err := runCLI(t, nil, tc.args...)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &ue) {
			t.Errorf("%v: got %v, want a usage error containing %q", tc.args, err, tc.want)
		}
	}
	failures := []struct {
		args []string
		want string
	}{
		{[]string{"--topic", "nope", good}, `topic "nope" does not exist`},
		{[]string{"--topic", "logs", writeTemp(t, "bad.csv", []byte("uuid,a\nx,1\ny,2,3\n"))}, "record on line 3: wrong number of fields"},
		{[]string{"--topic", "logs", writeTemp(t, "bad.gz", []byte{0x1f, 0x8b, 1, 2, 3})}, "gzip"},
		{[]string{"--topic", "logs", writeTemp(t, "w.jsonl", []byte(`{"partition":0,"key":null,"timestamp_ms":5,"value":"x"}`+"\n{}\n"))}, "line 2: no timestamp_ms"},
	}
	for _, tc := range failures {
		_, _, err := runCLI(t, nil, append([]string{"produce", "--brokers", b, "--log-level", "error"}, tc.args...)...)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), tc.want) || errors.As(err, &ue) {
			t.Errorf("%v: got %v, want a runtime error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestProduceHelpSaysWhatItDoes(t *testing.T) {
	out, _, err := runCLI(t, nil, "produce", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--brokers ", "--topic ", "--uuid-field ", "--format ", "--batch ", "--log-level ",
		"without a key", "dead-letter", "idempotent", "gzip", "FILE|-"} {
		if !strings.Contains(out, want) {
			t.Errorf("produce --help lacks %q", want)
		}
	}
}

// BenchmarkProduce measures produce from files of about a million records
// (plain JSON Lines as a log export has them, the same gzipped, and a
// workload file) into an in-process broker:
//
//	go test -run '^$' -bench Produce -benchtime 1x ./cmd/firstseen/
func BenchmarkProduce(b *testing.B) {
	dir := b.TempDir()
	func() { // the workload is garbage before the clock starts
		recs, err := workload.Generate(workload.Config{Users: 200_000, Partitions: 8, Seed: 1})
		if err != nil {
			b.Fatal(err)
		}
		var plain, wl bytes.Buffer
		for i := range recs {
			if v := recs[i].Value; v != nil && !bytes.ContainsAny(v, "\r\n") {
				plain.Write(v)
				plain.WriteByte('\n')
			}
		}
		if err := workload.WriteJSONL(&wl, recs); err != nil {
			b.Fatal(err)
		}
		for name, data := range map[string][]byte{"jsonl": plain.Bytes(), "jsonl.gz": gzipped(b, plain.Bytes()), "workload": wl.Bytes()} {
			if err := os.WriteFile(filepath.Join(dir, "in."+name), data, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}()
	runtime.GC()
	for _, name := range []string{"jsonl", "jsonl.gz", "workload"} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				c := fakeKafka(b, 8, "logs")
				b.StartTimer()
				start := time.Now()
				out, _, err := runCLI(b, nil, "produce", "--brokers", c.ListenAddrs()[0], "--topic", "logs", "--log-level", "error", filepath.Join(dir, "in."+name))
				if err != nil {
					b.Fatal(err)
				}
				elapsed := time.Since(start)
				b.StopTimer()
				var n int
				fmt.Sscanf(out, "produced %d records", &n)
				b.ReportMetric(float64(n)/elapsed.Seconds(), "records/s")
				c.Close()
				runtime.GC()
				b.StartTimer()
			}
		})
	}
}

// The fast reader of workload lines agrees with encoding/json whenever it
// accepts a line, and accepts every line WriteJSONL writes.
func TestProduceWorkloadLineParser(t *testing.T) {
	recs := generated(t, workload.Config{Users: 300, Seed: 3, MalformedShare: 0.2})
	recs = append(recs,
		workload.Record{Key: []byte("k\xff"), Value: []byte("v\xfe\x00"), Timestamp: time.UnixMilli(-5)},
		workload.Record{Key: []byte{}, Value: []byte{}, Partition: 1 << 30},
		workload.Record{Key: nil, Value: nil},
		workload.Record{Key: []byte("\u2028\t\"\\/ é🚀"), Value: []byte("\x01\x1f\x7f</script>")},
	)
	var buf bytes.Buffer
	if err := workload.WriteJSONL(&buf, recs); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	lines = append(lines,
		`{"timestamp_ms":1,"value":"\ud83d\ude00 \u00e9\u0000\"\\\/\b\f\n\r\t","key":"a"}`,
		` { "partition" : -2 , "timestamp_ms" : -9223372036854775808 , "value" : null , "key_b64" : "AQI=" } `,
		`{}`,
	)
	var sl slab
	compare := func(line string, mustAccept bool) {
		t.Helper()
		var fast, slow wireFields
		ok := parseWireFast([]byte(line), &sl, &fast)
		if mustAccept && !ok {
			t.Fatalf("fast reader refuses %s", line)
		}
		if !ok {
			return
		}
		if err := parseWireJSON([]byte(line), &sl, &slow); err != nil {
			t.Fatalf("fast reader accepts %s, encoding/json says %v", line, err)
		}
		same := func(a, b []byte) bool { return bytes.Equal(a, b) && (a == nil) == (b == nil) }
		if fast.partition != slow.partition || fast.hasPartition != slow.hasPartition || fast.ts != slow.ts || fast.hasTS != slow.hasTS ||
			!same(fast.key, slow.key) || !same(fast.value, slow.value) || !same(fast.keyB64, slow.keyB64) || !same(fast.valueB64, slow.valueB64) {
			t.Fatalf("%s:\nfast %+v\njson %+v", line, fast, slow)
		}
	}
	for _, l := range lines {
		compare(l, true)
	}
	// Mutations: the fast reader may refuse them, but must not disagree.
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte(`"\{}:,-0123456789eE.nul u\xff\xc3 abtfr/` + "\x00\n")
	for range 50_000 {
		b := []byte(lines[r.IntN(len(lines))])
		for range 1 + r.IntN(3) {
			at := r.IntN(len(b) + 1)
			switch r.IntN(3) {
			case 0:
				b = append(b[:at], append([]byte{alphabet[r.IntN(len(alphabet))]}, b[at:]...)...)
			case 1:
				if at < len(b) {
					b = append(b[:at], b[at+1:]...)
				}
			default:
				if at < len(b) {
					b[at] = alphabet[r.IntN(len(alphabet))]
				}
			}
		}
		compare(string(b), false)
	}
}
