package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/klauspost/compress/gzip"
	"github.com/spf13/cobra"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/state"
)

// bootstrapOptions are bootstrap's own flags.
type bootstrapOptions struct {
	input           string
	format          string
	uuidColumn      string
	firstSeenColumn string
	usersQuery      string
	maxReported     int
	strict          bool
}

// bootstrapIgnored are run's flags that bootstrap accepts, so that one set
// of flags (or FIRSTSEEN_* variables) serves both, but does not use.
var bootstrapIgnored = []string{"brokers", "topic", "group", "dlq-topic", "timezone", "tolerance", "idle-timeout",
	"max-future", "checkpoint-interval", "uuid-field", "time-field", "clickhouse-table",
	"until-caught-up", "shutdown-timeout", "snapshot-interval", "sink", "sink-path"}

func newBootstrapCmd() *cobra.Command {
	var (
		f pipelineFlags
		o bootstrapOptions
	)
	cmd := &cobra.Command{
		Use:   "bootstrap [FILE | -] [flags]",
		Short: "Load users' first-seen times into the state from a file or a ClickHouse query",
		Long: `bootstrap loads (uuid, first_seen) pairs into the state in --state-dir, for
example the users an older system already knew, before the first run (the
directory is created if missing) or between runs.

Sources:
  FILE (or --input FILE)  CSV or TSV with a header line, or JSON Lines; gzip is
                          detected by its magic bytes. "-" reads stdin.
  --users-query SQL       a ClickHouse query whose first column is the uuid
                          (String or UUID) and second first_seen (DateTime,
                          DateTime64, Date, an integer of epoch milliseconds,
                          or String); connects with the --clickhouse-* flags.

first_seen is RFC 3339 with a zone ("2024-05-01T08:00:00Z", "...+08:00") or
epoch milliseconds, as in the stream, between 1970-01-01 and 2106-02-07. A
uuid is canonical, upper case, or 32 hex digits.

Merge rule: a user's first_seen becomes min(stored, loaded). Loading never
makes a user newer, loading the same input twice changes nothing, and a uuid
repeated in the input keeps its earliest time. Only new users and users whose
time moves earlier are written: the load is sorted, written as SST files and
ingested in one atomic step, so either all of it is applied or none.

A running processor: the state directory is locked by the process that has
it open, so bootstrap refuses to load into the state of a running 'firstseen
run'. Stop it (SIGTERM takes a final checkpoint), run bootstrap, start it
again. bootstrap also refuses a state whose last checkpoint was interrupted:
let run complete it first.

Bad rows (unparsable uuid or time, missing column) are reported on stderr with
their line number, up to --max-reported, counted in the summary and skipped;
with --strict the first one stops the load with nothing applied. A column
named by --uuid-column or --first-seen-column that the header lacks is an
error before anything is read.

bootstrap accepts run's other flags (--brokers, --topic, --timezone, ...) and
ignores them, so one set of flags or FIRSTSEEN_* variables serves both.
Exit status: 0 loaded, 1 refused or failed (nothing applied), 2 bad flags.`,
		Example: `  firstseen bootstrap --state-dir /var/lib/firstseen users.csv.gz
  zcat users.jsonl.gz | firstseen bootstrap --state-dir /var/lib/firstseen --format jsonl -
  firstseen bootstrap --state-dir /var/lib/firstseen --clickhouse-addr clickhouse:9000 \
      --users-query "SELECT uuid, min(event_time) FROM analytics.logins GROUP BY uuid"`,
		PreRunE: preRun,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBootstrap(cmd, args, &f, o)
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&o.input, "input", "", `file to load (CSV, TSV or JSON Lines, optionally gzipped); "-" for stdin; or give it as the argument`)
	fs.StringVar(&o.format, "format", "auto", "input format: csv, tsv, jsonl, or auto (by extension .csv/.tsv/.jsonl/.ndjson, .gz ignored; otherwise by the content)")
	fs.StringVar(&o.uuidColumn, "uuid-column", "uuid", "CSV/TSV column (header name) or JSON member holding the uuid")
	fs.StringVar(&o.firstSeenColumn, "first-seen-column", "first_seen", "CSV/TSV column or JSON member holding first_seen (RFC 3339 or epoch milliseconds)")
	fs.StringVar(&o.usersQuery, "users-query", "", `load the result of this ClickHouse query instead of a file: first column uuid, second first_seen`)
	fs.IntVar(&o.maxReported, "max-reported", 20, "bad rows reported individually on stderr; all are counted")
	fs.BoolVar(&o.strict, "strict", false, "stop at the first bad row, applying nothing (exit status 1)")
	f.addState(fs)
	f.addClickHouse(fs, "enriched_logs")
	f.addLogging(fs)
	f.addKafka(fs)
	f.addEvent(fs)
	// run's own flags, accepted too so that a script can pass run's whole
	// command line (keep in step with run.go); bootstrap ignores them.
	var ignored struct {
		untilCaughtUp     bool
		shutdown, snapInt time.Duration
		sink, sinkPath    string
	}
	fs.BoolVar(&ignored.untilCaughtUp, "until-caught-up", false, "")
	fs.DurationVar(&ignored.shutdown, "shutdown-timeout", 30*time.Second, "")
	fs.DurationVar(&ignored.snapInt, "snapshot-interval", time.Minute, "")
	fs.StringVar(&ignored.sink, "sink", "clickhouse", "")
	fs.StringVar(&ignored.sinkPath, "sink-path", "", "")
	for _, n := range bootstrapIgnored {
		_ = fs.MarkHidden(n)
	}
	fs.Lookup("clickhouse-database").Usage = "with --users-query: the database unqualified table names refer to"
	return cmd
}

// bootstrapTuneLoader lets tests shrink the loader's memory thresholds, so
// that small inputs spill and split as big ones do.
var bootstrapTuneLoader = func(*state.Loader) {}

// bootstrapStats are what a bootstrap did.
type bootstrapStats struct {
	source   string
	rows     int64 // data rows read, good and bad
	rejected int64
	early    int64 // loaded values before 1973-03-03: epoch seconds taken for milliseconds?
	load     state.LoadStats
	disk     int64
	elapsed  time.Duration
}

func runBootstrap(cmd *cobra.Command, args []string, f *pipelineFlags, o bootstrapOptions) error {
	start := time.Now()
	// Flags first: every usage error before anything is opened.
	if len(args) > 1 {
		return usageError{fmt.Errorf("bootstrap takes one input file, got %q", args)}
	}
	input := o.input
	if len(args) == 1 {
		if input != "" && input != args[0] {
			return usageError{fmt.Errorf("the input is given twice: --input %q and argument %q", input, args[0])}
		}
		input = args[0]
	}
	switch {
	case input == "" && o.usersQuery == "":
		return usageError{errors.New(`nothing to load: give a file (or "-" for stdin), or --users-query`)}
	case input != "" && o.usersQuery != "":
		return usageError{errors.New("give either an input file or --users-query, not both")}
	}
	switch o.format {
	case "auto", "csv", "tsv", "jsonl":
	default:
		return usageError{fmt.Errorf("--format %q: want auto, csv, tsv or jsonl", o.format)}
	}
	if o.uuidColumn == "" || o.firstSeenColumn == "" || o.uuidColumn == o.firstSeenColumn {
		return usageError{errors.New("--uuid-column and --first-seen-column must be set and differ")}
	}
	if o.maxReported < 0 {
		return usageError{fmt.Errorf("--max-reported %d must be 0 or more", o.maxReported)}
	}
	if f.stateDir == "" {
		return usageError{errors.New("--state-dir is empty: give the directory of the state")}
	}
	if o.usersQuery != "" {
		if err := checkHostPorts("clickhouse-addr", splitList(f.chAddr)); err != nil {
			return err
		}
	}
	log, err := f.logger()
	if err != nil {
		return err
	}
	ctx, stop := signalContext(log)
	defer stop()

	// The input's header next, so that a missing column is reported before
	// the state is touched.
	var src bootstrapSource
	if input != "" {
		in, err := openBootstrapInput(input, cmd.InOrStdin(), o.format, log)
		if err != nil {
			return err
		}
		defer in.close()
		if src, err = in.source(o); err != nil {
			return err
		}
	}

	db, err := openBootstrapState(f.stateDir, log)
	if err != nil {
		return err
	}
	defer db.Close()

	if o.usersQuery != "" {
		q, err := openUsersQuery(ctx, f, o.usersQuery, log)
		if err != nil {
			return err
		}
		defer q.close()
		src = q
	}

	loader, err := db.NewLoader("")
	if err != nil {
		return err
	}
	defer loader.Abort()
	bootstrapTuneLoader(loader)
	sink := &bootstrapSink{
		loader: loader, errw: cmd.ErrOrStderr(), name: src.name(), unit: src.unit(),
		maxReported: o.maxReported, strict: o.strict, ctx: ctx,
	}
	log.Info("bootstrap: reading", "source", src.name(), "format", src.format(), "state_dir", f.stateDir)
	err = src.each(sink)
	src.close() // ends the progress display
	if err != nil {
		return err
	}
	if n := sink.rejected - int64(sink.reported); n > 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "%s: %d more bad rows not shown (--max-reported %d)\n", src.name(), n, o.maxReported)
	}
	log.Info("bootstrap: input read; sorting, comparing with the state and writing SSTs",
		"rows", sink.rows, "loaded", sink.loaded, "rejected", sink.rejected)
	ls, err := loader.Finish(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("bootstrap interrupted: nothing was applied")
		}
		return fmt.Errorf("bootstrap: %w; nothing was applied", err)
	}
	st := bootstrapStats{
		source: src.name(), rows: sink.rows, rejected: sink.rejected, early: sink.early,
		load: ls, disk: db.DiskBytes(), elapsed: time.Since(start),
	}
	st.print(cmd.OutOrStdout())
	st.log(log)
	if st.early > 0 {
		log.Warn("bootstrap: some first_seen values are before 1973-03-03; if they are epoch seconds, multiply them by 1000",
			"values", st.early)
	}
	return nil
}

// openBootstrapState opens the state for the load, refusing one that a
// running processor holds or whose last checkpoint is unfinished.
func openBootstrapState(dir string, log *slog.Logger) (*state.DB, error) {
	// The load reads the state once, in order: a small block cache will do.
	db, err := state.Open(dir, state.Options{Logger: log, CacheSize: 32 << 20})
	if err != nil {
		if state.IsLocked(err) {
			return nil, fmt.Errorf("state dir %s is in use by a running firstseen process: stop it (SIGTERM takes a final checkpoint), run bootstrap, start it again", dir)
		}
		return nil, err
	}
	// The processor's recovery replays an unfinished checkpoint from the
	// state it had when that checkpoint started, and relies on the replay
	// deciding is_new as the first attempt did (some of its rows may have
	// landed already). A load in between would change those decisions.
	in, pending, err := db.LoadIntent()
	if err == nil && pending {
		err = fmt.Errorf("state dir %s holds an unfinished checkpoint (epoch %d: the processor stopped in the middle of it): start 'firstseen run' on it until it has checkpointed (--until-caught-up does that), then run bootstrap", dir, in.Epoch)
	}
	if err == nil {
		err = db.RemoveLoadLeftovers()
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

func (st *bootstrapStats) print(w io.Writer) {
	perUser, rate := 0.0, 0.0
	if after := st.load.After(); after > 0 {
		perUser = float64(st.disk) / float64(after)
	}
	if s := st.elapsed.Seconds(); s > 0 {
		rate = float64(st.load.Read) / s
	}
	fmt.Fprintf(w, `bootstrap of %s done
  rows read               %d
  loaded (valid)          %d
  rejected                %d
  duplicates in input     %d
  new users               %d
  lowered (now earlier)   %d
  unchanged               %d
  users in state after    %d
  bytes on disk per user  %.1f
  elapsed                 %s
  users/s                 %.0f
`, st.source, st.rows, st.load.Read, st.rejected, st.load.Duplicates(), st.load.New, st.load.Lowered,
		st.load.Unchanged, st.load.After(), perUser, st.elapsed.Round(time.Millisecond), rate)
}

func (st *bootstrapStats) log(log *slog.Logger) {
	rate := 0.0
	if s := st.elapsed.Seconds(); s > 0 {
		rate = float64(st.load.Read) / s
	}
	log.Info("bootstrap done", "source", st.source, "rows", st.rows, "loaded", st.load.Read, "rejected", st.rejected,
		"duplicates", st.load.Duplicates(), "new", st.load.New, "lowered", st.load.Lowered, "unchanged", st.load.Unchanged,
		"users_after", st.load.After(), "disk_bytes", st.disk, "sst_files", st.load.SSTFiles, "sst_bytes", st.load.SSTBytes,
		"elapsed", st.elapsed.Round(time.Millisecond), "users_per_sec", int64(rate))
}

// bootstrapSink takes the rows of a source: good ones to the loader, bad
// ones reported and counted.
type bootstrapSink struct {
	loader      *state.Loader
	errw        io.Writer
	name, unit  string
	maxReported int
	strict      bool
	ctx         context.Context

	rows, loaded, rejected, early int64
	reported                      int
}

// epochSecondsHint: epoch milliseconds below this (1973-03-03) are likely
// epoch seconds taken for milliseconds.
const epochSecondsHint = 100_000_000_000

func (s *bootstrapSink) good(u *operators.UUID, firstSeen int64) error {
	s.rows++
	s.loaded++
	if firstSeen < epochSecondsHint {
		s.early++
	}
	if s.rows&0xffff == 0 && s.ctx.Err() != nil {
		return errors.New("bootstrap interrupted: nothing was applied")
	}
	return s.loader.Add(u, firstSeen)
}

func (s *bootstrapSink) bad(line int64, reason string) error {
	s.rows++
	s.rejected++
	if s.strict {
		return fmt.Errorf("%s: %s %d: %s; nothing was applied (--strict)", s.name, s.unit, line, reason)
	}
	if s.reported < s.maxReported {
		s.reported++
		fmt.Fprintf(s.errw, "%s: %s %d: %s\n", s.name, s.unit, line, reason)
	}
	return nil
}

// bootstrapSource is where the rows come from.
type bootstrapSource interface {
	name() string
	unit() string // "line" or "row"
	format() string
	each(s *bootstrapSink) error
	close() // idempotent
}

// ---- files ----

type bootstrapInput struct {
	name   string
	br     *bufio.Reader // the decompressed content
	fmt    string        // csv, tsv or jsonl
	gz     bool
	file   *os.File // nil for stdin
	closer io.Closer
	prog   *progress
	closed bool
}

func (in *bootstrapInput) close() {
	if in.closed {
		return
	}
	in.closed = true
	in.prog.Finish()
	if in.closer != nil {
		in.closer.Close()
	}
	if in.file != nil {
		in.file.Close()
	}
}

// bootstrapCounter reports the bytes read from the input (compressed, if it
// is) to the progress display.
type bootstrapCounter struct {
	r io.Reader
	p *progress
}

func (c *bootstrapCounter) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if n > 0 {
		c.p.Add(int64(n))
	}
	return n, err
}

func openBootstrapInput(path string, stdin io.Reader, format string, log *slog.Logger) (*bootstrapInput, error) {
	in := &bootstrapInput{name: path}
	var raw io.Reader
	size := int64(-1)
	if path == "-" {
		in.name, raw = "stdin", stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, usageError{fmt.Errorf("input: %w", err)}
		}
		in.file, raw = f, f
	}
	if f, ok := raw.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			size = fi.Size()
		}
	}
	in.prog = newProgress(os.Stderr, log, "bootstrap", size)
	br := bufio.NewReaderSize(&bootstrapCounter{r: raw, p: in.prog}, 1<<20)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			in.close()
			return nil, fmt.Errorf("%s: gzip: %w", in.name, err)
		}
		in.gz, in.closer = true, zr
		br = bufio.NewReaderSize(zr, 1<<20)
	}
	if bom, _ := br.Peek(len(utf8BOM)); bytes.Equal(bom, utf8BOM) {
		br.Discard(len(utf8BOM)) // as Excel writes CSV
	}
	in.br = br
	in.fmt = format
	if format == "auto" {
		in.fmt = bootstrapFormatByName(path)
		if in.fmt == "" {
			head, err := peekFirstLine(br)
			if err != nil {
				in.close()
				return nil, fmt.Errorf("%s: %w", in.name, err)
			}
			in.fmt = sniffBootstrapFormat(head)
		}
	}
	return in, nil
}

// peekFirstLine returns the buffered input up to its first line break (or
// 64 KiB, or the end), without waiting for more than that: a slow pipe
// still starts at once.
func peekFirstLine(br *bufio.Reader) ([]byte, error) {
	for n := 1; ; n = br.Buffered() + 1 {
		head, err := br.Peek(n)
		if err == io.EOF || bytes.IndexByte(head, '\n') >= 0 || len(head) >= 64<<10 {
			return head, nil
		}
		if err != nil {
			return nil, err
		}
		if head, _ = br.Peek(br.Buffered()); bytes.IndexByte(head, '\n') >= 0 {
			return head, nil
		}
	}
}

// bootstrapFormatByName is the format an input's name says, or "".
func bootstrapFormatByName(path string) string {
	name := strings.ToLower(path)
	name = strings.TrimSuffix(name, ".gz")
	switch filepath.Ext(name) {
	case ".csv":
		return "csv"
	case ".tsv":
		return "tsv"
	case ".jsonl", ".ndjson":
		return "jsonl"
	}
	return ""
}

// sniffBootstrapFormat: JSON Lines start with an object; otherwise the
// header line is tab-separated (TSV) or not (CSV).
func sniffBootstrapFormat(head []byte) string {
	head = bytes.TrimPrefix(head, utf8BOM)
	t := bytes.TrimLeft(head, " \t\r\n")
	if len(t) > 0 && t[0] == '{' {
		return "jsonl"
	}
	if i := bytes.IndexByte(head, '\n'); i >= 0 {
		head = head[:i]
	}
	if bytes.IndexByte(head, '\t') >= 0 {
		return "tsv"
	}
	return "csv"
}

var utf8BOM = []byte{0xef, 0xbb, 0xbf}

func (in *bootstrapInput) source(o bootstrapOptions) (bootstrapSource, error) {
	s := &fileSource{in: in, lr: &lineReader{br: in.br}, parsers: max(1, runtime.GOMAXPROCS(0))}
	if in.fmt == "jsonl" {
		s.newParser = func() rowParser {
			return &jsonlParser{dec: operators.NewDecoder(o.uuidColumn, o.firstSeenColumn), uuidCol: o.uuidColumn, timeCol: o.firstSeenColumn}
		}
		return s, nil
	}
	proto := delimParser{delim: ',', quotes: true}
	if in.fmt == "tsv" {
		proto.delim, proto.quotes = '\t', false
	}
	s.quotes = proto.quotes
	if err := s.header(&proto, o.uuidColumn, o.firstSeenColumn); err != nil {
		return nil, err
	}
	s.newParser = func() rowParser {
		p := proto
		p.fields, p.rec, p.ends = nil, nil, nil
		p.tp = newTimeParser()
		return &p
	}
	return s, nil
}

// lineReader reads lines of any length, counting them. It reads the header;
// the rows go through fileSource's chunks.
type lineReader struct {
	br   *bufio.Reader
	line int64 // number of the line last returned
	long []byte
}

// next returns the next line without its line ending. It stays valid until
// the next call. At the end it returns io.EOF.
func (r *lineReader) next() ([]byte, error) {
	line, err := r.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		r.long = append(r.long[:0], line...)
		for errors.Is(err, bufio.ErrBufferFull) {
			line, err = r.br.ReadSlice('\n')
			r.long = append(r.long, line...)
		}
		line = r.long
	}
	if err != nil && err != io.EOF {
		return nil, err
	}
	if len(line) == 0 {
		return nil, io.EOF
	}
	r.line++
	return trimEOL(line), nil
}

func trimEOL(line []byte) []byte {
	if len(line) > 0 && line[len(line)-1] == '\n' {
		line = line[:len(line)-1]
	}
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line
}

func isBlank(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\t' {
			return false
		}
	}
	return true
}

func gzName(f string, gz bool) string {
	if gz {
		return f + " (gzip)"
	}
	return f
}

// fileSource reads the rows of a file in chunks of whole records, parses
// the chunks on every core and hands the rows over in input order.
//
// Records are lines; in CSV a line break inside double quotes continues
// the record. Where that is decided by counting the quotes since the
// record's start (a line break at an odd count is inside quotes), which is
// exact for RFC 4180 and the same in the chunker and the parsers.
type fileSource struct {
	in        *bootstrapInput
	lr        *lineReader
	quotes    bool
	parsers   int
	newParser func() rowParser
}

func (s *fileSource) close()         { s.in.close() }
func (s *fileSource) name() string   { return s.in.name }
func (s *fileSource) unit() string   { return "line" }
func (s *fileSource) format() string { return gzName(s.in.fmt, s.in.gz) }

// header reads the CSV/TSV header and finds the two columns.
func (s *fileSource) header(p *delimParser, uuidCol, timeCol string) error {
	var rec []byte
	for {
		line, err := s.lr.next()
		if err == io.EOF {
			return usageError{fmt.Errorf("%s is empty: a %s file needs a header line naming the columns %q and %q", s.in.name, s.format(), uuidCol, timeCol)}
		}
		if err != nil {
			return fmt.Errorf("%s: %w", s.in.name, err)
		}
		rec = append(rec[:0], line...)
		for p.quotes && bytes.Count(rec, quote)%2 == 1 {
			line, err := s.lr.next()
			if err == io.EOF {
				return usageError{fmt.Errorf("%s: header: a quoted name is not closed", s.in.name)}
			}
			if err != nil {
				return fmt.Errorf("%s: %w", s.in.name, err)
			}
			rec = append(append(rec, '\n'), line...)
		}
		if !isBlank(rec) {
			break
		}
	}
	fields := p.split(rec, -1)
	p.uuidIdx, p.timeIdx, p.ncols = -1, -1, len(fields)
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = string(f)
		for _, c := range []struct {
			name string
			idx  *int
		}{{uuidCol, &p.uuidIdx}, {timeCol, &p.timeIdx}} {
			if names[i] == c.name {
				if *c.idx >= 0 {
					return usageError{fmt.Errorf("%s: the header names column %q twice", s.in.name, c.name)}
				}
				*c.idx = i
			}
		}
	}
	var missing []string
	if p.uuidIdx < 0 {
		missing = append(missing, fmt.Sprintf("%q (--uuid-column)", uuidCol))
	}
	if p.timeIdx < 0 {
		missing = append(missing, fmt.Sprintf("%q (--first-seen-column)", timeCol))
	}
	if len(missing) > 0 {
		return usageError{fmt.Errorf("%s: the header has no column %s; it has %q (read as %s)",
			s.in.name, strings.Join(missing, " or "), names, s.format())}
	}
	p.need = max(p.uuidIdx, p.timeIdx) + 1
	return nil
}

var quote = []byte{'"'}

// fileChunk is a run of whole records and, once parsed, its rows.
type fileChunk struct {
	buf    []byte // owned buffer; data is a prefix of it
	data   []byte
	err    error // a read error instead of data
	parsed chan struct{}

	rows  []parsedRow
	bad   []badRow
	lines int64
}

type parsedRow struct {
	u operators.UUID
	t int64
}

type badRow struct {
	line   int64 // in the chunk, from 0
	reason string
}

// fileChunkSize is the size of the chunks parsed in parallel; a variable
// so that tests can make records cross many chunk boundaries.
var fileChunkSize = 1 << 20

func (s *fileSource) each(sink *bootstrapSink) error {
	quit := make(chan struct{})
	order := make(chan *fileChunk, 2*s.parsers+2) // bounds the chunks in flight
	work := make(chan *fileChunk, 2*s.parsers+2)
	free := make(chan *fileChunk, 2*s.parsers+4)
	var wg sync.WaitGroup
	wg.Add(1 + s.parsers)
	go func() {
		defer wg.Done()
		defer close(order)
		defer close(work)
		s.read(quit, order, work, free)
	}()
	for range s.parsers {
		p := s.newParser()
		go func() {
			defer wg.Done()
			for c := range work {
				parseFileChunk(p, c, s.quotes)
				close(c.parsed)
			}
		}()
	}
	err := s.consume(sink, order, free)
	close(quit)
	for range order { // let the reader finish
	}
	wg.Wait()
	return err
}

func (s *fileSource) consume(sink *bootstrapSink, order <-chan *fileChunk, free chan<- *fileChunk) error {
	base := s.lr.line // lines before the first chunk: the header
	for c := range order {
		<-c.parsed
		if c.err != nil {
			return fmt.Errorf("%s: %w", s.in.name, c.err)
		}
		// Bad rows first: under --strict the first one stops the load, and
		// its line is the first bad line of the chunk.
		for _, b := range c.bad {
			if err := sink.bad(base+b.line+1, b.reason); err != nil {
				return err
			}
		}
		for i := range c.rows {
			if err := sink.good(&c.rows[i].u, c.rows[i].t); err != nil {
				return err
			}
		}
		base += c.lines
		select {
		case free <- c:
		default:
		}
	}
	return nil
}

// read cuts the input into chunks that end at a record boundary and sends
// them, in order, to order (for the consumer) and work (for a parser).
func (s *fileSource) read(quit <-chan struct{}, order, work chan<- *fileChunk, free <-chan *fileChunk) {
	var carry []byte
	for {
		var c *fileChunk
		select {
		case c = <-free:
		default:
			c = &fileChunk{}
		}
		// Room for what is carried over plus a chunk, or twice the carry
		// when one record is longer than a chunk.
		if need := len(carry) + max(fileChunkSize, len(carry)); cap(c.buf) < need {
			c.buf = make([]byte, need)
		}
		c.rows, c.bad, c.lines, c.err = c.rows[:0], nil, 0, nil
		c.parsed = make(chan struct{})
		buf := append(c.buf[:0], carry...)
		n, err := io.ReadFull(s.in.br, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		last := false
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			last = true
		case err != nil:
			c.err, last = err, true
		}
		cut := len(buf)
		if !last {
			if cut = lastRecordEnd(buf, s.quotes); cut == 0 {
				carry = append(carry[:0], buf...) // no record ends here yet: read on
				c.buf = buf
				continue
			}
		}
		c.buf, c.data = buf, buf[:cut]
		carry = append(carry[:0], buf[cut:]...)
		select {
		case order <- c:
		case <-quit:
			return
		}
		if c.err != nil {
			close(c.parsed)
			return
		}
		select {
		case work <- c:
		case <-quit:
			close(c.parsed)
			return
		}
		if last {
			return
		}
	}
}

// lastRecordEnd returns the length of the longest prefix of b made of whole
// records (ending with a line break), or 0.
func lastRecordEnd(b []byte, quotes bool) int {
	if !quotes || bytes.IndexByte(b, '"') < 0 {
		return bytes.LastIndexByte(b, '\n') + 1
	}
	end, in := 0, false
	for i, c := range b {
		switch c {
		case '"':
			in = !in
		case '\n':
			if !in {
				end = i + 1
			}
		}
	}
	return end
}

// recordEnd returns the end of the record at the start of b (the index of
// the line break that ends it, or len(b)), the line breaks inside it, and
// whether it ends inside quotes (a quoted field not closed by the end of
// the input).
func recordEnd(b []byte, quotes bool) (end, breaks int, open bool) {
	end = bytes.IndexByte(b, '\n')
	if end < 0 {
		end = len(b)
	}
	if !quotes {
		return end, 0, false
	}
	n := bytes.Count(b[:end], quote)
	for n%2 == 1 {
		if end >= len(b) {
			return end, breaks, true
		}
		next := bytes.IndexByte(b[end+1:], '\n')
		if next < 0 {
			next = len(b) - end - 1
		}
		n += bytes.Count(b[end+1:end+1+next], quote)
		end += 1 + next
		breaks++
	}
	return end, breaks, false
}

// rowParser parses one record (a line, or CSV lines joined by quotes).
// Parsers are not shared between goroutines.
type rowParser interface {
	parse(rec []byte, u *operators.UUID) (firstSeen int64, bad string)
}

func parseFileChunk(p rowParser, c *fileChunk, quotes bool) {
	if c.err != nil {
		return
	}
	data := c.data
	var line int64
	var u operators.UUID
	for len(data) > 0 {
		end, breaks, open := recordEnd(data, quotes)
		rec := data[:end]
		if end < len(data) {
			data = data[end+1:]
		} else {
			data = nil
		}
		start := line
		line += int64(breaks) + 1
		rec = trimEOL(rec)
		if isBlank(rec) {
			continue
		}
		if open {
			c.bad = append(c.bad, badRow{start, "a quoted field is not closed before the end of the input"})
			continue
		}
		t, bad := p.parse(rec, &u)
		if bad != "" {
			c.bad = append(c.bad, badRow{start, bad})
			continue
		}
		c.rows = append(c.rows, parsedRow{u, t})
	}
	c.lines = line
}

// jsonlParser reads JSON Lines with the stream's own decoder.
type jsonlParser struct {
	dec              *operators.Decoder
	ev               operators.Event
	uuidCol, timeCol string
}

func (p *jsonlParser) parse(rec []byte, u *operators.UUID) (int64, string) {
	switch p.dec.Decode(rec, &p.ev) {
	case operators.OK:
		*u = p.ev.UUID
		return p.ev.EventTime, ""
	case operators.NotJSON:
		return 0, "not JSON"
	case operators.NotObject:
		return 0, "not a JSON object"
	case operators.NoUUID:
		return 0, fmt.Sprintf("no %q member", p.uuidCol)
	case operators.BadUUID:
		return 0, fmt.Sprintf("bad uuid in %q: %s", p.uuidCol, badUUIDWant)
	case operators.NoEventTime:
		return 0, fmt.Sprintf("no %q member", p.timeCol)
	}
	return 0, fmt.Sprintf("bad first_seen in %q: %s", p.timeCol, badTimeWant)
}

const (
	badUUIDWant = "want 32 hex digits, with or without dashes"
	badTimeWant = "want RFC 3339 with a zone, or epoch milliseconds, from 1970-01-01 to 2106-02-07"
)

// delimParser reads a CSV (RFC 4180 quoting) or TSV (no quoting) record.
type delimParser struct {
	delim   byte
	quotes  bool
	uuidIdx int
	timeIdx int
	need    int // columns a row needs
	ncols   int // columns of the header
	tp      *timeParser
	fields  [][]byte
	rec     []byte // unquoted fields of the slow path
	ends    []int
}

func (p *delimParser) parse(rec []byte, u *operators.UUID) (int64, string) {
	fields := p.split(rec, p.need)
	if len(fields) < p.need {
		return 0, fmt.Sprintf("%d columns, the header has %d", len(fields), p.ncols)
	}
	uf, tf := fields[p.uuidIdx], fields[p.timeIdx]
	var ok bool
	if *u, ok = parseUUID(uf); !ok {
		if len(uf) == 0 {
			return 0, "empty uuid"
		}
		return 0, fmt.Sprintf("bad uuid %s: %s", quoteExcerpt(uf), badUUIDWant)
	}
	t, ok := p.tp.parse(tf)
	if !ok {
		if len(tf) == 0 {
			return 0, "empty first_seen"
		}
		return 0, fmt.Sprintf("bad first_seen %s: %s", quoteExcerpt(tf), timeHint(tf))
	}
	return t, ""
}

// timeHint explains a refused time, naming the usual mistake of a time
// without a zone (ClickHouse's DateTime text).
func timeHint(b []byte) string {
	if len(b) == 19 && b[4] == '-' && (b[10] == ' ' || b[10] == 'T') {
		return badTimeWant + " (this one has no zone: append Z for UTC)"
	}
	return badTimeWant
}

func quoteExcerpt(b []byte) string {
	if len(b) > 60 {
		return fmt.Sprintf("%q...", b[:60])
	}
	return fmt.Sprintf("%q", b)
}

// split cuts a record into at most n fields (all of them if n < 0),
// trimming spaces around unquoted ones. A CSV field in double quotes may
// hold the delimiter, line breaks, and "" for a quote; text between its
// closing quote and the delimiter is kept, and a quote inside an unquoted
// field is an ordinary character. The fields stay valid until the next
// call.
func (p *delimParser) split(rec []byte, n int) [][]byte {
	p.fields = p.fields[:0]
	if !p.quotes || bytes.IndexByte(rec, '"') < 0 {
		for n < 0 || len(p.fields) < n {
			i := bytes.IndexByte(rec, p.delim)
			if i < 0 {
				p.fields = append(p.fields, trimSpaces(rec))
				break
			}
			p.fields = append(p.fields, trimSpaces(rec[:i]))
			rec = rec[i+1:]
		}
		return p.fields
	}
	p.rec, p.ends = p.rec[:0], p.ends[:0]
	i := 0
	for n < 0 || len(p.ends) < n {
		for i < len(rec) && rec[i] == ' ' {
			i++
		}
		if i < len(rec) && rec[i] == '"' {
			i++
			for i < len(rec) {
				j := bytes.IndexByte(rec[i:], '"')
				if j < 0 {
					j = len(rec) - i // not closed: take the rest
				}
				p.rec = append(p.rec, rec[i:i+j]...)
				i += j + 1
				if i < len(rec) && rec[i] == '"' {
					p.rec = append(p.rec, '"')
					i++
					continue
				}
				break
			}
		}
		j := 0
		if i < len(rec) {
			if j = bytes.IndexByte(rec[i:], p.delim); j < 0 {
				j = len(rec) - i
			}
		}
		if j > 0 {
			p.rec = append(p.rec, trimSpaces(rec[i:i+j])...)
		}
		i += j
		p.ends = append(p.ends, len(p.rec))
		if i >= len(rec) {
			break
		}
		i++ // the delimiter
	}
	start := 0
	for _, end := range p.ends {
		p.fields = append(p.fields, p.rec[start:end])
		start = end
	}
	return p.fields
}

func trimSpaces(b []byte) []byte {
	for len(b) > 0 && b[0] == ' ' {
		b = b[1:]
	}
	for len(b) > 0 && b[len(b)-1] == ' ' {
		b = b[:len(b)-1]
	}
	return b
}

// hexValues maps a hex digit to its value and anything else to 0xff.
var hexValues = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i, c := range "0123456789abcdef" {
		t[c] = byte(i)
	}
	for i, c := range "ABCDEF" {
		t[c] = byte(10 + i)
	}
	return t
}()

// uuidDigits36 are where the 16 byte pairs start in the canonical form.
var uuidDigits36 = [16]int{0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34}

// parseUUID is operators.ParseUUID with a table-driven fast path for the
// two usual forms (a bulk load parses millions of them); whatever the fast
// path does not accept is decided by operators.ParseUUID itself, so the
// accepted forms are the stream's. A test checks that both agree.
func parseUUID(b []byte) (u operators.UUID, ok bool) {
	var bad byte
	switch {
	case len(b) == 36 && b[8] == '-' && b[13] == '-' && b[18] == '-' && b[23] == '-':
		for j, i := range uuidDigits36 {
			hi, lo := hexValues[b[i]], hexValues[b[i+1]]
			bad |= hi | lo
			u[j] = hi<<4 | lo
		}
	case len(b) == 32:
		for j := range 16 {
			hi, lo := hexValues[b[2*j]], hexValues[b[2*j+1]]
			bad |= hi | lo
			u[j] = hi<<4 | lo
		}
	default:
		return operators.ParseUUID(b)
	}
	if bad > 15 {
		return operators.ParseUUID(b)
	}
	return u, true
}

// timeParser reads a first_seen text by the stream's rules: decimal epoch
// milliseconds directly, anything else (RFC 3339, numbers with a fraction
// or exponent) through operators.Decoder in a one-member JSON object, so
// that the rules are the stream's by construction.
type timeParser struct {
	dec *operators.Decoder
	buf []byte
	ev  operators.Event
}

const timeWrapPrefix = `{"u":"00000000000000000000000000000000","t":`

func newTimeParser() *timeParser {
	return &timeParser{dec: operators.NewDecoder("u", "t"), buf: make([]byte, 0, 128)}
}

func (p *timeParser) parse(b []byte) (int64, bool) {
	if n, ok := decimalMillis(b); ok {
		return n, n >= operators.MinEventTime && n <= operators.MaxEventTime
	}
	if len(b) == 0 {
		return 0, false
	}
	p.buf = append(p.buf[:0], timeWrapPrefix...)
	if jsonNumberChars(b) {
		p.buf = append(p.buf, b...) // a JSON number (1.7e12), or not JSON at all (refused)
	} else {
		for _, c := range b {
			if c < 0x20 || c == '"' || c == '\\' {
				return 0, false // no valid time has these
			}
		}
		p.buf = append(p.buf, '"')
		p.buf = append(p.buf, b...)
		p.buf = append(p.buf, '"')
	}
	p.buf = append(p.buf, '}')
	if p.dec.Decode(p.buf, &p.ev) != operators.OK {
		return 0, false
	}
	return p.ev.EventTime, true
}

// jsonNumberChars tells whether b has only characters of a JSON number and
// starts like one: RFC 3339 has a colon, so it never qualifies.
func jsonNumberChars(b []byte) bool {
	if b[0] != '-' && (b[0] < '0' || b[0] > '9') {
		return false
	}
	for _, c := range b {
		if (c < '0' || c > '9') && c != '-' && c != '+' && c != '.' && c != 'e' && c != 'E' {
			return false
		}
	}
	return true
}

// decimalMillis parses an optionally negative decimal integer of at most
// 18 digits: what the stream reads as epoch milliseconds, as a JSON number
// or in a string.
func decimalMillis(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// ---- ClickHouse ----

type usersQuery struct {
	rows   interface{ Close() error }
	conn   interface{ Close() error }
	scan   func(dest ...any) error
	next   func() bool
	err    func() error
	dests  []any
	uuidV  reflect.Value
	timeV  reflect.Value
	tp     *timeParser
	bytes  atomic.Int64 // read by the server, from its progress packets
	prog   *progress
	addr   string
	colTyp [2]string
	closed bool
}

func openUsersQuery(ctx context.Context, f *pipelineFlags, query string, log *slog.Logger) (*usersQuery, error) {
	conn, err := ch.Open(&ch.Options{
		Protocol:    ch.Native,
		Addr:        splitList(f.chAddr),
		Auth:        ch.Auth{Database: f.chDatabase, Username: f.chUser, Password: f.chPassword},
		DialTimeout: 10 * time.Second,
		Compression: &ch.Compression{Method: ch.CompressionLZ4},
	})
	if err != nil {
		return nil, usageError{fmt.Errorf("--clickhouse-addr %s: %w", f.chAddr, err)}
	}
	q := &usersQuery{conn: conn, tp: newTimeParser(), addr: f.chAddr}
	q.prog = newProgress(os.Stderr, log, "bootstrap", -1)
	qctx := ch.Context(ctx, ch.WithProgress(func(p *ch.Progress) { q.bytes.Add(int64(p.Bytes)) }))
	rows, err := conn.Query(qctx, query)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("--users-query on %s: %w", f.chAddr, err)
	}
	q.rows, q.scan, q.next, q.err = rows, rows.Scan, rows.Next, rows.Err
	cols := rows.ColumnTypes()
	if len(cols) < 2 {
		q.close()
		return nil, usageError{fmt.Errorf("--users-query returns %d column(s): want uuid first and first_seen second", len(cols))}
	}
	for _, c := range cols {
		q.dests = append(q.dests, reflect.New(c.ScanType()).Interface())
	}
	q.uuidV = reflect.ValueOf(q.dests[0]).Elem()
	q.timeV = reflect.ValueOf(q.dests[1]).Elem()
	q.colTyp = [2]string{cols[0].DatabaseTypeName(), cols[1].DatabaseTypeName()}
	if !chUUIDType(q.uuidV.Type()) {
		q.close()
		return nil, usageError{fmt.Errorf("--users-query: the first column (%s) is %s: want String, FixedString or UUID holding the uuid", cols[0].Name(), q.colTyp[0])}
	}
	if !chTimeType(q.timeV.Type()) {
		q.close()
		return nil, usageError{fmt.Errorf("--users-query: the second column (%s) is %s: want DateTime, DateTime64, Date, an integer of epoch milliseconds, or String", cols[1].Name(), q.colTyp[1])}
	}
	return q, nil
}

var timeType = reflect.TypeFor[time.Time]()

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

func chUUIDType(t reflect.Type) bool {
	t = deref(t)
	return t.Kind() == reflect.String || t.Kind() == reflect.Array && t.Len() == 16 && t.Elem().Kind() == reflect.Uint8
}

func chTimeType(t reflect.Type) bool {
	t = deref(t)
	switch t.Kind() {
	case reflect.String, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return t == timeType
}

func (q *usersQuery) close() {
	if q.closed {
		return
	}
	q.closed = true
	q.prog.Finish()
	if q.rows != nil {
		q.rows.Close()
	}
	q.conn.Close()
}

func (q *usersQuery) name() string   { return "--users-query" }
func (q *usersQuery) unit() string   { return "row" }
func (q *usersQuery) format() string { return "clickhouse " + q.colTyp[0] + ", " + q.colTyp[1] }

// present follows Nullable pointers; false for NULL.
func present(v reflect.Value) (reflect.Value, bool) {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return v, false
		}
		v = v.Elem()
	}
	return v, true
}

func (q *usersQuery) each(sink *bootstrapSink) error {
	var u operators.UUID
	var row int64
	var reported int64
	for q.next() {
		row++
		if row&0xfff == 0 {
			if b := q.bytes.Load(); b > reported {
				q.prog.Add(b - reported)
				reported = b
			}
		}
		if err := q.scan(q.dests...); err != nil {
			return fmt.Errorf("--users-query row %d: %w", row, err)
		}
		if err := q.row(sink, row, &u); err != nil {
			return err
		}
	}
	if err := q.err(); err != nil {
		return fmt.Errorf("--users-query on %s: %w", q.addr, err)
	}
	return nil
}

func (q *usersQuery) row(sink *bootstrapSink, row int64, u *operators.UUID) error {
	v, ok := present(q.uuidV)
	if !ok {
		return sink.bad(row, "uuid is NULL")
	}
	if v.Kind() == reflect.String {
		s := v.String()
		if *u, ok = parseUUID([]byte(s)); !ok {
			return sink.bad(row, fmt.Sprintf("bad uuid %s: %s", quoteExcerpt([]byte(s)), badUUIDWant))
		}
	} else {
		copy(u[:], v.Bytes())
	}
	v, ok = present(q.timeV)
	if !ok {
		return sink.bad(row, "first_seen is NULL")
	}
	var t int64
	switch {
	case v.Kind() == reflect.String:
		s := v.String()
		if t, ok = q.tp.parse([]byte(s)); !ok {
			return sink.bad(row, fmt.Sprintf("bad first_seen %s: %s", quoteExcerpt([]byte(s)), timeHint([]byte(s))))
		}
		return sink.good(u, t)
	case v.CanInt():
		t = v.Int()
	case v.CanUint():
		if x := v.Uint(); x <= math.MaxInt64 {
			t = int64(x)
		} else {
			t = math.MaxInt64
		}
	default:
		t = v.Addr().Interface().(*time.Time).UnixMilli()
	}
	if t < operators.MinEventTime || t > operators.MaxEventTime {
		return sink.bad(row, fmt.Sprintf("first_seen %d ms is outside 1970-01-01 to 2106-02-07", t))
	}
	return sink.good(u, t)
}
