package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks/clickhouse"
)

const envPrefix = "FIRSTSEEN_"

// envName is the environment variable that can set a flag.
func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyEnv sets every flag not given on the command line from its
// environment variable, if set, and returns every problem. The refused
// password flags are skipped: their variables are the passwords themselves.
func applyEnv(fs *pflag.FlagSet) []string {
	var problems []string
	fs.VisitAll(func(f *pflag.Flag) {
		if _, refused := f.Value.(*refusedPassword); refused || f.Changed {
			return
		}
		v, ok := os.LookupEnv(envName(f.Name))
		if !ok {
			return
		}
		if e := setFlag(fs, f, v); e != nil {
			problems = append(problems, fmt.Sprintf("invalid %s=%q (for --%s): %v", envName(f.Name), shown(f.Name, v), f.Name, maskValue(f.Name, v, e)))
			return
		}
		setSource(f, sourceEnv)
	})
	return problems
}

// isSecret reports whether a flag's value is a secret, never to be shown.
func isSecret(name string) bool { return strings.HasSuffix(name, "password") }

// shown is a flag's value as it may be printed.
func shown(name, v string) string {
	if isSecret(name) {
		return "***"
	}
	return v
}

// maskValue removes a secret flag's value from err's text (pflag's errors
// repeat the value).
func maskValue(name, v string, err error) error {
	if !isSecret(name) || v == "" || !strings.Contains(err.Error(), v) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), v, "***"))
}

// pipelineFlags are the flags of the processor, shared by run and demo.
type pipelineFlags struct {
	brokersList        string
	brokers            []string
	topic, group       string
	stateDir           string
	dlqTopic           string
	chAddr             string
	chDatabase         string
	chTable            string
	chUser             string
	chCompression      clickhouse.Compression
	timezone           string
	tolerance          time.Duration
	idleTimeout        time.Duration
	maxFuture          time.Duration
	checkpointInterval time.Duration
	shutdownTimeout    time.Duration
	uuidField          string
	timeField          string
	logLevel           string
	logFormat          string
	cpuProfile         string
	bufferMiB          int
	memoryLimitMiB     int
	instanceID         string
	changelogTopic     string
	repartition        bool
	repartitionTopic   string
	metricsAddr        string
	pprof              bool
	summaryInterval    time.Duration
	sessionTimeout     time.Duration
	sec                securityFlags
}

// addKafka registers the Kafka flags. Every command that touches the topic
// or the state takes the same names, so one set of flags serves them all.
func (f *pipelineFlags) addKafka(fs *pflag.FlagSet) {
	fs.StringVar(&f.brokersList, "brokers", "localhost:9092", "Kafka bootstrap brokers, comma-separated host:port")
	fs.StringVar(&f.topic, "topic", "", "Kafka topic of the activity logs (required)")
	fs.StringVar(&f.group, "group", "firstseen", "consumer group: the processes with the same group share the topic's partitions (and its changelog, <group>-state)")
	fs.StringVar(&f.dlqTopic, "dlq-topic", "", "dead-letter topic for malformed records (default <topic>.dlq)")
	f.sec.addKafka(fs)
}

// addState registers --state-dir.
// addGroup registers the flags of a processor that shares its topic with
// other replicas.
func (f *pipelineFlags) addGroup(fs *pflag.FlagSet) {
	fs.StringVar(&f.instanceID, "instance-id", "", "static group membership (KIP-345): a stable name for this replica, such as its StatefulSet pod name; a restart within the session timeout then keeps its partitions (empty: dynamic membership)")
	fs.DurationVar(&f.sessionTimeout, "session-timeout", 45*time.Second, "how long the group waits for a replica that stopped heartbeating before its partitions move to the others; a replica restarted within it (with --instance-id) keeps its partitions")
	fs.StringVar(&f.changelogTopic, "changelog-topic", "", "compacted topic every partition's state changes are written to and restored from (default <group>-state)")
	fs.BoolVar(&f.repartition, "repartition", false, "re-key the input by the canonical uuid into --repartition-topic first (exactly once, with Kafka transactions), for producers that do not key records by the uuid")
	fs.StringVar(&f.repartitionTopic, "repartition-topic", "", "with --repartition: the internal topic of re-keyed records (default <group>-repartition)")
	fs.StringVar(&f.metricsAddr, "metrics-addr", ":9090", "address of the HTTP listener for /metrics (Prometheus), /healthz and /readyz (0: none); 'firstseen status' reads it")
	fs.BoolVar(&f.pprof, "pprof", false, "also serve the Go profiler on --metrics-addr under /debug/pprof/ (CPU and heap profiles, goroutine dumps)")
}

func (f *pipelineFlags) addState(fs *pflag.FlagSet) {
	fs.StringVar(&f.stateDir, "state-dir", "firstseen-state", "directory of the local state (Pebble): first-seen times, offsets, watermarks, held records")
}

func (f *pipelineFlags) addEvent(fs *pflag.FlagSet) {
	fs.StringVar(&f.timezone, "timezone", "UTC", "IANA time zone that defines calendar days for is_new and event_date (e.g. Asia/Shanghai)")
	fs.DurationVar(&f.tolerance, "tolerance", 10*time.Minute, "how far out of event-time order a record may arrive and still be on time")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", time.Minute, "after this long with no new record, a caught-up partition's watermark follows the wall clock")
	fs.DurationVar(&f.maxFuture, "max-future", time.Hour, "records stamped further than this ahead of their Kafka timestamp go to the dead-letter topic")
	fs.DurationVar(&f.checkpointInterval, "checkpoint-interval", 5*time.Second, "how often rows are flushed to the sink and state, offsets and watermarks are checkpointed")
	fs.StringVar(&f.uuidField, "uuid-field", "uuid", "JSON member holding the user's uuid")
	fs.StringVar(&f.timeField, "time-field", "event_time", "JSON member holding the event time (epoch milliseconds or RFC 3339)")
}

func (f *pipelineFlags) addClickHouse(fs *pflag.FlagSet, table string) {
	fs.StringVar(&f.chAddr, "clickhouse-addr", "localhost:9000", "ClickHouse native-protocol address, host:port; several comma-separated addresses of the same server are tried in turn (failover)")
	fs.StringVar(&f.chDatabase, "clickhouse-database", "default", "ClickHouse database; created if missing")
	fs.StringVar(&f.chTable, "clickhouse-table", table, "ClickHouse table for enriched rows; created if missing")
	fs.StringVar(&f.chUser, "clickhouse-user", "default", "ClickHouse user")
	f.sec.addClickHouse(fs)
	f.chCompression = clickhouse.CompressionLZ4
	fs.Var(&f.chCompression, "clickhouse-compression", "compression of the rows sent to ClickHouse: lz4 (fewer bytes on the wire, right across a network) or none "+
		"(saves the CPU LZ4 costs, the largest part of the sink's work, when ClickHouse is on the same host or a fast link)")
}

func (f *pipelineFlags) addLogging(fs *pflag.FlagSet) {
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "auto", "log format: text, json, or auto (text on a terminal, json otherwise)")
}

// addSummary registers --summary-interval, for the long-running commands.
func (f *pipelineFlags) addSummary(fs *pflag.FlagSet) {
	fs.DurationVar(&f.summaryInterval, "summary-interval", time.Minute, "how often an info line sums up the rates, lag, held records and watermark (one line per checkpoint comes at --log-level debug)")
}

// addMemory registers the memory flags of run.
func (f *pipelineFlags) addMemory(fs *pflag.FlagSet) {
	fs.IntVar(&f.bufferMiB, "buffer-mib", engine.DefaultBufferBytes>>20, "MiB of rows buffered for the next checkpoint, over all partitions; when full, the checkpoint comes early")
	fs.IntVar(&f.memoryLimitMiB, "memory-limit-mib", defaultMemoryLimitMiB, "soft limit of the Go heap in MiB (the GC works harder near it; 0: none); the environment variable GOMEMLIMIT takes precedence")
}

// defaultMemoryLimitMiB keeps a processor with default settings under 512
// MiB of RSS (see docs/performance.md): buffers, user caches and filter,
// Kafka fetches and Pebble's cache and memtables live in about 300 MiB;
// without a limit the GC lets the heap grow to twice that.
const defaultMemoryLimitMiB = 400

// applyMemoryLimit sets the Go heap's soft limit from --memory-limit-mib
// unless GOMEMLIMIT is set.
func (f *pipelineFlags) applyMemoryLimit() error {
	if f.memoryLimitMiB < 0 {
		return usageError{fmt.Errorf("--memory-limit-mib %d must be 0 (none) or above", f.memoryLimitMiB)}
	}
	if f.memoryLimitMiB > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(int64(f.memoryLimitMiB) << 20)
	}
	return nil
}

// addProfiling registers --cpu-profile, for the commands whose work
// logAndSignals brackets.
func (f *pipelineFlags) addProfiling(fs *pflag.FlagSet) {
	fs.StringVar(&f.cpuProfile, "cpu-profile", "", "write a CPU profile of the whole command to this file (read it with 'go tool pprof')")
}

// operatorConfig checks the event-time flags and returns the operator
// config, or a usage error with every problem.
func (f *pipelineFlags) operatorConfig() (operators.Config, error) {
	op, problems := f.operatorProblems()
	return op, problemsError(problems)
}

// operatorProblems checks the event-time flags and returns the operator
// config and every problem.
func (f *pipelineFlags) operatorProblems() (operators.Config, []string) {
	var problems []string
	loc, err := time.LoadLocation(f.timezone)
	if err != nil || f.timezone == "" || strings.EqualFold(f.timezone, "local") {
		problems = append(problems, fmt.Sprintf("--timezone %q is not an IANA time zone name (like UTC or Europe/Berlin)", f.timezone))
	}
	if f.tolerance <= 0 || f.tolerance >= 24*time.Hour {
		problems = append(problems, fmt.Sprintf("--tolerance %s must be above 0 and below 24h", f.tolerance))
	}
	if f.idleTimeout <= 0 {
		problems = append(problems, fmt.Sprintf("--idle-timeout %s must be above 0", f.idleTimeout))
	}
	if f.maxFuture <= 0 {
		problems = append(problems, fmt.Sprintf("--max-future %s must be above 0", f.maxFuture))
	}
	if f.checkpointInterval < 100*time.Millisecond {
		problems = append(problems, fmt.Sprintf("--checkpoint-interval %s must be at least 100ms", f.checkpointInterval))
	}
	if f.uuidField == "" || f.timeField == "" || f.uuidField == f.timeField {
		problems = append(problems, "--uuid-field and --time-field must be set and differ")
	}
	if len(problems) > 0 {
		return operators.Config{}, problems
	}
	return operators.Config{
		Tolerance: f.tolerance, MaxFuture: f.maxFuture, IdleTimeout: f.idleTimeout,
		Calendar: operators.NewCalendar(loc), UUIDField: f.uuidField, TimeField: f.timeField,
	}, nil
}

// problemsError is a usage error listing problems, or nil when there are
// none.
func problemsError(problems []string) error {
	switch len(problems) {
	case 0:
		return nil
	case 1:
		return usageError{errors.New(problems[0])}
	}
	return usageError{fmt.Errorf("%d problems with the configuration:\n  %s", len(problems), strings.Join(problems, "\n  "))}
}

// checkKafka checks the Kafka flags of a command that needs the topic:
// --topic is required (topicIs, in the error, says what it holds),
// --brokers is parsed into f.brokers, and the security flags build the
// client options.
func (f *pipelineFlags) checkKafka(topicIs string) error {
	return problemsError(f.kafkaProblems(topicIs))
}

// kafkaProblems is checkKafka's list of every problem.
func (f *pipelineFlags) kafkaProblems(topicIs string) []string {
	var problems []string
	if f.topic == "" {
		problems = append(problems, "--topic is required: "+topicIs)
	}
	return append(problems, f.brokerProblems()...)
}

// checkBrokers parses --brokers into f.brokers and checks its addresses,
// and the Kafka security flags.
func (f *pipelineFlags) checkBrokers() error {
	return problemsError(f.brokerProblems())
}

// brokerProblems is checkBrokers' list of every problem.
func (f *pipelineFlags) brokerProblems() []string {
	var problems []string
	f.brokers = splitList(f.brokersList)
	if err := checkHostPorts("brokers", f.brokers); err != nil {
		problems = append(problems, err.Error())
	}
	return append(problems, f.sec.checkKafka()...)
}

// logAndSignals returns the logger of --log-level and --log-format, and a
// context that the first SIGTERM or SIGINT cancels (see signalContext);
// stop ends the signal handling.
// With --cpu-profile, profiling starts here and stop ends it.
func (f *pipelineFlags) logAndSignals() (log *slog.Logger, ctx context.Context, stop func(), err error) {
	if log, err = f.logger(); err != nil {
		return nil, nil, nil, err
	}
	endProfile := func() {}
	if f.cpuProfile != "" {
		pf, err := os.Create(f.cpuProfile)
		if err != nil {
			return nil, nil, nil, usageError{fmt.Errorf("--cpu-profile: %w", err)}
		}
		if err := pprof.StartCPUProfile(pf); err != nil {
			pf.Close()
			return nil, nil, nil, fmt.Errorf("--cpu-profile: %w", err)
		}
		endProfile = func() {
			pprof.StopCPUProfile()
			if err := pf.Close(); err != nil {
				log.Warn("writing the CPU profile failed", "file", f.cpuProfile, "err", err)
			}
		}
	}
	ctx, stopSignals := signalContext(log)
	return log, ctx, func() { stopSignals(); endProfile() }, nil
}

func checkHostPorts(flag string, addrs []string) error {
	if len(addrs) == 0 {
		return usageError{fmt.Errorf("--%s is empty: give host:port", flag)}
	}
	for _, a := range addrs {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			return usageError{fmt.Errorf("--%s: %q is not host:port", flag, a)}
		}
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// loggingProblems checks --log-level and --log-format.
func (f *pipelineFlags) loggingProblems() []string {
	var problems []string
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		problems = append(problems, fmt.Sprintf("--log-level %q: want debug, info, warn or error", f.logLevel))
	}
	switch f.logFormat {
	case "json", "text", "auto":
	default:
		problems = append(problems, fmt.Sprintf("--log-format %q: want text, json or auto", f.logFormat))
	}
	return problems
}

func (f *pipelineFlags) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level %q: want debug, info, warn or error", f.logLevel)}
	}
	opts := &slog.HandlerOptions{Level: level}
	switch f.logFormat {
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "auto":
		if term.IsTerminal(int(os.Stderr.Fd())) {
			return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
		}
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, usageError{fmt.Errorf("--log-format %q: want text, json or auto", f.logFormat)}
}

// engineConfig builds the engine configuration shared by run and demo.
func (f *pipelineFlags) engineConfig(op operators.Config, log *slog.Logger) engine.Config {
	return engine.Config{
		Brokers: f.brokers, Topic: f.topic, Group: f.group, DLQTopic: f.dlqTopic, StateDir: f.stateDir,
		InstanceID: f.instanceID, ChangelogTopic: f.changelogTopic, SessionTimeout: f.sessionTimeout,
		Operator: op, CheckpointInterval: f.checkpointInterval, BufferBytes: f.bufferMiB << 20,
		ShutdownTimeout: f.shutdownTimeout, Logger: log, KafkaOptions: f.sec.kafkaOpts,
	}
}

// noArgs refuses positional arguments as a usage error (exit status 2).
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q: flags start with --", cmd.CommandPath(), args)}
	}
	return nil
}

// preRun applies the environment and the config file before a command's
// flags are validated.
func preRun(cmd *cobra.Command, _ []string) error { return problemsError(applySources(cmd)) }
