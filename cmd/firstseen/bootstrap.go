package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine"
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
	workDir         string
}

// bootstrapUsed are the flags bootstrap uses, its own and those it shares
// with run. Every other flag of run is accepted, hidden and ignored, so that
// one set of flags (or FIRSTSEEN_* variables) serves both.
var bootstrapUsed = []string{"input", "format", "uuid-column", "first-seen-column", "users-query", "max-reported", "strict",
	"brokers", "topic", "group", "changelog-topic", "repartition", "repartition-topic", "work-dir", "clickhouse-addr", "clickhouse-database",
	"clickhouse-user", "clickhouse-password-file", "log-level", "log-format", "cpu-profile", "config",
	"kafka-tls", "kafka-tls-ca-file", "kafka-tls-cert-file", "kafka-tls-key-file", "kafka-tls-server-name",
	"kafka-sasl-mechanism", "kafka-user", "kafka-password-file",
	"clickhouse-tls", "clickhouse-tls-ca-file", "clickhouse-tls-cert-file", "clickhouse-tls-key-file", "clickhouse-tls-server-name"}

func newBootstrapCmd() *cobra.Command {
	var (
		f pipelineFlags
		o bootstrapOptions
	)
	cmd := &cobra.Command{
		Use:   "bootstrap --topic TOPIC [FILE | -] [flags]",
		Short: "Load users' first-seen times into the replicas' state, through the changelog, from a file or a ClickHouse query",
		Long: `bootstrap loads (uuid, first_seen) pairs into the state of the processors
(the replicas of 'firstseen run' in consumer group --group), for example the
users an older system already knew, before the first run or between runs.

It writes through the changelog topic (--changelog-topic, default
<group>-state), from which every replica restores the state of the
partitions it owns: a user's record goes to the changelog partition of the
input partition its records are on (--topic keyed by the canonical uuid).

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
time moves earlier are written to the changelog.

How: bootstrap restores the changelog into a scratch copy under --work-dir
(removed at the end), merges the input into it partition by partition, and
produces the new and lowered users to the changelog, waiting for every
acknowledgement. A bad input row with --strict, or an interrupt while the
input is read, writes nothing. A failure or interrupt while writing may
leave part of the users written: each of them is correct (it only lowers a
first_seen), and running the same bootstrap again writes the rest.

The replicas must be stopped: bootstrap refuses while the consumer group has
members (scale the StatefulSet to 0, or stop the processes; SIGTERM takes a
final checkpoint). When they start again they restore the loaded users from
the changelog. It also refuses while a partition's last checkpoint is
unfinished (a replica was killed in the middle of one): start the replicas to
complete it, stop them, then bootstrap.

Bad rows (unparsable uuid or time, missing column) are reported on stderr with
their line number, up to --max-reported, counted in the summary and skipped;
with --strict the first one stops the load with nothing applied. A column
named by --uuid-column or --first-seen-column that the header lacks is an
error before anything is read.

bootstrap accepts run's other flags (--state-dir, --timezone, --sink, ...)
and ignores them, so one set of flags or FIRSTSEEN_* variables serves both.
Exit status: 0 loaded, 1 refused or failed, 2 bad flags.`,
		Example: `  firstseen bootstrap --brokers kafka:9092 --topic activity users.csv.gz
  zcat users.jsonl.gz | firstseen bootstrap --brokers kafka:9092 --topic activity --format jsonl -
  firstseen bootstrap --brokers kafka:9092 --topic activity --clickhouse-addr clickhouse:9000 \
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
	f.addKafka(fs)
	f.addGroup(fs)
	fs.StringVar(&o.workDir, "work-dir", "", "directory for the scratch copy of the changelog's state and the load's temporary files, in a new "+
		"directory removed at the end; needs about 30 bytes per user in the changelog and 24 per input row (default: the system's temporary directory)")
	f.addClickHouse(fs, "enriched_logs")
	f.addLogging(fs)
	f.addProfiling(fs)
	f.addState(fs)
	_ = fs.MarkDeprecated("state-dir", "bootstrap no longer uses it: it writes through the changelog topic, from which every replica restores")
	// run's other flags are accepted too, so that a script can pass run's
	// whole command line; bootstrap ignores them.
	newRunCmd().Flags().VisitAll(func(fl *pflag.Flag) {
		if fs.Lookup(fl.Name) == nil {
			fs.AddFlag(fl)
		}
	})
	fs.VisitAll(func(fl *pflag.Flag) {
		if !slices.Contains(bootstrapUsed, fl.Name) {
			fl.Hidden = true
		}
	})
	fs.Lookup("clickhouse-database").Usage = "with --users-query: the database unqualified table names refer to"
	fs.Lookup("topic").Usage = "Kafka topic of the activity logs (required): its partition count decides which changelog partition holds each user"
	fs.Lookup("group").Usage = "consumer group of the replicas; bootstrap refuses while it has members"
	fs.Lookup("changelog-topic").Usage = "compacted topic the replicas restore their partitions' state from, which bootstrap writes to (default <group>-state)"
	fs.Lookup("repartition").Usage = "the replicas run with --repartition: users belong to the partitions of --repartition-topic (or, before it exists, of --topic)"
	fs.Lookup("repartition-topic").Usage = "with --repartition: the replicas' internal topic of re-keyed records (default <group>-repartition)"
	return cmd
}

// bootstrapTuneLoader lets tests shrink the loaders' memory thresholds, so
// that small inputs spill and split as big ones do. It is called for each
// partition's loader after bootstrap's own settings.
var bootstrapTuneLoader = func(*state.Loader) {}

// bootstrapHooks lets tests act at the steps of a bootstrap.
var bootstrapHooks struct {
	beforeWrite func() // after the input is read, before the second check of the group
}

// bootstrapRestoreChunk is how many partitions are restored at a time.
const bootstrapRestoreChunk = 4

// bootstrapRestoreFetch bounds what a restore fetches at once. A
// changelog's user records are about 40 bytes on the wire, but a decoded
// kgo.Record takes about 250 bytes of heap: 16 MiB fetches of four
// partitions made the restore of 10 M users peak at 940 MB of RSS.
var bootstrapRestoreFetch = []kgo.Opt{kgo.FetchMaxPartitionBytes(1 << 20), kgo.FetchMaxBytes(4 << 20)}

// bootstrapMemRecords is the values held in memory over all partitions'
// loaders before they spill (the single loader's default before the
// changelog): 2 Mi values, 48 MiB.
const bootstrapMemRecords = 2 << 20

// bootstrapStats are what a bootstrap did.
type bootstrapStats struct {
	source     string
	rows       int64 // data rows read, good and bad
	rejected   int64
	early      int64 // loaded values before 1973-03-03: epoch seconds taken for milliseconds?
	load       state.LoadStats
	written    int64 // user records produced to the changelog
	partitions int
	disk       int64
	elapsed    time.Duration
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
	if err := f.checkKafka("the Kafka topic of the activity logs; its partition count decides where each user's state lives"); err != nil {
		return err
	}
	if f.group == "" {
		return usageError{errors.New("--group is empty: give the consumer group of the replicas")}
	}
	clTopic := cmp.Or(f.changelogTopic, f.group+"-state")
	if clTopic == f.topic {
		return usageError{fmt.Errorf("--changelog-topic %q must differ from --topic", clTopic)}
	}
	// The topic the replicas process: with --repartition, the re-keyed
	// internal topic (created by the replicas with the input's partition
	// count when missing).
	procTopic := ""
	if f.repartition {
		procTopic = cmp.Or(f.repartitionTopic, f.group+"-repartition")
		if procTopic == f.topic || procTopic == clTopic {
			return usageError{fmt.Errorf("--repartition-topic %q must differ from --topic and --changelog-topic", procTopic)}
		}
	}
	if o.workDir != "" {
		if fi, err := os.Stat(o.workDir); err != nil || !fi.IsDir() {
			return usageError{fmt.Errorf("--work-dir %s is not a directory", o.workDir)}
		}
	}
	if o.usersQuery != "" {
		if err := checkHostPorts("clickhouse-addr", splitList(f.chAddr)); err != nil {
			return err
		}
		if err := problemsError(f.sec.checkClickHouse()); err != nil {
			return err
		}
	}
	log, ctx, stop, err := f.logAndSignals()
	if err != nil {
		return err
	}
	defer stop()
	f.sec.logSecurity(log, o.usersQuery != "")
	if err := f.checkKafkaAccess(ctx, log); err != nil {
		return err
	}

	// The input's header next, so that a missing column is reported before
	// anything else is touched.
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

	k, err := openBootstrapKafka(ctx, f, procTopic, clTopic, log)
	if err != nil {
		return err
	}
	defer k.close()
	if err := k.checkNoReplicas(ctx); err != nil {
		return err
	}

	// A scratch copy of the state the replicas would restore.
	scratch, err := os.MkdirTemp(o.workDir, "firstseen-bootstrap-")
	if err != nil {
		return fmt.Errorf("--work-dir: %w", err)
	}
	defer os.RemoveAll(scratch)
	parts, err := restoreScratch(ctx, k, scratch, log)
	if err != nil {
		return err
	}
	defer parts.close()

	if o.usersQuery != "" {
		q, err := openUsersQuery(ctx, f, o.usersQuery, log)
		if err != nil {
			return err
		}
		defer q.close()
		src = q
	}

	sink := &bootstrapSink{
		loaders: parts.loaders, errw: cmd.ErrOrStderr(), name: src.name(), unit: src.unit(),
		maxReported: o.maxReported, strict: o.strict, ctx: ctx,
	}
	log.Info("bootstrap: reading", "source", src.name(), "format", src.format(), "topic", k.procTopic,
		"partitions", k.partitions, "changelog", clTopic)
	err = src.each(sink)
	src.close() // ends the progress display
	if err != nil {
		return err
	}
	if n := sink.rejected - int64(sink.reported); n > 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "%s: %d more bad rows not shown (--max-reported %d)\n", src.name(), n, o.maxReported)
	}
	if bootstrapHooks.beforeWrite != nil {
		bootstrapHooks.beforeWrite()
	}
	// A replica may have started while the input was read.
	if err := k.checkNoReplicas(ctx); err != nil {
		return fmt.Errorf("%w (nothing was written)", err)
	}
	log.Info("bootstrap: input read; merging with the restored state and writing the changelog",
		"rows", sink.rows, "loaded", sink.loaded, "rejected", sink.rejected)
	ls, err := parts.finish(ctx, k)
	if err != nil {
		if ctx.Err() != nil {
			err = errors.New("interrupted")
		}
		if k.sent.Load() == 0 {
			return fmt.Errorf("bootstrap: %w; nothing was written", err)
		}
		return fmt.Errorf("bootstrap: %w; %d of the %d users sent to the changelog %q were acknowledged before it "+
			"stopped; those written are correct (each only lowers a user's first_seen): run the same bootstrap again "+
			"to write the rest", err, k.written.Load(), k.sent.Load(), k.changelog)
	}
	st := bootstrapStats{
		source: src.name(), rows: sink.rows, rejected: sink.rejected, early: sink.early,
		load: ls, written: k.written.Load(), partitions: k.partitions, disk: parts.diskBytes(), elapsed: time.Since(start),
	}
	st.print(cmd.OutOrStdout())
	st.log(log)
	if st.early > 0 {
		log.Warn("bootstrap: some first_seen values are before 1973-03-03; if they are epoch seconds, multiply them by 1000",
			"values", st.early)
	}
	return nil
}

// bootstrapKafka is bootstrap's Kafka client: metadata, the group check,
// and the producer of the changelog's user records.
type bootstrapKafka struct {
	cl         *kgo.Client
	adm        *kadm.Client
	brokers    []string
	topic      string // the input topic (--topic)
	procTopic  string // the topic the replicas process: --topic, or the repartition topic
	group      string
	changelog  string
	partitions int // of procTopic, and so of the changelog
	log        *slog.Logger
	opts       []kgo.Opt // TLS and SASL, for every client

	sent    atomic.Int64 // records handed to the client
	written atomic.Int64 // records acknowledged
	errMu   sync.Mutex
	err     error // the first produce error
}

// bootstrapMetadataTimeout bounds each metadata request.
const bootstrapMetadataTimeout = 30 * time.Second

// openBootstrapKafka connects, learns the input topic's partition count and
// makes sure the changelog topic exists with as many partitions.
func openBootstrapKafka(ctx context.Context, f *pipelineFlags, procTopic, changelog string, log *slog.Logger) (*bootstrapKafka, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(f.brokers...),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		// The idempotent producer (franz-go's default, with acks from all
		// in-sync replicas): a retried batch is not duplicated, and the
		// records of a partition stay in order.
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.WithLogger(engine.KafkaLogger(log)),
	}, f.sec.kafkaOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	k := &bootstrapKafka{cl: cl, adm: kadm.NewClient(cl), brokers: f.brokers, topic: f.topic, procTopic: cmp.Or(procTopic, f.topic),
		group: f.group, changelog: changelog, log: log, opts: f.sec.kafkaOpts}
	if err := k.discover(ctx); err != nil {
		cl.Close()
		return nil, err
	}
	return k, nil
}

func (k *bootstrapKafka) close() { k.cl.Close() }

func (k *bootstrapKafka) discover(ctx context.Context) error {
	mctx, cancel := context.WithTimeout(ctx, bootstrapMetadataTimeout)
	defer cancel()
	brokers := strings.Join(k.brokers, ",")
	td, err := k.adm.ListTopics(mctx, k.topic, k.procTopic, k.changelog)
	if err != nil {
		return fmt.Errorf("kafka %s: cannot read metadata: %w", brokers, err)
	}
	in, ok := td[k.topic]
	if !ok || errors.Is(in.Err, kerr.UnknownTopicOrPartition) {
		return fmt.Errorf("kafka %s: topic %q does not exist: bootstrap needs the input topic of the replicas (--topic), "+
			"whose partition count decides which changelog partition holds each user; create it first", brokers, k.topic)
	}
	if in.Err != nil {
		return fmt.Errorf("kafka topic %q: %w", k.topic, in.Err)
	}
	k.partitions = len(in.Partitions)
	if k.procTopic != k.topic {
		// The replicas create the repartition topic with the input's
		// partition count; an existing one decides.
		switch rt := td[k.procTopic]; {
		case rt.Err == nil && len(rt.Partitions) > 0:
			k.partitions = len(rt.Partitions)
		case rt.Err != nil && !errors.Is(rt.Err, kerr.UnknownTopicOrPartition):
			return fmt.Errorf("kafka topic %q (--repartition-topic): %w", k.procTopic, rt.Err)
		}
	}
	if k.partitions == 0 {
		return fmt.Errorf("kafka topic %q has no partitions", k.procTopic)
	}
	cd, ok := td[k.changelog]
	if !ok || errors.Is(cd.Err, kerr.UnknownTopicOrPartition) {
		// With the settings the replicas create it with.
		_, err := k.adm.CreateTopic(mctx, int32(k.partitions), -1, engine.ChangelogConfigs(), k.changelog)
		switch {
		case err == nil:
			k.log.Info("bootstrap: created the changelog topic", "topic", k.changelog, "partitions", k.partitions)
			return nil
		case !errors.Is(err, kerr.TopicAlreadyExists):
			return fmt.Errorf("kafka: cannot create the changelog topic %q: %w", k.changelog, err)
		}
		// Created meanwhile, by a replica or another bootstrap.
		if td, err = k.adm.ListTopics(mctx, k.changelog); err != nil {
			return fmt.Errorf("kafka: cannot read the changelog topic %q: %w", k.changelog, err)
		}
		cd = td[k.changelog]
	}
	if cd.Err != nil {
		return fmt.Errorf("kafka: the changelog topic %q cannot be read: %w", k.changelog, cd.Err)
	}
	if n := len(cd.Partitions); n != k.partitions {
		return fmt.Errorf("kafka: the changelog topic %q has %d partitions, but the input topic %q has %d: it must have "+
			"as many (each input partition's state is in the changelog partition of the same number)", k.changelog, n, k.procTopic, k.partitions)
	}
	return nil
}

// checkNoReplicas refuses while the consumer group has members: a running
// replica would not see the records bootstrap writes for its partitions,
// and its own later records could bring back a higher first_seen.
func (k *bootstrapKafka) checkNoReplicas(ctx context.Context) error {
	mctx, cancel := context.WithTimeout(ctx, bootstrapMetadataTimeout)
	defer cancel()
	gs, err := k.adm.DescribeGroups(mctx, k.group)
	if err != nil {
		return fmt.Errorf("kafka: cannot describe the consumer group %q: %w", k.group, err)
	}
	g, ok := gs[k.group]
	if !ok || errors.Is(g.Err, kerr.GroupIDNotFound) {
		return nil
	}
	if g.Err != nil {
		return fmt.Errorf("kafka: cannot describe the consumer group %q: %w", k.group, g.Err)
	}
	if len(g.Members) == 0 {
		return nil
	}
	var who []string
	for _, m := range g.Members {
		switch {
		case m.InstanceID != nil && *m.InstanceID != "":
			who = append(who, *m.InstanceID)
		default:
			who = append(who, m.ClientID+"@"+strings.TrimPrefix(m.ClientHost, "/"))
		}
	}
	return fmt.Errorf("consumer group %q has %d active member(s) (%s): replicas are running; stop the replicas "+
		"(scale the StatefulSet to 0) first; when they start they restore the loaded users from the changelog. "+
		"A replica with an instance id stays a member for the session timeout (45s by default) after it stops: "+
		"if you have just stopped them, try again after that", k.group, len(g.Members), strings.Join(who, ", "))
}

// changelogRecord is a user record of the changelog with its bytes
// (state.AppendChangelogUser), in one allocation.
type changelogRecord struct {
	rec kgo.Record
	buf [state.ChangelogUserSize]byte
}

// produce writes a user record to changelog partition part. Records are
// not transactional: a user record is idempotent and only ever lowers the
// user's first_seen, so one written twice, or without the rest of a load,
// is still right.
func (k *bootstrapKafka) produce(ctx context.Context, part int32, u *operators.UUID, firstSeen int64) error {
	if err := k.failed(); err != nil {
		return err
	}
	r := new(changelogRecord)
	key, value := state.AppendChangelogUser(r.buf[:0], u, firstSeen)
	r.rec = kgo.Record{Topic: k.changelog, Partition: part, Key: key, Value: value}
	k.sent.Add(1)
	k.cl.Produce(ctx, &r.rec, k.acked)
	return nil
}

func (k *bootstrapKafka) acked(r *kgo.Record, err error) {
	if err == nil {
		k.written.Add(1)
		return
	}
	k.errMu.Lock()
	if k.err == nil {
		k.err = fmt.Errorf("changelog %q partition %d: produce: %w", k.changelog, r.Partition, err)
	}
	k.errMu.Unlock()
}

func (k *bootstrapKafka) failed() error {
	k.errMu.Lock()
	defer k.errMu.Unlock()
	return k.err
}

// flush waits for every record's acknowledgement.
func (k *bootstrapKafka) flush(ctx context.Context) error {
	if err := k.cl.Flush(ctx); err != nil {
		return fmt.Errorf("changelog %q: %w", k.changelog, err)
	}
	return k.failed()
}

// bootstrapParts are the scratch databases of all partitions, restored from
// the changelog, and a loader into each.
type bootstrapParts struct {
	dbs     []*state.DB
	loaders []*state.Loader
	cache   *state.Cache
	conc    int // loaders finished at the same time
}

// bootstrapFinishers is how many partitions' loads are finished at the same
// time: one per core, at most 4.
func bootstrapFinishers(partitions int) int {
	return min(partitions, max(1, runtime.GOMAXPROCS(0)), 4)
}

// restoreScratch restores every partition's changelog into dir and starts a
// loader on each, producing what it writes to the changelog.
func restoreScratch(ctx context.Context, k *bootstrapKafka, dir string, log *slog.Logger) (*bootstrapParts, error) {
	began := time.Now()
	all := make([]int32, k.partitions)
	for i := range all {
		all[i] = int32(i)
	}
	log.Info("bootstrap: restoring the changelog into a scratch copy", "changelog", k.changelog, "partitions", k.partitions, "dir", dir)
	// A few partitions at a time: a partition's restore holds up to 2 Mi
	// values (48 MiB) in memory before it spills.
	var users int64
	for chunk := range slices.Chunk(all, bootstrapRestoreChunk) {
		n, err := engine.Restore(ctx, engine.Config{Brokers: k.brokers, Topic: k.procTopic, Group: k.group,
			ChangelogTopic: k.changelog, StateDir: dir, Logger: log, State: state.Options{Logger: log},
			KafkaOptions: append(slices.Clone(bootstrapRestoreFetch), k.opts...)}, chunk)
		if err != nil {
			if ctx.Err() != nil {
				return nil, errors.New("bootstrap interrupted: nothing was written")
			}
			return nil, fmt.Errorf("bootstrap: restore the changelog %q: %w", k.changelog, err)
		}
		users += n
	}
	log.Info("bootstrap: changelog restored", "user_records", users, "took", time.Since(began).Round(time.Millisecond))

	// The merge-joins read each partition's state once, in order: a small
	// shared block cache will do.
	p := &bootstrapParts{cache: state.NewCache(32 << 20), conc: bootstrapFinishers(k.partitions)}
	for part := range int32(k.partitions) {
		db, err := state.Open(engine.PartitionDir(dir, part), state.Options{Logger: log, Cache: p.cache})
		if err != nil {
			p.close()
			return nil, err
		}
		p.dbs = append(p.dbs, db)
		// A replica replays an unfinished epoch from the state it had when
		// the epoch started, and relies on deciding is_new as the first
		// attempt did (some of its rows may have landed already); users
		// loaded in between would change those decisions.
		if in, pending, err := db.LoadIntent(); err != nil || pending {
			p.close()
			if err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("partition %d's last checkpoint is unfinished (epoch %d: its replica stopped in the middle "+
				"of it): start the replicas until they have checkpointed (a start completes it), stop them again, then "+
				"run bootstrap; nothing was written", part, in.Epoch)
		}
		l, err := db.NewLoader("")
		if err != nil {
			p.close()
			return nil, err
		}
		p.loaders = append(p.loaders, l)
		// The values in memory over all loaders stay what one loader held
		// before the changelog; a partition's share spills to its own files.
		l.MemRecords = max(bootstrapMemRecords/k.partitions, 16<<10)
		if p.conc > 1 {
			// A few partitions are finished at a time, each by one worker:
			// their sort buffers together stay what one loader's two
			// workers take (2 x 2 Mi values, about 200 MiB).
			l.Workers, l.UnitRecords = 1, (4<<20)/p.conc
		}
		bootstrapTuneLoader(l)
		l.OnWrite = func(u *operators.UUID, firstSeen int64) error {
			return k.produce(ctx, part, u, firstSeen)
		}
	}
	return p, nil
}

// finish merges each partition's load into its scratch database, which
// produces the new and lowered users to the changelog, and waits for all
// acknowledgements. It returns the loads' stats summed.
func (p *bootstrapParts) finish(ctx context.Context, k *bootstrapKafka) (state.LoadStats, error) {
	n, conc := len(p.loaders), p.conc
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stats := make([]state.LoadStats, n)
	errs := make([]error, n)
	next := atomic.Int32{}
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || fctx.Err() != nil {
					return
				}
				if stats[i], errs[i] = p.loaders[i].Finish(fctx); errs[i] != nil {
					errs[i] = fmt.Errorf("partition %d: %w", i, errs[i])
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	var sum state.LoadStats
	for i := range stats {
		sum.Read += stats[i].Read
		sum.Distinct += stats[i].Distinct
		sum.New += stats[i].New
		sum.Lowered += stats[i].Lowered
		sum.Unchanged += stats[i].Unchanged
		sum.Before += stats[i].Before
		sum.SSTFiles += stats[i].SSTFiles
		sum.SSTBytes += stats[i].SSTBytes
	}
	// The produce error first: it is why the loads stopped.
	if err := k.failed(); err != nil {
		return sum, err
	}
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return sum, err
		}
	}
	if err := errors.Join(errs...); err != nil {
		return sum, err
	}
	if err := ctx.Err(); err != nil {
		return sum, err
	}
	if err := k.flush(ctx); err != nil {
		return sum, err
	}
	return sum, nil
}

func (p *bootstrapParts) diskBytes() int64 {
	var n int64
	for _, db := range p.dbs {
		n += db.DiskBytes()
	}
	return n
}

func (p *bootstrapParts) close() {
	for _, l := range p.loaders {
		l.Abort()
	}
	for _, db := range p.dbs {
		db.Close()
	}
	p.loaders, p.dbs = nil, nil
	if p.cache != nil {
		p.cache.Unref()
		p.cache = nil
	}
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
  written to changelog    %d
  partitions              %d
  bytes on disk per user  %.1f
  elapsed                 %s
  users/s                 %.0f
`, st.source, st.rows, st.load.Read, st.rejected, st.load.Duplicates(), st.load.New, st.load.Lowered,
		st.load.Unchanged, st.load.After(), st.written, st.partitions, perUser, st.elapsed.Round(time.Millisecond), rate)
}

func (st *bootstrapStats) log(log *slog.Logger) {
	rate := 0.0
	if s := st.elapsed.Seconds(); s > 0 {
		rate = float64(st.load.Read) / s
	}
	log.Info("bootstrap done", "source", st.source, "rows", st.rows, "loaded", st.load.Read, "rejected", st.rejected,
		"duplicates", st.load.Duplicates(), "new", st.load.New, "lowered", st.load.Lowered, "unchanged", st.load.Unchanged,
		"users_after", st.load.After(), "written", st.written, "partitions", st.partitions, "disk_bytes", st.disk,
		"elapsed", st.elapsed.Round(time.Millisecond), "users_per_sec", int64(rate))
}

// bootstrapSink takes the rows of a source: good ones to the loader of
// their user's partition, bad ones reported and counted.
type bootstrapSink struct {
	loaders     []*state.Loader // by partition
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
		return errors.New("bootstrap interrupted: nothing was written")
	}
	return s.loaders[operators.PartitionOf(u, len(s.loaders))].Add(u, firstSeen)
}

func (s *bootstrapSink) bad(line int64, reason string) error {
	s.rows++
	s.rejected++
	if s.strict {
		return fmt.Errorf("%s: %s %d: %s; nothing was written (--strict)", s.name, s.unit, line, reason)
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
