package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
)

func newProduceCmd() *cobra.Command {
	var (
		f      pipelineFlags
		format string
		batch  int
	)
	cmd := &cobra.Command{
		Use:   "produce --topic TOPIC [flags] FILE|-",
		Short: "Produce a log dump (JSON Lines or CSV, gzip accepted) to the topic, keyed by uuid",
		Long: `produce reads a dump of activity logs from FILE, or from standard input when
FILE is "-", and produces every record to --topic, in input order: the sync
step that loads exported logs into Kafka for run.

Input formats (--format auto picks by file name, then by the first line):
  jsonl  one JSON object a line; each line's bytes, without the newline
         (and a CR before it), become the record value unchanged. Empty
         lines are skipped.
  csv    a header row names the fields; every other row becomes a JSON
         object with those member names, in header order. A value that is
         a JSON number (1767225600123, -1.5e3) is written as a number,
         anything else as a string; the --uuid-field column is always a
         string. Quoted fields may hold commas, newlines and "" quotes.
A gzip-compressed input (either format) is recognized by its magic bytes.
A file written by 'firstseen generate --output' (its first line has
"timestamp_ms" and "value" members) is produced as the records it
describes: each embedded value with its key and timestamp, keyed records to
the partition Kafka's default partitioner picks for the key and unkeyed
ones to the file's partition (modulo the topic's partition count), so that
'generate --output F' followed by 'produce F' puts the same records at the
same partitions and offsets as 'generate --topic' would.

Keys: each record is keyed by its user's uuid, read from the --uuid-field
member the way run reads it and normalized to the canonical lower-case form
with dashes, so the three spellings of a uuid (upper case, lower case, no
dashes) land on the same partition (Kafka's default murmur2 partitioner).
A record whose uuid cannot be parsed (not JSON, not an object, missing or
malformed uuid) is still produced, without a key, so that run sends it to
the dead-letter topic with the reason; the summary counts them.

Production is idempotent (Kafka's idempotent producer: a retry never
duplicates or reorders a record), with at most --batch records in flight.
The topic must exist. Progress counts bytes of input. On SIGINT or SIGTERM
produce stops reading, waits for the records already sent, and says how
many records of the input were produced; a second signal exits at once.`,
		Example: `  firstseen produce --brokers kafka-1:9092 --topic activity logs-2026-01-05.jsonl.gz
  datax-export | firstseen produce --topic activity --format csv -
  firstseen generate --users 1000 --output w.jsonl && firstseen produce --topic activity w.jsonl`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{fmt.Errorf("%s takes one argument, the input file or - for standard input; got %d", cmd.CommandPath(), len(args))}
			}
			return nil
		},
		PreRunE: preRun,
		RunE: func(cmd *cobra.Command, args []string) error {
			f.brokers = splitList(f.brokersList)
			if f.topic == "" {
				return usageError{errors.New("--topic is required: the Kafka topic to produce to")}
			}
			if err := checkHostPorts("brokers", f.brokers); err != nil {
				return err
			}
			if f.uuidField == "" {
				return usageError{errors.New("--uuid-field is empty: name the JSON member (or CSV column) holding the uuid")}
			}
			switch format {
			case "auto", "jsonl", "csv":
			default:
				return usageError{fmt.Errorf("--format %q: want auto, jsonl or csv", format)}
			}
			if batch < 1 {
				return usageError{fmt.Errorf("--batch %d must be at least 1", batch)}
			}
			log, err := f.logger()
			if err != nil {
				return err
			}
			name, in, size := args[0], io.Reader(nil), int64(0)
			if name == "-" {
				name, in = "standard input", cmd.InOrStdin()
				if fi, err := statRegular(in); err == nil {
					size = fi
				}
			} else {
				file, err := os.Open(args[0])
				if err != nil {
					return usageError{fmt.Errorf("input: %w", err)}
				}
				defer file.Close()
				in = file
				if fi, err := file.Stat(); err == nil && fi.Mode().IsRegular() {
					size = fi.Size()
				}
			}
			ctx, stop := interruptContext()
			defer stop()
			o := produceOptions{brokers: f.brokers, topic: f.topic, uuidField: f.uuidField, format: format,
				batch: batch, log: log, progress: cmd.ErrOrStderr()}
			st, err := produceDump(ctx, in, name, size, o)
			if st.records > 0 || err == nil {
				st.print(cmd.OutOrStdout(), o)
			}
			return err
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	f.addKafka(fs)
	hideFlags(fs, "group", "dlq-topic")
	fs.Lookup("topic").Usage = "Kafka topic to produce to; it must exist (required)"
	fs.StringVar(&f.uuidField, "uuid-field", "uuid", "JSON member (CSV column) holding the user's uuid, which becomes the record key")
	fs.StringVar(&format, "format", "auto", "input format: jsonl, csv, or auto (by file name, then by the first line)")
	fs.IntVar(&batch, "batch", 10000, "records in flight (buffered in the producer) at most")
	f.addLogging(fs)
	return cmd
}

// hideFlags hides registered flags that a command accepts (so that a shared
// environment works) but does not use.
func hideFlags(fs interface{ MarkHidden(string) error }, names ...string) {
	for _, n := range names {
		_ = fs.MarkHidden(n)
	}
}

// statRegular returns the size of r if it is a regular file.
func statRegular(r io.Reader) (int64, error) {
	f, ok := r.(*os.File)
	if !ok {
		return 0, errors.New("not a file")
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, errors.New("not a regular file")
	}
	return fi.Size(), nil
}

// interruptContext is cancelled by the first SIGINT or SIGTERM. From then
// on the signals have their default effect again, so a second one ends the
// process at once.
func interruptContext() (context.Context, func()) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx, stop
}

type produceOptions struct {
	brokers   []string
	topic     string
	uuidField string
	format    string // auto, jsonl or csv
	batch     int    // records in flight
	log       *slog.Logger
	progress  io.Writer // where a terminal progress bar goes
}

// produceStats is what produce did.
type produceStats struct {
	name       string
	format     string // jsonl, csv or workload
	gzipped    bool
	partitions int
	records    int64 // acknowledged
	sent       int64 // handed to the producer
	unkeyed    int64 // of those sent
	inBytes    int64 // read from the input (compressed, if it is)
	valueBytes int64
	elapsed    time.Duration
}

func (st *produceStats) print(w io.Writer, o produceOptions) {
	what := map[string]string{"jsonl": "JSON Lines", "csv": "CSV", "workload": "workload JSON Lines"}[st.format]
	if st.gzipped {
		what += ", gzip"
	}
	fmt.Fprintf(w, "produced %d records to topic %q (%d partitions) at %s\n", st.records, o.topic, st.partitions, strings.Join(o.brokers, ","))
	if st.format == "workload" {
		fmt.Fprintf(w, "  unkeyed:  %d (records of the file without a key)\n", st.unkeyed)
	} else {
		fmt.Fprintf(w, "  unkeyed:  %d (no parseable uuid in %q: run dead-letters them)\n", st.unkeyed, o.uuidField)
	}
	fmt.Fprintf(w, "  input:    %s (%s), %s read, %s of values\n", st.name, what, mb(st.inBytes), mb(st.valueBytes))
	secs := st.elapsed.Seconds()
	if secs <= 0 {
		secs = 1e-9
	}
	fmt.Fprintf(w, "  elapsed:  %s, %.0f records/s, %s/s of input\n", st.elapsed.Round(time.Millisecond),
		float64(st.records)/secs, mb(int64(float64(st.inBytes)/secs)))
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// produceDump produces the records of in (named name; size bytes, or 0 if
// unknown) to the topic.
func produceDump(ctx context.Context, in io.Reader, name string, size int64, o produceOptions) (st produceStats, err error) {
	st.name = name
	start := time.Now()
	if size <= 0 {
		size = -1 // unknown
	}
	prog := newProgress(o.progress, o.log, "producing "+name, size)
	defer prog.Finish()
	cr := &countingReader{r: in, p: prog}
	defer func() { st.inBytes, st.elapsed = cr.n, time.Since(start) }()

	raw := bufio.NewReaderSize(cr, 1<<16)
	var src io.Reader = raw
	if magic, _ := raw.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(raw)
		if err != nil {
			return st, fmt.Errorf("%s: gzip: %w", name, err)
		}
		defer gz.Close()
		src, st.gzipped = gz, true
	}
	br := bufio.NewReaderSize(src, 1<<20)
	if bom, _ := br.Peek(3); bytes.Equal(bom, []byte("\xef\xbb\xbf")) {
		br.Discard(3)
	}
	first, err := peekLine(br)
	if err != nil {
		return st, fmt.Errorf("%s: %w", name, err)
	}
	st.format = detectFormat(o.format, name, first)

	part := kgo.StickyKeyPartitioner(nil) // Kafka's default: murmur2 of the key
	if st.format == "workload" {
		part = kgo.ManualPartitioner()
	}
	s, err := newSender(o.brokers, o.topic, part, o.batch, o.log)
	if err != nil {
		return st, err
	}
	defer s.close()
	if st.partitions, err = s.partitions(ctx, false, 0); err != nil {
		return st, err
	}

	p := &dumpProducer{s: s, st: &st, n: st.partitions, dec: operators.NewDecoder(o.uuidField, "\x00")}
	// The decoder's time member is "\x00", which no JSON member name can be
	// (raw control characters are not allowed in strings): only the uuid is
	// looked for, exactly as run's decoder does.
	var readErr error
	switch st.format {
	case "csv":
		readErr = p.csv(ctx, br, o.uuidField, o.log)
	default:
		readErr = p.lines(ctx, br, st.format == "workload")
	}
	if readErr != nil {
		readErr = fmt.Errorf("%s: %w", name, readErr)
	}
	return st, p.finish(readErr)
}

// peekLine returns the first line of br (without consuming it), up to the
// buffer's size.
func peekLine(br *bufio.Reader) ([]byte, error) {
	for n := 4096; ; n *= 2 {
		b, err := br.Peek(min(n, br.Size()))
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			return b[:i], nil
		}
		if err != nil || n >= br.Size() {
			if err == io.EOF || errors.Is(err, bufio.ErrBufferFull) {
				err = nil
			}
			return b, err
		}
	}
}

// detectFormat resolves --format: by the file name's extension, then by
// the first line. A JSON Lines file whose first line has "timestamp_ms" and
// "value" (or "value_b64") members is a workload file (generate --output).
func detectFormat(flag, name string, first []byte) string {
	format := flag
	if format == "auto" {
		switch ext := filepath.Ext(strings.TrimSuffix(strings.ToLower(name), ".gz")); ext {
		case ".csv":
			format = "csv"
		case ".jsonl", ".ndjson", ".json":
			format = "jsonl"
		default:
			if t := bytes.TrimSpace(first); len(t) > 0 && (t[0] == '{' || json.Valid(t)) {
				format = "jsonl"
			} else {
				format = "csv"
			}
		}
	}
	if format == "jsonl" && isWorkloadLine(first) {
		format = "workload"
	}
	return format
}

// isWorkloadLine reports whether line is an object with a numeric
// "timestamp_ms" and a "value" (string or null) or "value_b64" member.
func isWorkloadLine(line []byte) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(line, &m) != nil {
		return false
	}
	var ts int64
	if json.Unmarshal(m["timestamp_ms"], &ts) != nil {
		return false
	}
	var v *string
	if raw, ok := m["value"]; ok {
		return json.Unmarshal(raw, &v) == nil
	}
	raw, ok := m["value_b64"]
	return ok && json.Unmarshal(raw, &v) == nil && v != nil
}

// dumpProducer turns input lines or rows into records and sends them.
type dumpProducer struct {
	s    *sender
	st   *produceStats
	n    int // partitions of the topic
	dec  *operators.Decoder
	ev   operators.Event
	wire wireFields
	slab slab
	recs []kgo.Record
	line int64 // input line of the last record read
	stop bool  // interrupted
}

// next returns a fresh record, from a block of them.
func (p *dumpProducer) next() *kgo.Record {
	if len(p.recs) == 0 {
		p.recs = make([]kgo.Record, 1024)
	}
	r := &p.recs[0]
	p.recs = p.recs[1:]
	return r
}

// keyed sends value keyed by its canonical uuid, if it has one the
// processor can read, and unkeyed otherwise. value must be owned by the
// record (from the slab).
func (p *dumpProducer) keyed(ctx context.Context, value []byte) error {
	r := p.next()
	r.Value = value
	switch p.dec.Decode(value, &p.ev) {
	case operators.NotJSON, operators.NotObject, operators.NoUUID, operators.BadUUID:
		p.st.unkeyed++
	default: // the uuid was read; the (absent) event time does not matter here
		r.Key = p.slab.uuid(&p.ev.UUID)
	}
	return p.send(ctx, r)
}

func (p *dumpProducer) send(ctx context.Context, r *kgo.Record) error {
	if ctx.Err() != nil {
		p.stop = true
		return nil
	}
	if err := p.s.send(r); err != nil {
		return err
	}
	p.st.sent++
	p.st.valueBytes += int64(len(r.Value))
	return nil
}

// lines produces JSON Lines: verbatim, or the records of a workload file.
func (p *dumpProducer) lines(ctx context.Context, br *bufio.Reader, wl bool) error {
	var long []byte
	for !p.stop {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err != nil && err != io.EOF {
			return err
		}
		if len(line) > 0 {
			p.line++
			line = bytes.TrimSuffix(line, []byte("\n"))
			line = bytes.TrimSuffix(line, []byte("\r"))
		}
		if len(line) > 0 {
			var perr error
			if wl {
				perr = p.workloadLine(ctx, line)
			} else {
				perr = p.keyed(ctx, p.slab.copy(line))
			}
			if perr != nil {
				return perr
			}
		}
		if err == io.EOF {
			return nil
		}
	}
	return nil
}

// wireLine is a line of a workload file (workload.WriteJSONL), as much of
// it as produce needs: kind and day are ignored, partition is optional.
type wireLine struct {
	Partition   *int32  `json:"partition"`
	Key         *string `json:"key"`
	KeyB64      *string `json:"key_b64"`
	TimestampMs *int64  `json:"timestamp_ms"`
	Value       *string `json:"value"`
	ValueB64    *string `json:"value_b64"`
}

// wireFields is a parsed workload line. Key and value are nil when null or
// absent; the _b64 members are their raw (still encoded) text.
type wireFields struct {
	partition        int32
	hasPartition     bool
	ts               int64
	hasTS            bool
	key, value       []byte
	keyB64, valueB64 []byte
}

// parseWire reads a workload line into w the way encoding/json reads it
// into a wireLine, with strings decoded into sl.
func parseWire(line []byte, sl *slab, w *wireFields) error {
	if parseWireFast(line, sl, w) {
		return nil
	}
	return parseWireJSON(line, sl, w)
}

func parseWireJSON(line []byte, sl *slab, w *wireFields) error {
	var l wireLine
	if err := json.Unmarshal(line, &l); err != nil {
		return err
	}
	*w = wireFields{}
	if l.Partition != nil {
		w.partition, w.hasPartition = *l.Partition, true
	}
	if l.TimestampMs != nil {
		w.ts, w.hasTS = *l.TimestampMs, true
	}
	str := func(s *string) []byte {
		if s == nil {
			return nil
		}
		return sl.copyString(*s)
	}
	w.key, w.keyB64, w.value, w.valueB64 = str(l.Key), str(l.KeyB64), str(l.Value), str(l.ValueB64)
	return nil
}

// parseWireFast reads lines as WriteJSONL writes them: one flat object of
// its members, with integers, strings and nulls. For anything else (other
// members, other values, invalid UTF-8 or escapes, which encoding/json
// would replace) it returns false, and the caller uses encoding/json.
func parseWireFast(b []byte, sl *slab, w *wireFields) bool {
	*w = wireFields{}
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return skipWS(b, i+1) == len(b)
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return false
		}
		end := i + 1
		for end < len(b) && b[end] != '"' && b[end] != '\\' {
			end++
		}
		if end >= len(b) || b[end] != '"' {
			return false
		}
		name := b[i+1 : end]
		i = skipWS(b, end+1)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return false
		}
		var ok bool
		switch string(name) {
		case "partition":
			var n int64
			if n, i, ok = wireInt(b, i); !ok || n != int64(int32(n)) {
				return false
			}
			w.partition, w.hasPartition = int32(n), true
		case "timestamp_ms":
			if w.ts, i, ok = wireInt(b, i); !ok {
				return false
			}
			w.hasTS = true
		case "day":
			if _, i, ok = wireInt(b, i); !ok {
				return false
			}
		case "key", "value", "key_b64", "value_b64", "kind":
			var v []byte
			if b[i] == 'n' && i+4 <= len(b) && string(b[i:i+4]) == "null" {
				i += 4
			} else if v, i, ok = sl.unquote(b, i); !ok {
				return false
			}
			switch string(name) {
			case "key":
				w.key = v
			case "value":
				w.value = v
			case "key_b64":
				w.keyB64 = v
			case "value_b64":
				w.valueB64 = v
			}
		default:
			return false
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return skipWS(b, i+1) == len(b)
		default:
			return false
		}
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// wireInt reads a JSON integer that fits an int64 at b[i:].
func wireInt(b []byte, i int) (int64, int, bool) {
	neg := i < len(b) && b[i] == '-'
	if neg {
		i++
	}
	start := i
	var n uint64
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		if n > (1<<63)/10 {
			return 0, i, false
		}
		n = n*10 + uint64(b[i]-'0')
		i++
	}
	switch {
	case i == start, i-start > 1 && b[start] == '0', n > 1<<63, n == 1<<63 && !neg:
		return 0, i, false
	case i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E'):
		return 0, i, false
	case neg:
		return -int64(n), i, true
	}
	return int64(n), i, true
}

// unquote decodes the JSON string at b[i] (its opening quote) into the
// slab. It refuses (false) what encoding/json would decode with
// replacements: invalid UTF-8 and lone surrogates.
func (s *slab) unquote(b []byte, i int) ([]byte, int, bool) {
	if b[i] != '"' {
		return nil, i, false
	}
	j := i + 1
	for j < len(b) && b[j] != '"' {
		if b[j] == '\\' {
			j++
		}
		j++
	}
	if j >= len(b) {
		return nil, i, false
	}
	raw := b[i+1 : j]
	dst := s.take(len(raw))
	for k := 0; k < len(raw); {
		run := k
		for k < len(raw) && raw[k] >= 0x20 && raw[k] < utf8.RuneSelf && raw[k] != '\\' {
			k++
		}
		dst = append(dst, raw[run:k]...)
		if k == len(raw) {
			break
		}
		switch c := raw[k]; {
		case c < 0x20:
			return nil, i, false
		case c >= utf8.RuneSelf:
			r, size := utf8.DecodeRune(raw[k:])
			if r == utf8.RuneError && size == 1 {
				return nil, i, false
			}
			dst = append(dst, raw[k:k+size]...)
			k += size
		default: // a backslash
			if k+1 >= len(raw) {
				return nil, i, false
			}
			e := raw[k+1]
			k += 2
			switch e {
			case '"', '\\', '/':
				dst = append(dst, e)
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				r, ok := hex4(raw, k)
				if !ok {
					return nil, i, false
				}
				k += 4
				if utf16.IsSurrogate(r) {
					if k+6 > len(raw) || raw[k] != '\\' || raw[k+1] != 'u' {
						return nil, i, false
					}
					r2, ok := hex4(raw, k+2)
					if r = utf16.DecodeRune(r, r2); !ok || r == utf8.RuneError {
						return nil, i, false
					}
					k += 6
				}
				dst = utf8.AppendRune(dst, r)
			default:
				return nil, i, false
			}
		}
	}
	return dst, j + 1, true
}

func hex4(b []byte, k int) (rune, bool) {
	if k+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[k : k+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

func (p *dumpProducer) workloadLine(ctx context.Context, line []byte) error {
	w := &p.wire
	if err := parseWire(line, &p.slab, w); err != nil {
		return fmt.Errorf("line %d: %w (the first line was in generate's workload format, so all must be)", p.line, err)
	}
	if !w.hasTS {
		return fmt.Errorf("line %d: no timestamp_ms (the first line was in generate's workload format, so all must be)", p.line)
	}
	r := p.next()
	r.Timestamp = time.UnixMilli(w.ts)
	r.Key, r.Value = w.key, w.value
	var err error
	if w.keyB64 != nil {
		if r.Key, err = base64.StdEncoding.AppendDecode(nil, w.keyB64); err != nil {
			return fmt.Errorf("line %d: key_b64: %w", p.line, err)
		}
	}
	if w.valueB64 != nil {
		if r.Value, err = base64.StdEncoding.AppendDecode(nil, w.valueB64); err != nil {
			return fmt.Errorf("line %d: value_b64: %w", p.line, err)
		}
	}
	filePart := int32(-1)
	if w.hasPartition {
		filePart = w.partition
	}
	r.Partition = placePartition(r.Key, r.Value, filePart, p.n)
	if r.Key == nil {
		p.st.unkeyed++
	}
	return p.send(ctx, r)
}

// placePartition is where a workload record goes in a topic of n
// partitions: the default partitioner's choice for a key, else the
// record's own partition modulo n, else (none given) a hash of the value.
func placePartition(key, value []byte, part int32, n int) int32 {
	switch {
	case key != nil:
		return workload.Partition(key, n)
	case part >= 0:
		return part % int32(n)
	}
	return workload.Partition(value, n)
}

// csv produces the rows of a CSV file with a header as JSON objects.
func (p *dumpProducer) csv(ctx context.Context, br *bufio.Reader, uuidField string, log *slog.Logger) error {
	cr := csv.NewReader(br)
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err == io.EOF {
		return nil
	}
	if err != nil {
		return fmt.Errorf("header: %w", err)
	}
	names := make([][]byte, len(header)) // `"name":`
	uuidCol := -1
	for i, h := range header {
		names[i] = append(appendJSONString(nil, h), ':')
		if h == uuidField {
			uuidCol = i // the last one, as the decoder takes the last member
		}
	}
	if uuidCol < 0 {
		log.Warn("the CSV header has no uuid column: every record is produced unkeyed and run will dead-letter it",
			"uuid_field", uuidField, "header", strings.Join(header, ","))
	}
	var buf []byte
	for !p.stop {
		row, err := cr.Read()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		line, _ := cr.FieldPos(0)
		p.line = int64(line)
		buf = append(buf[:0], '{')
		for i, v := range row {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, names[i]...)
			if i != uuidCol && isJSONNumber(v) {
				buf = append(buf, v...)
			} else {
				buf = appendJSONString(buf, v)
			}
		}
		buf = append(buf, '}')
		if err := p.keyed(ctx, p.slab.copy(buf)); err != nil {
			return err
		}
	}
	return nil
}

// finish waits for every record sent and reports how it went.
func (p *dumpProducer) finish(readErr error) error {
	err := p.s.flush()
	p.st.records = p.s.acked.Load()
	switch {
	case err != nil:
		return fmt.Errorf("producing to %q failed after %d records were acknowledged: %w", p.s.topic, p.st.records, err)
	case readErr != nil:
		return fmt.Errorf("%w (the %d records before it were produced)", readErr, p.st.records)
	case p.stop:
		return fmt.Errorf("interrupted: the first %d records of the input (through line %d) were produced, the rest was not", p.st.records, p.line-1)
	}
	return nil
}

// isJSONNumber reports whether s is a number in JSON's grammar.
func isJSONNumber(s string) bool {
	i := 0
	digits := func() int {
		n := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i, n = i+1, n+1
		}
		return n
	}
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case digits() == 0:
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(s)
}

// appendJSONString appends s as a JSON string literal. Invalid UTF-8 is
// replaced by U+FFFD, as encoding/json does.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&15])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// slab hands out record keys and values from large blocks, one allocation
// for many records; a block is freed when its last record is.
type slab struct{ b []byte }

const (
	slabBlock = 1 << 20
	slabMax   = 64 << 10 // larger values get their own allocation
)

func (s *slab) take(n int) []byte {
	switch {
	case n == 0:
		return []byte{} // empty, not nil: nil means no key or value
	case n > slabMax:
		return make([]byte, 0, n)
	}
	if cap(s.b)-len(s.b) < n {
		s.b = make([]byte, 0, slabBlock)
	}
	at := len(s.b)
	s.b = s.b[:at+n]
	return s.b[at : at : at+n]
}

func (s *slab) copy(p []byte) []byte          { return append(s.take(len(p)), p...) }
func (s *slab) copyString(p string) []byte    { return append(s.take(len(p)), p...) }
func (s *slab) uuid(u *operators.UUID) []byte { return u.AppendCanonical(s.take(36)) }

// countingReader counts the bytes read through it, into a progress.
type countingReader struct {
	r io.Reader
	n int64
	p *progress
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	if n > 0 && c.p != nil {
		c.p.Add(int64(n))
	}
	return n, err
}

// sender produces records asynchronously, in order, with franz-go's
// idempotent producer (its default): a retried batch is never written
// twice, and records of a partition are written in the order sent. After
// the first failure it refuses further records.
type sender struct {
	cl      *kgo.Client
	topic   string
	brokers string
	ctx     context.Context // of every record; cancelled on the first failure
	cancel  context.CancelFunc
	done    func(*kgo.Record, error)
	acked   atomic.Int64
	failed  atomic.Bool
	mu      sync.Mutex
	err     error
}

func newSender(brokers []string, topic string, part kgo.Partitioner, inFlight int, log *slog.Logger) (*sender, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(part),
		kgo.MaxBufferedRecords(inFlight),
		// No kgo.RecordDeliveryTimeout: franz-go measures it from the
		// record's timestamp, which for a workload is days in the past.
		// While the brokers are unreachable it retries (and logs) until
		// interrupted.
		kgo.WithLogger(kgoLogger{log}),
	)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	s := &sender{cl: cl, topic: topic, brokers: strings.Join(brokers, ",")}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.done = s.complete
	return s, nil
}

// partitions returns the topic's partition count. With create, a missing
// topic is created with want partitions (an existing topic keeps its own
// count); otherwise a missing topic is an error.
func (s *sender) partitions(ctx context.Context, create bool, want int) (int, error) {
	adm := kadm.NewClient(s.cl)
	mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	brokers := s.brokers
	for attempt := 0; ; attempt++ {
		topics, err := adm.ListTopics(mctx, s.topic)
		if err != nil {
			return 0, fmt.Errorf("kafka %s: cannot read metadata: %w", brokers, err)
		}
		td, ok := topics[s.topic]
		switch {
		case ok && td.Err == nil && len(td.Partitions) > 0:
			return len(td.Partitions), nil
		case ok && td.Err != nil && !errors.Is(td.Err, kerr.UnknownTopicOrPartition) && !errors.Is(td.Err, kerr.LeaderNotAvailable):
			return 0, fmt.Errorf("kafka topic %q: %w", s.topic, td.Err)
		case !create:
			return 0, fmt.Errorf("kafka %s: topic %q does not exist; create it first", brokers, s.topic)
		}
		if attempt == 0 {
			resp, err := adm.CreateTopic(mctx, int32(want), -1, nil, s.topic)
			switch {
			case err == nil && resp.NumPartitions > 0: // Kafka 2.4+ says
				return int(resp.NumPartitions), nil
			case err == nil:
				return want, nil
			case !errors.Is(err, kerr.TopicAlreadyExists):
				return 0, fmt.Errorf("kafka %s: create topic %q: %w", brokers, s.topic, err)
			}
		}
		// Created meanwhile by someone else: wait for the metadata (which
		// the client caches for a few seconds) to show it.
		select {
		case <-time.After(100 * time.Millisecond):
		case <-mctx.Done():
			return 0, fmt.Errorf("kafka %s: topic %q: %w", brokers, s.topic, mctx.Err())
		}
	}
}

func (s *sender) complete(_ *kgo.Record, err error) {
	if err == nil {
		s.acked.Add(1)
		return
	}
	s.mu.Lock()
	if s.err == nil {
		s.err = err
		s.failed.Store(true)
		s.cancel() // fail what is still buffered rather than write it after a gap
	}
	s.mu.Unlock()
}

// send hands r to the producer; it blocks while the buffer is full. It
// returns the first failure, if any.
func (s *sender) send(r *kgo.Record) error {
	if s.failed.Load() {
		return s.firstErr()
	}
	s.cl.Produce(s.ctx, r, s.done)
	return nil
}

func (s *sender) firstErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// flush waits until every record sent is acknowledged or failed, and
// returns the first failure.
func (s *sender) flush() error {
	if err := s.cl.Flush(context.Background()); err != nil {
		return err
	}
	return s.firstErr()
}

func (s *sender) close() {
	s.cancel()
	s.cl.Close()
}

// kgoLogger passes franz-go's warnings and errors (retries, broker
// trouble) to the command's log.
type kgoLogger struct{ log *slog.Logger }

func (k kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (k kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	l := slog.LevelWarn
	if level == kgo.LogLevelError {
		l = slog.LevelError
	}
	k.log.Log(context.Background(), l, "kafka: "+msg, keyvals...)
}
