package main

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks/filesink"
)

func execute(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// The flag names are a public interface: scripts depend on them.
func TestRunHelpExplainsEveryFlag(t *testing.T) {
	out, err := execute(t, "run", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"brokers", "topic", "group", "state-dir", "clickhouse-addr", "clickhouse-database",
		"clickhouse-table", "clickhouse-user", "clickhouse-password-file", "timezone", "tolerance", "idle-timeout",
		"max-future", "checkpoint-interval", "dlq-topic", "until-caught-up", "shutdown-timeout"} {
		if !strings.Contains(out, "--"+f+" ") {
			t.Errorf("run --help does not document --%s", f)
		}
	}
	if !strings.Contains(out, "FIRSTSEEN_") {
		t.Error("run --help does not mention the environment variables")
	}
}

func TestBadValuesSayWhatToFix(t *testing.T) {
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"run"}, nil, "--topic is required"},
		{[]string{"run", "--topic", "t", "--tolerance", "0s"}, nil, "--tolerance 0s must be above 0"},
		{[]string{"run", "--topic", "t", "--tolerance", "abc"}, nil, `invalid argument "abc" for "--tolerance"`},
		{[]string{"run", "--topic", "t", "--timezone", "Mars/Olympus"}, nil, `--timezone "Mars/Olympus" is not an IANA time zone`},
		{[]string{"run", "--topic", "t", "--brokers", "kafka"}, nil, `--brokers: "kafka" is not host:port`},
		{[]string{"run", "--topic", "t", "--sink", "s3"}, nil, `--sink "s3": want clickhouse, kafka or file`},
		{[]string{"run", "--topic", "t", "--sink", "file"}, nil, "--sink file needs --sink-path"},
		{[]string{"run", "--topic", "t", "--sink", "file", "--sink-path", "d", "--sink-format", "csv"}, nil, `--sink-format "csv": want jsonl or parquet`},
		{[]string{"run", "--topic", "t", "--checkpoint-interval", "1ms"}, nil, "--checkpoint-interval 1ms must be at least 100ms"},
		{[]string{"run", "--topic", "t"}, map[string]string{"FIRSTSEEN_MAX_FUTURE": "soon"}, `invalid FIRSTSEEN_MAX_FUTURE="soon" (for --max-future)`},
		{[]string{"run", "--topic", "t"}, map[string]string{"FIRSTSEEN_CLICKHOUSE_PASSWORD": "x", "FIRSTSEEN_LOG_LEVEL": "loud"}, `--log-level "loud"`},
		{[]string{"run", "--topic", "t", "--nope"}, nil, "unknown flag: --nope"},
		{[]string{"run", "--topic", "t", "extra"}, nil, `takes no arguments, got ["extra"]`},
		{[]string{"run", "--topic", "t", "--dlq-topic", "t"}, nil, "--dlq-topic must differ from --topic"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v) // restored when the subtest ends
			}
			_, err := execute(t, tc.args...)
			var ue usageError
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &ue) {
				t.Errorf("%v %v: got %v, want a usage error containing %q", tc.args, tc.env, err, tc.want)
			}
		})
	}
}

// TestRunFromEnvironmentIntoFile runs the CLI as a user would, with some
// flags from the environment, against a Kafka-protocol broker, and checks the
// rows (Parquet files, the format from the environment) against the oracle.
func TestRunFromEnvironmentIntoFile(t *testing.T) {
	broker, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, "logs"))
	if err != nil {
		t.Fatal(err)
	}
	defer broker.Close()
	recs, err := workload.Generate(workload.Config{Users: 300, Days: 2, Partitions: 2, Seed: 5,
		Start: time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	if err := workload.Produce(context.Background(), broker.ListenAddrs(), "logs", recs); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "rows")
	t.Setenv("FIRSTSEEN_TOPIC", "logs")
	t.Setenv("FIRSTSEEN_BROKERS", broker.ListenAddrs()[0])
	t.Setenv("FIRSTSEEN_SINK_FORMAT", "parquet")
	if _, err := execute(t, "run", "--state-dir", filepath.Join(dir, "state"), "--sink", "file", "--sink-path", out,
		"--until-caught-up", "--checkpoint-interval", "200ms", "--log-level", "error"); err != nil {
		t.Fatal(err)
	}
	lines, err := filesink.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	got := map[[2]int64]filesink.Line{}
	for _, l := range lines {
		got[[2]int64{int64(l.Partition), l.Offset}] = l
	}
	valid := 0
	for _, e := range workload.Oracle(recs, operators.Config{}, nil) {
		if e.Reason != operators.OK {
			continue
		}
		valid++
		l, ok := got[[2]int64{int64(e.Partition), e.Offset}]
		if !ok || l.UUID != e.UUID.String() || l.IsNew != e.IsNew || l.Late != e.Late {
			t.Fatalf("partition %d offset %d: got %+v (present %v), want %+v", e.Partition, e.Offset, l, ok, e)
		}
	}
	if len(lines) != valid {
		t.Fatalf("%d rows, want %d", len(lines), valid)
	}
	if files, _ := filepath.Glob(filepath.Join(out, "event_date=*", "part-p*.parquet")); len(files) == 0 {
		t.Error("no Parquet files under event_date=* directories")
	}
}

func TestDemoPrintsPerDayTable(t *testing.T) {
	out, err := execute(t, "demo", "--users", "300", "--days", "3")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"day", "new users", "dead-lettered", "total", "records/s"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n  20"); n != 3 {
		t.Errorf("want 3 day rows, got %d:\n%s", n, out)
	}
}
