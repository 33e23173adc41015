package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/sinks/clickhouse"
	"github.com/firstseen/firstseen/sinks/filesink"
	kafkasink "github.com/firstseen/firstseen/sinks/kafka"
)

// runOptions are the flags of run, which config check checks too.
type runOptions struct {
	f                pipelineFlags
	sinkKind         string // comma-separated list
	sinkPath         string
	sinkTopic        string
	sinkPartitions   int
	sinkFormat       string
	untilCaughtUp    bool
	snapshotInterval time.Duration
}

func newRunCmd() *cobra.Command {
	var (
		o       runOptions
		sourced []string // problems of the variables and the config file
	)
	cmd := &cobra.Command{
		Use:   "run --topic TOPIC [flags]",
		Short: "Process a Kafka topic of activity logs into ClickHouse",
		Long: `run consumes --topic, decides is_new and late for every record, and writes the
enriched rows to ClickHouse (or, with --sink file, to files under a directory,
partitioned by event_date).

Rows are written at each checkpoint (every --checkpoint-interval). A record
whose user might still turn out to have been active on an earlier day waits
until the watermark passes that midnight; all others are written at the next
checkpoint. Malformed records go to --dlq-topic with the reason in a header.

Several processes with the same --group share the topic's partitions (run one
per StatefulSet pod, with --instance-id set to the pod name). Each keeps the
state of its partitions in --state-dir (one Pebble database per partition) and
writes every change to the compacted changelog topic (<group>-state); a
process that gains a partition (a rescale, a dead replica, a lost volume)
restores it from the changelog before processing it. Records of one user must
be on one partition: producers key by the canonical uuid, or --repartition
re-keys them first. Records off their uuid's partition are counted
(firstseen_misplaced_records_total) and warned about.

A restart resumes from the checkpoints, never from the consumer group's
offsets (which are committed only so that lag tools see progress). On SIGTERM
or SIGINT it takes a final checkpoint and exits 0 within --shutdown-timeout; a
second signal exits at once, which is safe: the next start replays from the
last checkpoint.`,
		Example: `  firstseen run --brokers kafka-1:9092,kafka-2:9092 --topic activity \
      --clickhouse-addr clickhouse:9000 --clickhouse-database analytics \
      --state-dir /var/lib/firstseen --timezone Asia/Shanghai

  # One replica of a StatefulSet (the settings in FIRSTSEEN_* variables).
  FIRSTSEEN_INSTANCE_ID=$POD_NAME firstseen run --topic activity --group firstseen

  # A daily batch job: process what is there, checkpoint, exit 0.
  firstseen run --topic activity --until-caught-up`,
		Args: noArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			sourced = applySources(cmd)
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			op, problems := o.validate()
			if err := problemsError(append(sourced, problems...)); err != nil {
				return err
			}
			return o.run(cmd, op)
		},
	}
	o.addFlags(cmd.Flags())
	return cmd
}

// addFlags registers run's flags.
func (o *runOptions) addFlags(fs *pflag.FlagSet) {
	f := &o.f
	fs.SortFlags = false
	addConfigFlag(fs)
	f.addKafka(fs)
	f.addGroup(fs)
	f.addState(fs)
	f.addClickHouse(fs, "enriched_logs")
	f.addEvent(fs)
	fs.BoolVar(&o.untilCaughtUp, "until-caught-up", false, "process what the topic holds at start, take a final checkpoint and exit 0 (for scheduled jobs)")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, how long the final checkpoint may take")
	fs.DurationVar(&o.snapshotInterval, "snapshot-interval", time.Minute, "how often a snapshot of the state is published for 'firstseen state' to read while this runs (0: never)")
	fs.StringVar(&o.sinkKind, "sink", "clickhouse", "where rows go, exactly once each: clickhouse, kafka (JSON to --sink-topic), file (at --sink-path), or several, comma-separated (clickhouse,kafka)")
	fs.StringVar(&o.sinkPath, "sink-path", "", "with --sink file: the directory of the files, DIR/event_date=YYYY-MM-DD/part-*.jsonl|parquet (exactly once)")
	fs.StringVar(&o.sinkFormat, "sink-format", "jsonl", "with --sink file: the file format, jsonl or parquet")
	fs.StringVar(&o.sinkTopic, "sink-topic", "", "with --sink kafka: the topic enriched rows are written to as JSON, keyed by uuid, in the checkpoints' transactions (read it with isolation.level=read_committed); created if missing")
	fs.IntVar(&o.sinkPartitions, "sink-partitions", 6, "with --sink kafka: the partitions of --sink-topic when it is created")
	f.addMemory(fs)
	f.addLogging(fs)
	f.addSummary(fs)
	f.addProfiling(fs)
}

// validate checks every flag of run without connecting anywhere (it reads
// the files the flags name: certificates, keys, passwords) and returns the
// operator config and every problem found.
func (o *runOptions) validate() (operators.Config, []string) {
	f := &o.f
	problems := f.kafkaProblems("the Kafka topic holding the activity logs")
	if f.topic != "" && f.dlqTopic == f.topic {
		problems = append(problems, "--dlq-topic must differ from --topic: dead letters would be read back and dead-lettered again")
	}
	if f.repartition && o.untilCaughtUp {
		problems = append(problems, "--until-caught-up cannot be combined with --repartition: the re-keyed topic is written while "+
			"the processor reads it, so there is no end to catch up with")
	}
	if f.repartition && f.topic != "" && f.repartitionTopic == f.topic {
		problems = append(problems, "--repartition-topic must differ from --topic")
	}
	if f.stateDir == "" {
		problems = append(problems, "--state-dir is empty: give a directory for the state")
	}
	if f.shutdownTimeout <= 0 {
		problems = append(problems, fmt.Sprintf("--shutdown-timeout %s must be above 0", f.shutdownTimeout))
	}
	op, opProblems := f.operatorProblems()
	problems = append(problems, opProblems...)
	if f.bufferMiB < 1 {
		problems = append(problems, fmt.Sprintf("--buffer-mib %d must be at least 1", f.bufferMiB))
	}
	if f.summaryInterval <= 0 {
		problems = append(problems, fmt.Sprintf("--summary-interval %s must be above 0", f.summaryInterval))
	}
	if f.memoryLimitMiB < 0 {
		problems = append(problems, fmt.Sprintf("--memory-limit-mib %d must be 0 (none) or above", f.memoryLimitMiB))
	}
	problems = append(problems, f.loggingProblems()...)
	return op, append(problems, o.sinkProblems()...)
}

// sinkKinds are the sinks --sink names.
func (o *runOptions) sinkKinds() []string { return splitList(o.sinkKind) }

// hasSink says whether --sink names kind.
func (o *runOptions) hasSink(kind string) bool { return slices.Contains(o.sinkKinds(), kind) }

// sinkProblems checks --sink and the flags of the sinks it names.
func (o *runOptions) sinkProblems() []string {
	kinds := o.sinkKinds()
	if len(kinds) == 0 {
		return []string{"--sink is empty: want clickhouse, kafka or file, or several comma-separated"}
	}
	var problems []string
	seen := map[string]bool{}
	for _, k := range kinds {
		if seen[k] {
			problems = append(problems, fmt.Sprintf("--sink names %s twice", k))
		}
		seen[k] = true
		problems = append(problems, o.sinkProblemsOf(k)...)
	}
	return problems
}

// sinkProblemsOf checks the flags of one sink.
func (o *runOptions) sinkProblemsOf(kind string) []string {
	switch kind {
	case "kafka":
		var problems []string
		if o.sinkTopic == "" {
			problems = append(problems, "--sink kafka needs --sink-topic, the topic enriched rows go to")
		} else if o.sinkTopic == o.f.topic || o.sinkTopic == o.f.dlqTopic {
			problems = append(problems, "--sink-topic must differ from --topic and --dlq-topic")
		}
		if o.sinkPartitions < 1 {
			problems = append(problems, fmt.Sprintf("--sink-partitions %d must be at least 1", o.sinkPartitions))
		}
		return problems
	case "clickhouse":
		var problems []string
		if err := checkHostPorts("clickhouse-addr", splitList(o.f.chAddr)); err != nil {
			problems = append(problems, err.Error())
		}
		return append(problems, o.f.sec.checkClickHouse()...)
	case "file":
		var problems []string
		if o.sinkPath == "" {
			problems = append(problems, "--sink file needs --sink-path, the directory to write files to")
		}
		if _, err := filesink.ParseFormat(o.sinkFormat); err != nil || o.sinkFormat == "" {
			problems = append(problems, fmt.Sprintf("--sink-format %q: want jsonl or parquet", o.sinkFormat))
		}
		return problems
	}
	return []string{fmt.Sprintf("--sink %q: want clickhouse, kafka or file", kind)}
}

// warnings are settings of run that work but are unsafe or likely wrong.
func (o *runOptions) warnings() []string {
	w := o.f.sec.kafkaWarnings()
	if o.hasSink("clickhouse") {
		w = append(w, o.f.clickhouseWarnings()...)
	}
	return w
}

// run runs the processor with the checked flags.
func (o *runOptions) run(cmd *cobra.Command, op operators.Config) error {
	f := &o.f
	if err := f.applyMemoryLimit(); err != nil {
		return err
	}
	log, ctx, stop, err := f.logAndSignals()
	if err != nil {
		return err
	}
	defer stop()
	f.sec.logSecurity(log, o.hasSink("clickhouse"))
	for _, w := range o.warnings() {
		log.Warn(w)
	}
	if err := f.checkKafkaAccess(ctx, log); err != nil {
		return err
	}

	cfg := f.engineConfig(op, log)
	cfg.UntilCaughtUp = o.untilCaughtUp
	cfg.SnapshotInterval = o.snapshotInterval
	if o.snapshotInterval == 0 {
		cfg.SnapshotInterval = -1
	}
	closeSinks, err := o.openSinks(ctx, &cfg, log)
	defer closeSinks()
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped while opening the sinks: nothing to save")
			return nil
		}
		return err
	}
	obs := newMetricsObserver(o.sinkKinds()...)
	cfg.Status, cfg.Observer = &engine.Status{}, obs
	stopServe, err := serveStatus(listener{addr: f.metricsAddr, pprof: f.pprof, stallAfter: defaultStallAfter(f.checkpointInterval),
		explicit: cmd.Flags().Changed("metrics-addr") || os.Getenv(envName("metrics-addr")) != ""}, cfg.Status, obs, log)
	if err != nil {
		return err
	}
	defer stopServe()
	go logSummaries(ctx, cfg.Status, f.summaryInterval, log)
	st, err := runPipeline(ctx, f, cfg)
	if err == nil || st.Records > 0 {
		logSummary(log, st)
	}
	return err
}

// openSinks opens the sinks --sink names, in its order, into cfg.Sinks. The
// returned function closes those that opened.
func (o *runOptions) openSinks(ctx context.Context, cfg *engine.Config, log *slog.Logger) (func(), error) {
	var opened []sinks.Sink
	closeAll := func() {
		for _, s := range slices.Backward(opened) {
			s.Close()
		}
	}
	for _, kind := range o.sinkKinds() {
		sc := engine.SinkConfig{Name: kind}
		switch kind {
		case "clickhouse":
			s, err := openClickHouse(ctx, &o.f, log)
			if err != nil {
				return closeAll, err
			}
			sc.Sink, sc.IsRetryable = s, clickhouse.IsRetryable
		case "kafka":
			s, err := kafkasink.Open(ctx, kafkasink.Config{Brokers: o.f.brokers, Topic: o.sinkTopic,
				Partitions: int32(o.sinkPartitions), KafkaOptions: o.f.sec.kafkaOpts})
			if err != nil {
				return closeAll, err
			}
			log.Info("kafka sink ready", "topic", s.Topic())
			sc.Sink = s
		case "file":
			format, err := filesink.ParseFormat(o.sinkFormat)
			if err != nil {
				return closeAll, err
			}
			s, err := filesink.Open(o.sinkPath, format)
			if err != nil {
				return closeAll, err
			}
			sc.Sink = s
		}
		opened = append(opened, sc.Sink)
		cfg.Sinks = append(cfg.Sinks, sc)
	}
	return closeAll, nil
}

// openClickHouse connects, retrying while the error is transient, so a
// processor started before its database waits for it.
func openClickHouse(ctx context.Context, f *pipelineFlags, log *slog.Logger) (*clickhouse.Sink, error) {
	cfg := f.clickhouseConfig()
	backoff := time.Second
	for {
		s, err := clickhouse.Open(ctx, cfg)
		if err == nil {
			log.Info("clickhouse connected", "addr", f.chAddr, "table", s.Table(), "server_version", s.ServerVersion())
			return s, nil
		}
		if !clickhouse.IsRetryable(err) || ctx.Err() != nil {
			return nil, err
		}
		log.Warn("clickhouse not reachable; retrying", "retry_in", backoff, "err", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, err
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// signalContext is cancelled by the first SIGTERM or SIGINT; a second one
// exits the process at once. That is safe: state is only ever changed by
// atomic, synced checkpoint commits, so the next start replays from the last
// one.
func signalContext(log *slog.Logger) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-ch
		log.Info("signal received: finishing the current batch and checkpointing; send it again to exit at once", "signal", s.String())
		cancel()
		s = <-ch
		log.Warn("second signal: exiting now; the next start replays from the last checkpoint", "signal", s.String())
		os.Exit(128 + int(s.(syscall.Signal)))
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}

// runPipeline runs the processor, behind the repartitioner with
// --repartition.
func runPipeline(ctx context.Context, f *pipelineFlags, cfg engine.Config) (engine.Stats, error) {
	if !f.repartition {
		return engine.Run(ctx, cfg)
	}
	return runRepartitioned(ctx, f, cfg)
}

func logSummary(log *slog.Logger, st engine.Stats) {
	rate := 0.0
	if st.Elapsed > 0 {
		rate = float64(st.Records) / st.Elapsed.Seconds()
	}
	log.Info("done", "records", st.Records, "rows", st.Rows, "new", st.New, "late", st.Late,
		"dead_lettered", st.DeadLettered, "held", st.Held, "checkpoints", st.Checkpoints,
		"elapsed", st.Elapsed.Round(time.Millisecond), "records_per_sec", int64(rate))
}

var _ sinks.Sink = (*filesink.Sink)(nil)
