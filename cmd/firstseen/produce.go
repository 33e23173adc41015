package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine"
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
			if err := f.checkKafka("the Kafka topic to produce to"); err != nil {
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
			if err := f.checkKafkaAccess(ctx, log); err != nil {
				return err
			}
			o := produceOptions{brokers: f.brokers, kafkaOpts: f.sec.kafkaOpts, topic: f.topic, uuidField: f.uuidField, format: format,
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
	addConfigFlag(fs)
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
	kafkaOpts []kgo.Opt // TLS and SASL
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
	s, err := newSender(o.brokers, o.kafkaOpts, o.topic, part, o.batch, o.log)
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

// newSender starts a producer to topic; opts are the TLS and SASL options.
func newSender(brokers []string, opts []kgo.Opt, topic string, part kgo.Partitioner, inFlight int, log *slog.Logger) (*sender, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(part),
		kgo.MaxBufferedRecords(inFlight),
		// No kgo.RecordDeliveryTimeout: franz-go measures it from the
		// record's timestamp, which for a workload is days in the past.
		// While the brokers are unreachable it retries (and logs) until
		// interrupted.
		kgo.WithLogger(engine.KafkaLogger(log)),
	}, opts...)...)
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
