package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

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
	f.addProfiling(fs)
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
	log, ctx, stop, err := f.logAndSignals()
	if err != nil {
		return err
	}
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
