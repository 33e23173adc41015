package engine_test

import (
	"context"
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

func startBroker(t *testing.T, partitions int) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(int32(partitions), topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestPipelineIntoClickHouse runs the real pipeline from a Kafka-protocol
// broker into the real ClickHouse server and checks every row and every
// dead letter against the oracle.
func TestPipelineIntoClickHouse(t *testing.T) {
	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	ctx := context.Background()

	const partitions = 4
	broker := startBroker(t, partitions)
	recs, err := workload.Generate(workload.Config{Users: 1500, Days: 3, Partitions: partitions, Seed: 42,
		Start: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), LateShare: 0.01, MalformedShare: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	enginetest.Produce(t, broker.ListenAddrs(), topic, recs)
	opCfg := operators.Config{Tolerance: 10 * time.Minute, IdleTimeout: time.Second}
	want := workload.Oracle(recs, opCfg, nil)
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

	sink, err := clickhouse.Open(ctx, clickhouse.Config{Addr: []string{addr}, Database: db})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()

	st := runUntilRows(t, engine.Config{Brokers: broker.ListenAddrs(), Topic: topic, StateDir: t.TempDir(),
		Operator: opCfg, CheckpointInterval: 300 * time.Millisecond, Sink: sink, IsRetryable: clickhouse.IsRetryable}, valid)
	if st.Rows != int64(valid) || st.DeadLettered != int64(dead) {
		t.Errorf("stats: rows %d dead %d, want %d and %d", st.Rows, st.DeadLettered, valid, dead)
	}
	enginetest.CheckTable(t, sink.Conn(), sink.Table(), want)
	enginetest.CheckDeadLetters(t, broker.ListenAddrs(), topic, want, false)
}

// TestRestartResumesFromCheckpoint processes half the stream in bounded
// mode, then the rest in a second run on the same state. The result must
// equal one uninterrupted run: offsets, watermarks and held records all come
// back from the checkpoint.
func TestRestartResumesFromCheckpoint(t *testing.T) {
	addr := chtest.Addr(t)
	db := chtest.FreshDatabase(t, addr)
	const partitions = 3
	broker := startBroker(t, partitions)
	recs, err := workload.Generate(workload.Config{Users: 800, Days: 2, Partitions: partitions, Seed: 7,
		Start: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC), LateShare: 0.01, MalformedShare: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	// Cut just after the first midnight, where records are held.
	cut := sort.Search(len(recs), func(i int) bool {
		return recs[i].Timestamp.After(time.Date(2026, 6, 2, 0, 3, 0, 0, time.UTC))
	})
	opCfg := operators.Config{Tolerance: 10 * time.Minute, IdleTimeout: time.Hour}
	want := workload.Oracle(recs, opCfg, nil)
	valid := enginetest.ValidCount(want)
	sink, err := clickhouse.Open(context.Background(), clickhouse.Config{Addr: []string{addr}, Database: db})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	cfg := engine.Config{Brokers: broker.ListenAddrs(), Topic: topic, StateDir: t.TempDir(), Operator: opCfg,
		CheckpointInterval: 200 * time.Millisecond, Sink: sink, IsRetryable: clickhouse.IsRetryable}

	enginetest.Produce(t, broker.ListenAddrs(), topic, recs[:cut])
	first := cfg
	first.UntilCaughtUp = true
	st, err := engine.Run(context.Background(), first)
	if err != nil {
		t.Fatal(err)
	}
	if st.Held == 0 {
		t.Fatalf("the first run should end with held records (cut after midnight); stats %+v", st)
	}
	enginetest.Produce(t, broker.ListenAddrs(), topic, recs[cut:])
	cfg.Operator.IdleTimeout = time.Second // release what is held once everything is read
	runUntilRows(t, cfg, valid)
	enginetest.CheckTable(t, sink.Conn(), sink.Table(), want)
	enginetest.CheckDeadLetters(t, broker.ListenAddrs(), topic, want, false)
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
