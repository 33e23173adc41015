package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/sinks/clickhouse"
	"github.com/firstseen/firstseen/sinks/filesink"
)

func newRunCmd() *cobra.Command {
	var (
		f                pipelineFlags
		sinkKind         string
		sinkPath         string
		untilCaughtUp    bool
		snapshotInterval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "run --topic TOPIC [flags]",
		Short: "Process a Kafka topic of activity logs into ClickHouse",
		Long: `run consumes --topic, decides is_new and late for every record, and writes the
enriched rows to ClickHouse (or, with --sink file, to a JSON Lines file).

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
		Args:    noArgs,
		PreRunE: preRun,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.checkKafka("the Kafka topic holding the activity logs"); err != nil {
				return err
			}
			if f.dlqTopic == f.topic {
				return usageError{fmt.Errorf("--dlq-topic must differ from --topic: dead letters would be read back and dead-lettered again")}
			}
			if f.stateDir == "" {
				return usageError{fmt.Errorf("--state-dir is empty: give a directory for the state")}
			}
			if f.shutdownTimeout <= 0 {
				return usageError{fmt.Errorf("--shutdown-timeout %s must be above 0", f.shutdownTimeout)}
			}
			op, err := f.operatorConfig()
			if err != nil {
				return err
			}
			if f.summaryInterval <= 0 {
				return usageError{fmt.Errorf("--summary-interval %s must be above 0", f.summaryInterval)}
			}
			if f.bufferMiB < 1 {
				return usageError{fmt.Errorf("--buffer-mib %d must be at least 1", f.bufferMiB)}
			}
			if err := f.applyMemoryLimit(); err != nil {
				return err
			}
			log, ctx, stop, err := f.logAndSignals()
			if err != nil {
				return err
			}
			defer stop()

			cfg := f.engineConfig(op, log)
			cfg.UntilCaughtUp = untilCaughtUp
			cfg.SnapshotInterval = snapshotInterval
			if snapshotInterval == 0 {
				cfg.SnapshotInterval = -1
			}
			switch sinkKind {
			case "clickhouse":
				if err := checkHostPorts("clickhouse-addr", splitList(f.chAddr)); err != nil {
					return err
				}
				s, err := openClickHouse(ctx, &f, log)
				if err != nil {
					return err
				}
				defer s.Close()
				cfg.Sink, cfg.IsRetryable = s, clickhouse.IsRetryable
			case "file":
				if sinkPath == "" {
					return usageError{fmt.Errorf("--sink file needs --sink-path, the JSON Lines file to append to")}
				}
				s, err := filesink.Open(sinkPath)
				if err != nil {
					return err
				}
				defer s.Close()
				cfg.Sink = s
			default:
				return usageError{fmt.Errorf("--sink %q: want clickhouse or file", sinkKind)}
			}
			obs := newMetricsObserver(sinkKind)
			cfg.Status, cfg.Observer = &engine.Status{}, obs
			stopServe, err := serveStatus(listener{addr: f.metricsAddr, pprof: f.pprof, stallAfter: defaultStallAfter(f.checkpointInterval),
				explicit: cmd.Flags().Changed("metrics-addr") || os.Getenv(envName("metrics-addr")) != ""}, cfg.Status, obs, log)
			if err != nil {
				return err
			}
			defer stopServe()
			go logSummaries(ctx, cfg.Status, f.summaryInterval, log)
			st, err := runPipeline(ctx, &f, cfg)
			if err == nil || st.Records > 0 {
				logSummary(log, st)
			}
			return err
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	f.addKafka(fs)
	f.addGroup(fs)
	f.addState(fs)
	f.addClickHouse(fs, "enriched_logs")
	f.addEvent(fs)
	fs.BoolVar(&untilCaughtUp, "until-caught-up", false, "process what the topic holds at start, take a final checkpoint and exit 0 (for scheduled jobs)")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, how long the final checkpoint may take")
	fs.DurationVar(&snapshotInterval, "snapshot-interval", time.Minute, "how often a snapshot of the state is published for 'firstseen state' to read while this runs (0: never)")
	fs.StringVar(&sinkKind, "sink", "clickhouse", "where rows go: clickhouse, or file (JSON Lines at --sink-path)")
	fs.StringVar(&sinkPath, "sink-path", "", "with --sink file: the JSON Lines file rows are appended to")
	f.addMemory(fs)
	f.addLogging(fs)
	f.addSummary(fs)
	f.addProfiling(fs)
	return cmd
}

// openClickHouse connects, retrying while the error is transient, so a
// processor started before its database waits for it.
func openClickHouse(ctx context.Context, f *pipelineFlags, log *slog.Logger) (*clickhouse.Sink, error) {
	cfg := clickhouse.Config{Addr: splitList(f.chAddr), Database: f.chDatabase, Table: f.chTable, User: f.chUser, Password: f.chPassword,
		Compression: f.chCompression}
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
