// Command firstseen-bench measures firstseen end to end and side by side
// with the design it replaces, on one machine, with real components: a
// Kafka-protocol broker in its own process (firstseen dev-broker), the
// ClickHouse server, and Debian's redis-server.
//
// Every run has four phases, on one generated workload (default 5M
// records of 1M users over 2 days, with the midnight reordering, late and
// malformed records of `firstseen generate`):
//
//   - firstseen: `firstseen run --until-caught-up` into ClickHouse, in its
//     own process, so that the kernel accounts its CPU and peak RSS; the
//     table is then compared row by row with the oracle;
//   - redis: the seed's design (a Redis hash {uuid: first active ms},
//     pipelined per fetched batch) on the same topic, into another table,
//     compared with the same oracle;
//   - latency: firstseen on a fresh topic fed at half the throughput the
//     firstseen phase reached; latency runs from a record's append to the
//     commit of the checkpoint that wrote its row, split into records that
//     waited for the watermark and records that did not;
//   - scale: a state bootstrapped to 10M users, the workload processed on
//     it by a process stopped halfway and a restarted one: peak RSS, bytes
//     on disk per user, time from restart to first output.
//
// It prints a table of medians over --runs runs, and writes results.json,
// results.md and the charts throughput.png and latency.png to --out.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/firstseen/firstseen/engine/workload"
)

type options struct {
	firstseen          string
	runs               int
	phases             []string
	users              int
	recordsPerUser     float64
	days               int
	partitions         int
	seed               int64
	chAddr             string
	chDatabase         string
	chCompression      string
	redisServer        string
	checkpointInterval time.Duration
	latencyInterval    time.Duration
	latencySeconds     time.Duration
	latencyRate        float64
	scaleUsers         int
	out                string
	workDir            string
	keep               bool
}

var allPhases = []string{"firstseen", "redis", "latency", "scale"}

func main() {
	root := newRootCmd()
	root.AddCommand(newRedisDesignCmd())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "firstseen-bench:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:   "firstseen-bench",
		Short: "Benchmark firstseen end to end against the Redis hash design it replaces",
		Long: `firstseen-bench measures firstseen end to end, and the Redis hash design of the
seed on the same workload in the same run, with real components: a broker
process (firstseen dev-broker), ClickHouse at --clickhouse-addr, and a
redis-server it starts itself. 'make bench' builds everything and runs it.

Each run: firstseen into ClickHouse (records/s, CPU per record, peak RSS,
state bytes per user, rows checked against the oracle); the Redis design
(records/s, Redis memory per user, wrong rows); latency at half firstseen's
throughput (p50/p99, waited and not waited); and a state of --scale-users
users (peak RSS, bytes per user, restart to first output).

Results: a table of medians on standard output, and results.json,
results.md, throughput.png and latency.png in --out.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return runBench(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&o.firstseen, "firstseen", "bin/firstseen", "the firstseen binary to measure (make build writes bin/firstseen)")
	fs.IntVar(&o.runs, "runs", 3, "runs; the table shows medians")
	fs.StringSliceVar(&o.phases, "phases", allPhases, "phases of each run: firstseen, redis, latency, scale")
	fs.IntVar(&o.users, "users", 1_000_000, "users in the workload")
	fs.Float64Var(&o.recordsPerUser, "records-per-user", 5, "mean valid records per user")
	fs.IntVar(&o.days, "days", 2, "days the workload covers")
	fs.IntVar(&o.partitions, "partitions", 4, "partitions of the topics")
	fs.Int64Var(&o.seed, "seed", 1, "workload seed")
	fs.StringVar(&o.chAddr, "clickhouse-addr", "localhost:9000", "ClickHouse native-protocol address")
	fs.StringVar(&o.chDatabase, "clickhouse-database", "firstseen_bench", "ClickHouse database of the benchmark's tables (created; its bench_* tables are emptied)")
	fs.StringVar(&o.chCompression, "clickhouse-compression", "none", "compression of both designs' INSERTs: none (ClickHouse is on this host) or lz4 (firstseen's default, for a network)")
	fs.StringVar(&o.redisServer, "redis-server", "redis-server", "the redis-server binary (Debian package redis-server)")
	fs.DurationVar(&o.checkpointInterval, "checkpoint-interval", 5*time.Second, "firstseen's --checkpoint-interval, and how often the Redis design writes to ClickHouse")
	fs.DurationVar(&o.latencyInterval, "latency-checkpoint-interval", time.Second, "firstseen's --checkpoint-interval in the latency phase: rows become visible at checkpoints, so it bounds latency")
	fs.DurationVar(&o.latencySeconds, "latency-duration", 30*time.Second, "how long the latency phase produces")
	fs.Float64Var(&o.latencyRate, "latency-rate", 0, "records/s of the latency phase (default: half of the firstseen phase's throughput)")
	fs.IntVar(&o.scaleUsers, "scale-users", 10_000_000, "users in the state of the scale phase (bootstrapped beside the workload's)")
	fs.StringVar(&o.out, "out", "bench-out", "directory for results.json, results.md, charts and CPU profiles")
	fs.StringVar(&o.workDir, "work-dir", "", "directory for state, logs and the bootstrap file (default: a temporary directory)")
	fs.BoolVar(&o.keep, "keep", false, "keep the work directory")
	return cmd
}

func (o *options) validate() error {
	var problems []string
	if _, err := os.Stat(o.firstseen); err != nil {
		problems = append(problems, fmt.Sprintf("--firstseen %s: %v (build it with 'make build')", o.firstseen, err))
	}
	if o.chCompression != "none" && o.chCompression != "lz4" {
		problems = append(problems, fmt.Sprintf("--clickhouse-compression %q: want none or lz4", o.chCompression))
	}
	if o.runs < 1 {
		problems = append(problems, "--runs must be at least 1")
	}
	for _, p := range o.phases {
		if !slices.Contains(allPhases, p) {
			problems = append(problems, fmt.Sprintf("--phases: unknown phase %q (want some of %s)", p, strings.Join(allPhases, ", ")))
		}
	}
	if o.has("latency") && !o.has("firstseen") && o.latencyRate <= 0 {
		problems = append(problems, "--phases latency without firstseen needs --latency-rate")
	}
	if o.users < 1 || o.recordsPerUser < 1 || o.days < 1 || o.partitions < 1 {
		problems = append(problems, "--users, --records-per-user, --days and --partitions must be at least 1")
	}
	if o.checkpointInterval < 100*time.Millisecond || o.latencyInterval < 100*time.Millisecond {
		problems = append(problems, "--checkpoint-interval and --latency-checkpoint-interval must be at least 100ms")
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "\n  "))
	}
	return nil
}

func (o *options) has(phase string) bool { return slices.Contains(o.phases, phase) }

// bench is one invocation's shared set-up.
type bench struct {
	o                   options
	out                 io.Writer
	work                string
	brokers             []string
	topic               string
	redis               string // host:port
	start               time.Time
	recs                []workload.Record
	exp                 expected
	scaleCSV            string
	brokerPID, redisPID int
}

func runBench(ctx context.Context, out io.Writer, o options) error {
	b := &bench{o: o, out: out, topic: "activity"}
	var err error
	if b.o.firstseen, err = filepath.Abs(o.firstseen); err != nil {
		return err
	}
	if b.work = o.workDir; b.work == "" {
		if b.work, err = os.MkdirTemp("", "firstseen-bench-"); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(b.work, 0o755); err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(b.work)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	fmt.Fprintf(out, "machine: %s\nwork dir: %s\n", machine(), b.work)

	stopServices, err := b.startServices(ctx)
	defer stopServices()
	if err != nil {
		return err
	}

	// The workload starts at a midnight two days back, so its Kafka
	// timestamps are recent and within any retention.
	now := time.Now().UTC()
	b.start = time.Date(now.Year(), now.Month(), now.Day()-o.days, 0, 0, 0, 0, time.UTC)
	began := time.Now()
	b.recs, err = workload.Generate(workload.Config{Users: o.users, RecordsPerUser: o.recordsPerUser, Days: o.days,
		Start: b.start, Partitions: o.partitions, Seed: o.seed})
	if err != nil {
		return err
	}
	b.exp = newExpected(b.recs, o.partitions)
	fmt.Fprintf(out, "workload: %d records (%d rows, %d users) over %d days from %s, generated with its oracle in %s\n",
		len(b.recs), b.exp.rows, b.exp.users, o.days, b.start.Format("2006-01-02"), time.Since(began).Round(time.Millisecond))
	began = time.Now()
	if err := workload.Produce(ctx, b.brokers, b.topic, b.recs); err != nil {
		return fmt.Errorf("produce the workload: %w", err)
	}
	fmt.Fprintf(out, "produced to %s in %s\n", b.brokers[0], time.Since(began).Round(time.Millisecond))

	var results []runResult
	for run := 1; run <= o.runs; run++ {
		r, err := b.run(ctx, run)
		if err != nil {
			return fmt.Errorf("run %d: %w", run, err)
		}
		results = append(results, r)
	}
	rep := newReport(b, results)
	return rep.write(out, o.out)
}

// startServices starts the broker and redis-server processes.
func (b *bench) startServices(ctx context.Context) (stop func(), err error) {
	var children []*child
	stop = func() {
		for _, c := range children {
			c.signal(syscall.SIGTERM)
			if _, err := c.wait(10 * time.Second); err != nil && !strings.Contains(err.Error(), "signal") {
				fmt.Fprintln(b.out, "stopping:", err)
			}
		}
	}
	port, err := freePort()
	if err != nil {
		return stop, err
	}
	broker, err := startChild("dev-broker", filepath.Join(b.work, "broker.log"), nil, b.o.firstseen,
		"dev-broker", "--port", itoa(port), "--topic", b.topic, "--partitions", itoa(b.o.partitions))
	if err != nil {
		return stop, err
	}
	children = append(children, broker)
	b.brokerPID = broker.cmd.Process.Pid
	b.brokers = []string{fmt.Sprintf("127.0.0.1:%d", port)}
	if err := waitForPort(ctx, b.brokers[0], broker); err != nil {
		return stop, err
	}
	if b.o.has("redis") {
		if port, err = freePort(); err != nil {
			return stop, err
		}
		rs, err := startChild("redis-server", filepath.Join(b.work, "redis.log"), nil, b.o.redisServer,
			"--port", itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", b.work)
		if err != nil {
			return stop, fmt.Errorf("%w (install it: apt-get install redis-server, or make bench)", err)
		}
		children = append(children, rs)
		b.redisPID = rs.cmd.Process.Pid
		b.redis = fmt.Sprintf("127.0.0.1:%d", port)
		if err := waitForPort(ctx, b.redis, rs); err != nil {
			return stop, err
		}
	}
	return stop, nil
}

// runArgs are the arguments of `firstseen run` for topic into table with
// state in dir, logging JSON at debug level (the checkpoint lines).
func (b *bench) runArgs(topic, table, dir string, interval time.Duration) []string {
	return []string{"run", "--brokers", b.brokers[0], "--topic", topic, "--group", filepath.Base(dir),
		"--state-dir", dir, "--clickhouse-addr", b.o.chAddr, "--clickhouse-database", b.o.chDatabase, "--clickhouse-table", table,
		"--clickhouse-compression", b.o.chCompression,
		"--checkpoint-interval", interval.String(), "--log-format", "json", "--log-level", "debug"}
}

type runResult struct {
	Run       int            `json:"run"`
	Firstseen *processResult `json:"firstseen,omitempty"`
	Redis     *redisResult   `json:"redis,omitempty"`
	Latency   *latencyResult `json:"latency,omitempty"`
	Scale     *scaleResult   `json:"scale,omitempty"`
}

// processResult is one process's run over the whole workload.
type processResult struct {
	Records        int64   `json:"records"`
	Seconds        float64 `json:"seconds"`
	RecordsPerSec  float64 `json:"records_per_sec"`
	CPUSeconds     float64 `json:"cpu_seconds"`
	CPUPerMRecords float64 `json:"cpu_seconds_per_million_records"`
	PeakRSSMiB     float64 `json:"peak_rss_mib"`
	StateBytes     int64   `json:"state_bytes,omitempty"`
	BytesPerUser   float64 `json:"state_bytes_per_user,omitempty"`
	// CPU the services spent meanwhile, per record: the broker, ClickHouse
	// and (for the Redis design) redis-server share the machine.
	BrokerCPUPerMRecords     float64 `json:"broker_cpu_seconds_per_million_records"`
	ClickHouseCPUPerMRecords float64 `json:"clickhouse_cpu_seconds_per_million_records"`
	RedisCPUPerMRecords      float64 `json:"redis_cpu_seconds_per_million_records,omitempty"`
	Check                    check   `json:"check"`
}

type redisResult struct {
	processResult
	RedisUsedBytes int64   `json:"redis_used_bytes"`
	RedisUsers     int64   `json:"redis_users"`
	RedisPerUser   float64 `json:"redis_bytes_per_user"`
}

// services is the CPU time the broker, ClickHouse and redis-server have
// used so far.
type services struct{ broker, clickhouse, redis time.Duration }

func (b *bench) services() services {
	s := services{broker: processCPU("", b.brokerPID), clickhouse: processCPU("clickhouse-serv")}
	if b.redisPID != 0 {
		s.redis = processCPU("", b.redisPID)
	}
	return s
}

func (b *bench) processResult(u usage, before, after services) processResult {
	n := int64(len(b.recs))
	perM := func(d time.Duration) float64 { return d.Seconds() / (float64(n) / 1e6) }
	return processResult{Records: n, Seconds: u.Wall.Seconds(), RecordsPerSec: float64(n) / u.Wall.Seconds(),
		CPUSeconds: u.CPU.Seconds(), CPUPerMRecords: perM(u.CPU), PeakRSSMiB: float64(u.MaxRSS) / (1 << 20),
		BrokerCPUPerMRecords:     perM(after.broker - before.broker),
		ClickHouseCPUPerMRecords: perM(after.clickhouse - before.clickhouse),
		RedisCPUPerMRecords:      perM(after.redis - before.redis)}
}

func (b *bench) run(ctx context.Context, run int) (runResult, error) {
	r := runResult{Run: run}
	fmt.Fprintf(b.out, "run %d\n", run)
	if b.o.has("firstseen") {
		sink, err := b.openTable(ctx, "bench_firstseen")
		if err != nil {
			return r, err
		}
		dir := filepath.Join(b.work, fmt.Sprintf("run%d-firstseen", run))
		args := append(b.runArgs(b.topic, "bench_firstseen", dir, b.o.checkpointInterval), "--until-caught-up",
			"--cpu-profile", filepath.Join(b.o.out, fmt.Sprintf("cpu-run%d.prof", run)))
		before := b.services()
		c, err := startChild("firstseen run", dir+".log", nil, b.o.firstseen, args...)
		if err != nil {
			sink.Close()
			return r, err
		}
		u, err := c.wait(time.Hour)
		if err != nil {
			sink.Close()
			return r, err
		}
		res := b.processResult(u, before, b.services())
		if res.StateBytes, err = dirBytes(dir); err != nil {
			sink.Close()
			return r, err
		}
		res.BytesPerUser = float64(res.StateBytes) / float64(b.exp.users)
		res.Check, err = checkTable(ctx, sink, b.exp)
		sink.Close()
		if err != nil {
			return r, err
		}
		r.Firstseen = &res
		fmt.Fprintf(b.out, "  firstseen: %.0f records/s, %.2f CPU s per M records, peak RSS %.0f MiB, %.1f state bytes/user; %s\n",
			res.RecordsPerSec, res.CPUPerMRecords, res.PeakRSSMiB, res.BytesPerUser, res.Check)
	}
	if b.o.has("redis") {
		res, err := b.runRedis(ctx, run)
		if err != nil {
			return r, err
		}
		r.Redis = &res
		fmt.Fprintf(b.out, "  redis design: %.0f records/s, %.2f CPU s per M records, Redis %.1f bytes/user; %s\n",
			res.RecordsPerSec, res.CPUPerMRecords, res.RedisPerUser, res.Check)
	}
	if b.o.has("latency") {
		rate := b.o.latencyRate
		if rate <= 0 {
			rate = r.Firstseen.RecordsPerSec / 2
		}
		res, err := b.runLatency(ctx, run, rate)
		if err != nil {
			return r, err
		}
		r.Latency = &res
		fmt.Fprintf(b.out, "  latency at %.0f records/s: not waited p50 %.0f ms p99 %.0f ms (%d rows); waited p50 %.0f ms p99 %.0f ms (%d rows); %d missing\n",
			rate, res.NotWaited.P50Ms, res.NotWaited.P99Ms, res.NotWaited.Count, res.Waited.P50Ms, res.Waited.P99Ms, res.Waited.Count, res.Missing)
	}
	if b.o.has("scale") {
		res, err := b.runScale(ctx, run)
		if err != nil {
			return r, err
		}
		r.Scale = &res
		fmt.Fprintf(b.out, "  scale: %d users in state, peak RSS %.0f MiB, %.1f bytes/user, restart: ready %.2f s, first output %.2f s; %s\n",
			res.UsersInState, res.PeakRSSMiB, res.BytesPerUser, res.RestartReadySeconds, res.RestartFirstOutput, res.Check)
	}
	return r, nil
}

func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.SplitN(string(b), "\n", 2)[0], "MemTotal: %d kB", &kb)
		mem = fmt.Sprintf(", %.0f GiB", float64(kb)/(1<<20))
	}
	return fmt.Sprintf("%d CPUs (%s)%s", numCPU(), cpu, mem)
}
