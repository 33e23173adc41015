package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/sinks/clickhouse"
	"github.com/firstseen/firstseen/sinks/filesink"
)

type demoOptions struct {
	users      int
	days       int
	partitions int
	seed       int64
	output     string
	keep       bool
}

func newDemoCmd() *cobra.Command {
	var (
		f pipelineFlags
		o demoOptions
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole pipeline in-process on a generated workload, with no services needed",
		Long: `demo starts an in-process Kafka-protocol broker (franz-go's kfake), generates
a realistic activity stream (users over several days, logs reordered around
midnight, a few late and a few malformed records), and runs the real
pipeline over it with state in a temporary Pebble directory.

Rows go to ClickHouse when --clickhouse-addr is given and reachable (into
--clickhouse-table, emptied first), otherwise to a JSON Lines file. It ends
with a per-day table read back from where the rows went.`,
		Args:    noArgs,
		PreRunE: preRun,
		RunE: func(cmd *cobra.Command, _ []string) error {
			op, problems := f.operatorProblems()
			if o.users <= 0 || o.days <= 0 || o.partitions <= 0 {
				problems = append(problems, "--users, --days and --partitions must be above 0")
			}
			if err := problemsError(append(problems, f.sec.checkClickHouse()...)); err != nil {
				return err
			}
			log, ctx, stop, err := f.logAndSignals()
			if err != nil {
				return err
			}
			defer stop()
			return runDemo(ctx, cmd.OutOrStdout(), &f, op, o, log)
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	addConfigFlag(fs)
	fs.IntVar(&o.users, "users", 3000, "users in the generated workload")
	fs.IntVar(&o.days, "days", 2, "days the workload covers (ending at the last midnight)")
	fs.IntVar(&o.partitions, "partitions", 4, "partitions of the demo topic")
	fs.Int64Var(&o.seed, "seed", 1, "workload seed; the same seed gives the same workload")
	fs.StringVar(&o.output, "output", "", "the directory of JSON Lines files (event_date=*/part-*.jsonl) when ClickHouse is not used (default: in the temporary directory)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (state and output) instead of removing it")
	f.addClickHouse(fs, "firstseen_demo")
	fs.Lookup("clickhouse-addr").DefValue = ""
	f.chAddr = ""
	f.addEvent(fs)
	fs.Lookup("checkpoint-interval").DefValue = "1s"
	f.checkpointInterval = time.Second
	f.addLogging(fs)
	f.addProfiling(fs)
	fs.Lookup("log-level").DefValue = "warn"
	f.logLevel = "warn"
	return cmd
}

func runDemo(ctx context.Context, out io.Writer, f *pipelineFlags, op operators.Config, o demoOptions, log *slog.Logger) error {
	dir, err := os.MkdirTemp("", "firstseen-demo-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Fprintf(out, "keeping %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	const topic = "activity"
	broker, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(int32(o.partitions), topic))
	if err != nil {
		return fmt.Errorf("start the in-process Kafka broker: %w", err)
	}
	defer broker.Close()
	f.brokers, f.topic, f.group, f.stateDir = broker.ListenAddrs(), topic, "firstseen-demo", filepath.Join(dir, "state")
	f.shutdownTimeout = 30 * time.Second

	loc := op.Calendar.Location()
	today := time.Now().In(loc)
	start := time.Date(today.Year(), today.Month(), today.Day()-o.days, 0, 0, 0, 0, loc)
	recs, err := workload.Generate(workload.Config{Users: o.users, Days: o.days, Start: start,
		Tolerance: op.Tolerance, Partitions: o.partitions, Seed: o.seed})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "generated %d records of %d users over %d days from %s; producing to the in-process broker at %s\n",
		len(recs), o.users, o.days, start.Format("2006-01-02"), broker.ListenAddrs()[0])
	if err := workload.Produce(ctx, broker.ListenAddrs(), topic, recs); err != nil {
		return err
	}

	var sink sinks.Sink
	var ch *clickhouse.Sink
	jsonl := o.output
	if f.chAddr != "" {
		chCfg := f.clickhouseConfig()
		chCfg.DialTimeout = 3 * time.Second
		ch, err = clickhouse.Open(ctx, chCfg)
		if err != nil {
			fmt.Fprintf(out, "ClickHouse at %s is not usable (%v); writing JSON Lines instead\n", f.chAddr, err)
		} else if err = ch.Conn().Exec(ctx, "TRUNCATE TABLE "+ch.Table()); err != nil {
			ch.Close()
			return fmt.Errorf("empty the demo table %s: %w", ch.Table(), err)
		} else {
			defer ch.Close()
			sink = ch
			fmt.Fprintf(out, "writing to ClickHouse %s, table %s (emptied first)\n", f.chAddr, ch.Table())
		}
	}
	if sink == nil {
		if jsonl == "" {
			jsonl = filepath.Join(dir, "enriched")
		}
		fs, err := filesink.Open(jsonl, filesink.JSONL)
		if err != nil {
			return err
		}
		defer fs.Close()
		sink = fs
		fmt.Fprintf(out, "writing JSON Lines to %s\n", jsonl)
	}

	cfg := f.engineConfig(op, log)
	cfg.Sink, cfg.UntilCaughtUp = sink, true
	if ch != nil {
		cfg.IsRetryable = clickhouse.IsRetryable
	}
	st, err := engine.Run(ctx, cfg)
	if err != nil {
		return err
	}
	days, err := readBack(ctx, ch, jsonl, sink, loc)
	if err != nil {
		return err
	}
	if err := countDeadLetters(ctx, broker.ListenAddrs(), topic+".dlq", loc, days); err != nil {
		return err
	}
	printDays(out, days, st)
	return nil
}

type dayStats struct {
	records, late, dead int64
	users, newUsers     map[string]struct{}
}

func dayOf(days map[string]*dayStats, d string) *dayStats {
	s := days[d]
	if s == nil {
		s = &dayStats{users: map[string]struct{}{}, newUsers: map[string]struct{}{}}
		days[d] = s
	}
	return s
}

// readBack reads the per-day figures from where the rows went.
func readBack(ctx context.Context, ch *clickhouse.Sink, jsonl string, sink sinks.Sink, loc *time.Location) (map[string]*dayStats, error) {
	days := map[string]*dayStats{}
	if ch != nil {
		rows, err := ch.Conn().Query(ctx, "SELECT toString(event_date), uuid, is_new, late FROM "+ch.Table())
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		for rows.Next() {
			var d, u string
			var isNew, late uint8
			if err := rows.Scan(&d, &u, &isNew, &late); err != nil {
				return nil, err
			}
			addRow(dayOf(days, d), u, isNew == 1, late == 1)
		}
		return days, rows.Err()
	}
	if err := sink.Close(); err != nil {
		return nil, err
	}
	lines, err := filesink.ReadDir(jsonl)
	if err != nil {
		return nil, err
	}
	for _, l := range lines {
		addRow(dayOf(days, l.EventDate), l.UUID, l.IsNew, l.Late)
	}
	return days, nil
}

func addRow(s *dayStats, uuid string, isNew, late bool) {
	s.records++
	s.users[uuid] = struct{}{}
	if isNew {
		s.newUsers[uuid] = struct{}{}
	}
	if late {
		s.late++
	}
}

// countDeadLetters reads the dead-letter topic and counts records by the
// day of their Kafka timestamp.
func countDeadLetters(ctx context.Context, brokers []string, topic string, loc *time.Location, days map[string]*dayStats) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return err
	}
	defer cl.Close()
	for {
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		fs := cl.PollFetches(pctx)
		cancel()
		n := 0
		fs.EachRecord(func(r *kgo.Record) {
			dayOf(days, r.Timestamp.In(loc).Format("2006-01-02")).dead++
			n++
		})
		if n == 0 {
			return ctx.Err()
		}
	}
}

func printDays(out io.Writer, days map[string]*dayStats, st engine.Stats) {
	keys := make([]string, 0, len(days))
	for k := range days {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "day\trecords\tusers\tnew users\tlate\tdead-lettered\t")
	tot := dayStats{users: map[string]struct{}{}, newUsers: map[string]struct{}{}}
	for _, k := range keys {
		s := days[k]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t\n", k, s.records, len(s.users), len(s.newUsers), s.late, s.dead)
		tot.records, tot.late, tot.dead = tot.records+s.records, tot.late+s.late, tot.dead+s.dead
		for u := range s.users {
			tot.users[u] = struct{}{}
		}
		for u := range s.newUsers {
			tot.newUsers[u] = struct{}{}
		}
	}
	fmt.Fprintf(tw, "total\t%d\t%d\t%d\t%d\t%d\t\n", tot.records, len(tot.users), len(tot.newUsers), tot.late, tot.dead)
	tw.Flush()
	rate := float64(st.Records) / st.Elapsed.Seconds()
	fmt.Fprintf(out, "\nprocessed %d records in %s: %.0f records/s (%d checkpoints, %d still held)\n",
		st.Records, st.Elapsed.Round(time.Millisecond), rate, st.Checkpoints, st.Held)
}
