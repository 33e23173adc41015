package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine/workload"
)

type generateOptions struct {
	users          int
	days           int
	newShare       float64
	skew           float64
	recordsPerUser float64
	lateShare      float64
	malformedShare float64
	partitions     int
	seed           int64
	start          string
	output         string
	oracle         string
}

func newGenerateCmd() *cobra.Command {
	var (
		f         pipelineFlags
		o         generateOptions
		onCmdLine map[string]bool
	)
	cmd := &cobra.Command{
		Use:   "generate (--topic TOPIC | --output FILE) [flags]",
		Short: "Write a realistic synthetic activity workload to the topic or to a file",
		Long: `generate makes a deterministic synthetic workload of activity logs, the kind
demo and the tests run on, and produces it to --topic or writes it to
--output. The same flags, --seed and --start included, give the same bytes.

The workload: --users users with random version-4 uuids, Zipf-skewed
activity (--skew; --records-per-user on average), first active on the first
day or, for --new-share of them, on a later day of the --days UTC days from
--start; a spike of activity around every midnight, with records from the
last minutes of a day arriving after records of the next; --late-share of
the valid records delivered more than --tolerance late, and
--malformed-share of all records malformed in every way run refuses (not
JSON, not an object, no or bad uuid, no or bad event_time, too far in the
future). Values always use the members uuid and event_time.

To the topic (--topic, --brokers): each record goes to its partition with
its simulated arrival time as the Kafka timestamp, in arrival order, with
the idempotent producer. A missing topic is created with --partitions; an
existing one keeps its partition count: keyed records then go to the
partition Kafka's default partitioner picks for their key among its
partitions, unkeyed ones to their partition modulo the count. Kafka removes
records by their timestamp: with a --start older than the topic's
retention.ms the broker may delete them soon after they are written.

To a file (--output FILE, "-" for standard output): JSON Lines, one record
a line with its partition, key, Kafka timestamp, kind and value (the format
'firstseen produce' reads back, to the same partitions and offsets).

--oracle FILE writes the expected result beside it: one JSON line per
record, in produce order, with partition, offset, canonical uuid,
event_time_ms, is_new, late, first_seen_ms and reason ("ok", or why run
dead-letters it), computed by brute force with --tolerance, --max-future,
--timezone, --uuid-field and --time-field. Offsets count from 0: they
assume the topic was empty before.

A summary of the workload (records by kind, records and users by day) ends
the output (on standard error when a file goes to standard output).`,
		Example: `  firstseen generate --brokers localhost:9092 --topic activity --users 100000 --oracle expected.jsonl
  firstseen generate --users 1000 --days 3 --start 2026-01-05 --output workload.jsonl
  firstseen generate --users 1000 --output - | gzip > workload.jsonl.gz`,
		Args: noArgs,
		PreRunE: func(cmd *cobra.Command, args []string) error {
			onCmdLine = map[string]bool{}
			cmd.Flags().Visit(func(fl *pflag.Flag) { onCmdLine[fl.Name] = true })
			return preRun(cmd, args)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runGenerate(cmd, &f, o, onCmdLine)
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.IntVar(&o.users, "users", 100000, "distinct users")
	fs.IntVar(&o.days, "days", 2, "calendar days (UTC) the event times cover")
	fs.Float64Var(&o.newShare, "new-share", 0.3, "share of users first active after the first day (0 to 1)")
	fs.Float64Var(&o.skew, "skew", 1.1, "Zipf exponent of per-user activity; 0 makes all users equally active")
	fs.Float64Var(&o.recordsPerUser, "records-per-user", 5, "mean number of valid records per user; at least 1 gives every user a record")
	fs.Float64Var(&o.lateShare, "late-share", 0.002, "share of valid records delivered late on purpose (0 to 1)")
	fs.Float64Var(&o.malformedShare, "malformed-share", 0.003, "share of all records that are malformed (0 to below 1)")
	fs.IntVar(&o.partitions, "partitions", 4, "partitions: the file's partition field, and of the topic when it is created (an existing topic keeps its count)")
	fs.Int64Var(&o.seed, "seed", 1, "workload seed; the same flags and seed give the same workload")
	fs.StringVar(&o.start, "start", "", "first day, YYYY-MM-DD (UTC) (default: --days days before today, UTC, so the window ends at today's midnight)")
	fs.StringVar(&o.output, "output", "", `write the workload to this JSON Lines file ("-": standard output) instead of producing it to --topic`)
	fs.StringVar(&o.oracle, "oracle", "", `also write the expected result, one JSON line per record, to this file ("-": standard output); offsets assume an empty topic`)
	addConfigFlag(fs)
	f.addKafka(fs)
	f.addEvent(fs)
	hideFlags(fs, "group", "dlq-topic", "idle-timeout", "checkpoint-interval")
	fs.Lookup("topic").Usage = "Kafka topic to produce the workload to (created if missing), unless --output is given"
	fs.Lookup("tolerance").Usage = "run's out-of-order tolerance: late records arrive further behind than this, and --oracle decides with it"
	fs.Lookup("max-future").Usage = "run's --max-future, for --oracle"
	fs.Lookup("timezone").Usage = "run's --timezone (IANA name), which defines the calendar days of is_new in --oracle"
	fs.Lookup("uuid-field").Usage = "run's --uuid-field, for --oracle (generated values always use uuid)"
	fs.Lookup("time-field").Usage = "run's --time-field, for --oracle (generated values always use event_time)"
	return cmd
}

// generateConfig checks the workload flags and returns the configuration.
func (o *generateOptions) config(tolerance time.Duration, now time.Time) (workload.Config, error) {
	var problems []string
	share := func(name string, v float64, below1 bool) {
		if math.IsNaN(v) || v < 0 || v > 1 || (below1 && v == 1) {
			limit := "at most 1"
			if below1 {
				limit = "below 1"
			}
			problems = append(problems, fmt.Sprintf("--%s %v must be at least 0 and %s", name, v, limit))
		}
	}
	if o.users < 1 {
		problems = append(problems, fmt.Sprintf("--users %d must be at least 1", o.users))
	}
	if o.days < 1 || o.days > 36600 {
		problems = append(problems, fmt.Sprintf("--days %d must be between 1 and 36600", o.days))
	}
	share("new-share", o.newShare, false)
	share("late-share", o.lateShare, false)
	share("malformed-share", o.malformedShare, true)
	if math.IsNaN(o.skew) || math.IsInf(o.skew, 0) || o.skew < 0 {
		problems = append(problems, fmt.Sprintf("--skew %v must be 0 or more", o.skew))
	}
	if !(o.recordsPerUser > 0) || math.IsInf(o.recordsPerUser, 0) {
		problems = append(problems, fmt.Sprintf("--records-per-user %v must be above 0", o.recordsPerUser))
	}
	if o.partitions < 1 || o.partitions > 1<<20 {
		problems = append(problems, fmt.Sprintf("--partitions %d must be between 1 and %d", o.partitions, 1<<20))
	}
	start := now.UTC().Truncate(24*time.Hour).AddDate(0, 0, -o.days)
	if o.start != "" {
		t, err := time.Parse("2006-01-02", o.start)
		if err != nil {
			problems = append(problems, fmt.Sprintf("--start %q is not a date like 2026-01-05", o.start))
		}
		start = t
	}
	if len(problems) > 0 {
		return workload.Config{}, usageError{errors.New(strings.Join(problems, "\n  "))}
	}
	// In workload.Config a zero means "the default" and a negative value
	// "none"; on the command line 0 means none.
	none := func(v float64) float64 {
		if v == 0 {
			return -1
		}
		return v
	}
	return workload.Config{
		Users: o.users, Days: o.days, Start: start, RecordsPerUser: o.recordsPerUser,
		Skew: none(o.skew), NewShare: none(o.newShare), Tolerance: tolerance,
		LateShare: none(o.lateShare), MalformedShare: none(o.malformedShare),
		Partitions: o.partitions, Seed: o.seed,
	}, nil
}

func runGenerate(cmd *cobra.Command, f *pipelineFlags, o generateOptions, onCmdLine map[string]bool) error {
	op, err := f.operatorConfig()
	if err != nil {
		return err
	}
	// --output or --topic; one given on the command line wins over the
	// other from the environment.
	switch {
	case o.output != "" && f.topic != "" && onCmdLine["output"] == onCmdLine["topic"]:
		return usageError{errors.New("give --output (a file) or --topic (produce to Kafka), not both")}
	case o.output != "" && f.topic != "" && onCmdLine["topic"]:
		o.output = ""
	case o.output == "" && f.topic == "":
		return usageError{errors.New("give --topic to produce the workload to Kafka, or --output FILE to write it to a file")}
	}
	if o.output != "" && o.output == o.oracle {
		return usageError{fmt.Errorf("--output and --oracle must differ, both are %q", o.output)}
	}
	if o.output == "" {
		if err := f.checkBrokers(); err != nil {
			return err
		}
	}
	cfg, err := o.config(f.tolerance, time.Now())
	if err != nil {
		return err
	}
	recs, err := workload.Generate(cfg)
	if err != nil {
		return usageError{err}
	}

	summary := cmd.OutOrStdout()
	if o.output == "-" || o.oracle == "-" {
		summary = cmd.ErrOrStderr()
	}
	ctx, stop := interruptContext()
	defer stop()
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))

	var s *sender
	partitions := cfg.Partitions
	if o.output == "" {
		if err := f.checkKafkaAccess(ctx, log); err != nil {
			return err
		}
		if s, err = newSender(f.brokers, f.sec.kafkaOpts, f.topic, kgo.ManualPartitioner(), 10000, log); err != nil {
			return err
		}
		defer s.close()
		if partitions, err = s.partitions(ctx, true, cfg.Partitions); err != nil {
			return err
		}
		if partitions != cfg.Partitions {
			fmt.Fprintf(summary, "topic %q has %d partitions, not %d: records go to the partition of their key among %d\n",
				f.topic, partitions, cfg.Partitions, partitions)
			for i := range recs {
				r := &recs[i]
				r.Partition = placePartition(r.Key, r.Value, r.Partition, partitions)
			}
		}
		if o.oracle != "" {
			if err := warnNotEmpty(ctx, s, summary); err != nil {
				return err
			}
		}
	}
	if o.oracle != "" {
		want := workload.Oracle(recs, op, nil)
		if err := writeOut(cmd, o.oracle, func(w io.Writer) error { return workload.WriteOracle(w, want) }); err != nil {
			return fmt.Errorf("--oracle: %w", err)
		}
	}

	start := time.Now()
	var produced int64
	if o.output != "" {
		if err := writeOut(cmd, o.output, func(w io.Writer) error { return workload.WriteJSONL(w, recs) }); err != nil {
			return fmt.Errorf("--output: %w", err)
		}
	} else {
		produced, err = produceWorkload(ctx, s, recs, cmd.ErrOrStderr(), log)
	}
	printWorkloadSummary(summary, cfg, recs)
	switch {
	case o.output == "-":
		fmt.Fprintf(summary, "wrote %d records to standard output (JSON Lines)\n", len(recs))
	case o.output != "":
		fmt.Fprintf(summary, "wrote %d records to %s (JSON Lines)\n", len(recs), o.output)
	default:
		secs := max(time.Since(start).Seconds(), 1e-9)
		fmt.Fprintf(summary, "produced %d of %d records to topic %q (%d partitions) at %s in %s, %.0f records/s\n",
			produced, len(recs), f.topic, partitions, strings.Join(f.brokers, ","),
			time.Since(start).Round(time.Millisecond), float64(produced)/secs)
	}
	if o.oracle != "" {
		where := o.oracle
		if where == "-" {
			where = "standard output"
		}
		fmt.Fprintf(summary, "wrote the expected result to %s (tolerance %s, max-future %s, timezone %s; offsets assume the topic was empty)\n",
			where, f.tolerance, f.maxFuture, f.timezone)
	}
	return err
}

// warnNotEmpty says so when the topic already holds records: the oracle's
// offsets will not match.
func warnNotEmpty(ctx context.Context, s *sender, w io.Writer) error {
	adm := kadm.NewClient(s.cl)
	mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ends, err := adm.ListEndOffsets(mctx, s.topic)
	if err != nil {
		return fmt.Errorf("kafka topic %q: list end offsets: %w", s.topic, err)
	}
	var held int64
	ends.Each(func(o kadm.ListedOffset) { held += max(o.Offset, 0) })
	if held > 0 {
		fmt.Fprintf(w, "warning: topic %q already holds %d records: the --oracle offsets, which count from 0, will not match it\n", s.topic, held)
	}
	return nil
}

// writeOut writes a file ("-": the command's standard output) with write.
// A file that cannot be completed is removed.
func writeOut(cmd *cobra.Command, path string, write func(io.Writer) error) error {
	if path == "-" {
		return write(cmd.OutOrStdout())
	}
	file, err := os.Create(path)
	if err != nil {
		return err
	}
	err = write(file)
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// produceWorkload produces recs, each to its partition with its timestamp,
// in order, and returns how many were acknowledged.
func produceWorkload(ctx context.Context, s *sender, recs []workload.Record, progressOut io.Writer, log *slog.Logger) (int64, error) {
	prog := newRecordProgress(progressOut, log, "producing the workload", int64(len(recs)))
	defer prog.Finish()
	var block []kgo.Record
	sent := 0
	var err error
	for i := range recs {
		if ctx.Err() != nil {
			break
		}
		if len(block) == 0 {
			block = make([]kgo.Record, 1024)
		}
		r, k := &recs[i], &block[0]
		block = block[1:]
		k.Partition, k.Key, k.Value, k.Timestamp = r.Partition, r.Key, r.Value, r.Timestamp
		if err = s.send(k); err != nil {
			break
		}
		if sent++; sent%1024 == 0 {
			prog.Add(1024)
		}
	}
	prog.Add(int64(sent % 1024))
	ferr := s.flush()
	acked := s.acked.Load()
	switch {
	case ferr != nil:
		return acked, fmt.Errorf("producing to %q failed after %d records were acknowledged: %w", s.topic, acked, ferr)
	case err != nil:
		return acked, fmt.Errorf("producing to %q failed after %d records were acknowledged: %w", s.topic, acked, err)
	case sent < len(recs):
		return acked, fmt.Errorf("interrupted: the first %d of %d records were produced", acked, len(recs))
	}
	return acked, nil
}

// newRecordProgress is newProgress counting records, not bytes.
func newRecordProgress(w io.Writer, log *slog.Logger, what string, total int64) *progress {
	p := newProgress(w, log, what, total)
	if p.bar != nil {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(what),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("records"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	return p
}

// printWorkloadSummary prints the records by kind, and records and users
// by day: users active on the day, and new users, whose first valid record
// is on the day (days in UTC, the generator's).
func printWorkloadSummary(w io.Writer, cfg workload.Config, recs []workload.Record) {
	type day struct{ records, valid, late, malformed, users, newUsers int }
	days := make([]day, cfg.Days+1) // + 1 for safety: nothing falls after the window
	var kinds []int
	ids := map[string]uint32{}
	var first []int // by user id: the first day with a valid record
	seen := map[uint64]struct{}{}
	for i := range recs {
		r := &recs[i]
		for int(r.Kind) >= len(kinds) {
			kinds = append(kinds, 0)
		}
		kinds[r.Kind]++
		di := min(max(r.Day, 0), cfg.Days)
		d := &days[di]
		d.records++
		switch {
		case r.Kind.Malformed():
			d.malformed++
			continue
		case r.Kind == workload.Late:
			d.late++
		default:
			d.valid++
		}
		id, ok := ids[string(r.Key)]
		if !ok {
			id = uint32(len(first))
			ids[string(r.Key)] = id
			first = append(first, di)
		}
		first[id] = min(first[id], di)
		if k := uint64(id)<<32 | uint64(di); !has(seen, k) {
			seen[k] = struct{}{}
			d.users++
		}
	}
	for _, di := range first {
		days[di].newUsers++
	}

	fmt.Fprintf(w, "generated %d records of %d users over %d days from %s (seed %d, %d partitions)\n\n",
		len(recs), len(first), cfg.Days, cfg.Start.Format("2006-01-02"), cfg.Seed, cfg.Partitions)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "kind\trecords\tshare\t")
	for k, n := range kinds {
		if n > 0 {
			fmt.Fprintf(tw, "%s\t%d\t%.2f%%\t\n", workload.Kind(k), n, 100*float64(n)/float64(len(recs)))
		}
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(tw, "day (UTC)\trecords\tvalid\tlate\tmalformed\tusers\tnew users\t")
	var tot day
	for di, d := range days {
		if di == cfg.Days && d.records == 0 {
			break
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", cfg.Start.AddDate(0, 0, di).Format("2006-01-02"),
			d.records, d.valid, d.late, d.malformed, d.users, d.newUsers)
		tot.records, tot.valid, tot.late, tot.malformed = tot.records+d.records, tot.valid+d.valid, tot.late+d.late, tot.malformed+d.malformed
	}
	fmt.Fprintf(tw, "total\t%d\t%d\t%d\t%d\t%d\t%d\t\n", tot.records, tot.valid, tot.late, tot.malformed, len(first), len(first))
	tw.Flush()
	fmt.Fprintln(w)
}

func has[K comparable, V any](m map[K]V, k K) bool {
	_, ok := m[k]
	return ok
}
