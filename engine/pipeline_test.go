package engine_test

import (
	"context"
	"log/slog"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/engine/enginetest"
	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks/clickhouse"
	"github.com/firstseen/firstseen/sinks/clickhouse/chtest"
)

const topic = "activity"

// fixture is what the integration tests share: an in-process Kafka-protocol
// broker with the topic, a generated workload, and a sink into a fresh
// database of the real ClickHouse.
type fixture struct {
	broker *kfake.Cluster
	recs   []workload.Record
	sink   *clickhouse.Sink
}

func newFixture(t *testing.T, partitions int, wc workload.Config) *fixture {
	t.Helper()
	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	wc.Partitions = partitions
	recs, err := workload.Generate(wc)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := clickhouse.Open(context.Background(), clickhouse.Config{Addr: []string{addr}, Database: db})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	return &fixture{broker: enginetest.StartBroker(t, topic, partitions), recs: recs, sink: sink}
}

// config is a pipeline over the fixture with a fresh state directory.
func (f *fixture) config(t *testing.T, op operators.Config) engine.Config {
	return engine.Config{Brokers: f.broker.ListenAddrs(), Topic: topic, StateDir: t.TempDir(), Operator: op,
		CheckpointInterval: 200 * time.Millisecond, Sink: f.sink, IsRetryable: clickhouse.IsRetryable, Logger: testLogger(t)}
}

func (f *fixture) produce(t *testing.T, recs []workload.Record) {
	enginetest.Produce(t, f.broker.ListenAddrs(), topic, recs)
}

// check compares the table and the dead-letter topic with the oracle.
func (f *fixture) check(t *testing.T, want []workload.Expected) {
	t.Helper()
	enginetest.CheckTable(t, f.sink.Conn(), f.sink.Table(), want)
	enginetest.CheckDeadLetters(t, f.broker.ListenAddrs(), topic, want, false)
}

// TestPipelineIntoClickHouse runs the real pipeline from a Kafka-protocol
// broker into the real ClickHouse server and checks every row and every
// dead letter against the oracle.
func TestPipelineIntoClickHouse(t *testing.T) {
	f := newFixture(t, 4, workload.Config{Users: 1500, Days: 3, Seed: 42,
		Start: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), LateShare: 0.01, MalformedShare: 0.01})
	f.produce(t, f.recs)
	opCfg := operators.Config{Tolerance: 10 * time.Minute, IdleTimeout: time.Second}
	want := workload.Oracle(f.recs, opCfg, nil)
	var valid, late, dead int
	for _, e := range want {
		switch {
		case e.Reason != operators.OK:
			dead++
		case e.Late:
			late++
			valid++
		default:
			valid++
		}
	}
	if late == 0 || dead == 0 {
		t.Fatalf("workload should have late (%d) and malformed (%d) records", late, dead)
	}
	st := runUntilRows(t, f.config(t, opCfg), valid)
	if st.Rows != int64(valid) || st.DeadLettered != int64(dead) {
		t.Errorf("stats: rows %d dead %d, want %d and %d", st.Rows, st.DeadLettered, valid, dead)
	}
	f.check(t, want)
}

// TestRestartResumesFromCheckpoint processes half the stream in bounded
// mode, then the rest in a second run on the same state. The result must
// equal one uninterrupted run: offsets, watermarks and held records all come
// back from the checkpoint.
func TestRestartResumesFromCheckpoint(t *testing.T) {
	f := newFixture(t, 3, workload.Config{Users: 800, Days: 2, Seed: 7,
		Start: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC), LateShare: 0.01, MalformedShare: 0.01})
	// Cut just after the first midnight, where records are held.
	cut := sort.Search(len(f.recs), func(i int) bool {
		return f.recs[i].Timestamp.After(time.Date(2026, 6, 2, 0, 3, 0, 0, time.UTC))
	})
	opCfg := operators.Config{Tolerance: 10 * time.Minute, IdleTimeout: time.Hour}
	want := workload.Oracle(f.recs, opCfg, nil)
	cfg := f.config(t, opCfg)
	f.produce(t, f.recs[:cut])
	first := cfg
	first.UntilCaughtUp = true
	st, err := engine.Run(context.Background(), first)
	if err != nil {
		t.Fatal(err)
	}
	if st.Held == 0 {
		t.Fatalf("the first run should end with held records (cut after midnight); stats %+v", st)
	}
	f.produce(t, f.recs[cut:])
	cfg.Operator.IdleTimeout = time.Second // release what is held once everything is read
	runUntilRows(t, cfg, enginetest.ValidCount(want))
	f.check(t, want)
}

// runUntilRows runs the pipeline until the sink's table has n rows, then
// stops it gracefully.
func runUntilRows(t *testing.T, cfg engine.Config, n int) engine.Stats {
	t.Helper()
	ctx := context.Background()
	sink := cfg.Sink.(*clickhouse.Sink)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	var st engine.Stats
	go func() {
		var err error
		st, err = engine.Run(runCtx, cfg)
		done <- err
	}()
	deadline := time.Now().Add(90 * time.Second)
	for {
		var got uint64
		if err := sink.Conn().QueryRow(ctx, "SELECT count() FROM "+sink.Table()).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if int(got) >= n {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("pipeline stopped early with %d of %d rows: %v", got, n, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d rows after 90s", got, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("pipeline: %v", err)
	}
	return st
}

// testLogger logs to the test's output when FIRSTSEEN_TEST_LOG is set.
func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("FIRSTSEEN_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}
