package engine_test

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine"
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

func produce(t *testing.T, brokers []string, recs []workload.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	out := make([]*kgo.Record, len(recs))
	for i := range recs {
		r := &recs[i]
		out[i] = &kgo.Record{Topic: topic, Partition: r.Partition, Key: r.Key, Value: r.Value, Timestamp: r.Timestamp}
	}
	if err := cl.ProduceSync(context.Background(), out...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

type rowKey struct {
	partition int32
	offset    int64
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
	produce(t, broker.ListenAddrs(), recs)
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
	checkRows(t, sink, want)
	checkDeadLetters(t, broker.ListenAddrs(), want)
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
	valid := 0
	for _, e := range want {
		if e.Reason == operators.OK {
			valid++
		}
	}
	sink, err := clickhouse.Open(context.Background(), clickhouse.Config{Addr: []string{addr}, Database: db})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	cfg := engine.Config{Brokers: broker.ListenAddrs(), Topic: topic, StateDir: t.TempDir(), Operator: opCfg,
		CheckpointInterval: 200 * time.Millisecond, Sink: sink, IsRetryable: clickhouse.IsRetryable}

	produce(t, broker.ListenAddrs(), recs[:cut])
	first := cfg
	first.UntilCaughtUp = true
	st, err := engine.Run(context.Background(), first)
	if err != nil {
		t.Fatal(err)
	}
	if st.Held == 0 {
		t.Fatalf("the first run should end with held records (cut after midnight); stats %+v", st)
	}
	produce(t, broker.ListenAddrs(), recs[cut:])
	cfg.Operator.IdleTimeout = time.Second // release what is held once everything is read
	runUntilRows(t, cfg, valid)
	checkRows(t, sink, want)
	checkDeadLetters(t, broker.ListenAddrs(), want)
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

// checkRows compares the whole table with the oracle: one row per valid
// record, with its uuid, is_new and late.
func checkRows(t *testing.T, sink *clickhouse.Sink, want []workload.Expected) {
	t.Helper()
	rows, err := sink.Conn().Query(context.Background(), "SELECT src_partition, src_offset, uuid, is_new, late FROM "+sink.Table())
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[rowKey][3]string{}
	for rows.Next() {
		var p int32
		var off int64
		var u string
		var isNew, isLate uint8
		if err := rows.Scan(&p, &off, &u, &isNew, &isLate); err != nil {
			t.Fatal(err)
		}
		k := rowKey{p, off}
		if _, dup := got[k]; dup {
			t.Errorf("duplicate row for partition %d offset %d", p, off)
		}
		got[k] = [3]string{u, strconv.Itoa(int(isNew)), strconv.Itoa(int(isLate))}
	}
	valid, wrong := 0, 0
	for _, e := range want {
		if e.Reason != operators.OK {
			continue
		}
		valid++
		g, ok := got[rowKey{e.Partition, e.Offset}]
		exp := [3]string{e.UUID.String(), b01(e.IsNew), b01(e.Late)}
		if !ok {
			t.Errorf("missing row for partition %d offset %d", e.Partition, e.Offset)
			wrong++
		} else if g != exp {
			t.Errorf("partition %d offset %d: got uuid,is_new,late=%v, want %v", e.Partition, e.Offset, g, exp)
			wrong++
		}
		if wrong > 10 {
			t.Fatal("too many wrong rows")
		}
	}
	if len(got) != valid {
		t.Errorf("%d rows in ClickHouse, want %d", len(got), valid)
	}
}

func b01(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// checkDeadLetters reads the dead-letter topic and compares it with the
// malformed records the oracle expects, reason by reason.
func checkDeadLetters(t *testing.T, brokers []string, want []workload.Expected) {
	t.Helper()
	exp := map[rowKey]string{}
	for _, e := range want {
		if e.Reason != operators.OK {
			exp[rowKey{e.Partition, e.Offset}] = e.Reason.String()
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic+".dlq"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	got := map[rowKey]string{}
	deadline := time.Now().Add(20 * time.Second)
	for len(got) < len(exp) && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			h := map[string]string{}
			for _, x := range r.Headers {
				h[x.Key] = string(x.Value)
			}
			p, _ := strconv.Atoi(h[engine.HeaderPartition])
			off, _ := strconv.ParseInt(h[engine.HeaderOffset], 10, 64)
			k := rowKey{int32(p), off}
			if _, dup := got[k]; dup {
				t.Errorf("dead letter for %v twice", k)
			}
			if h[engine.HeaderTopic] != topic {
				t.Errorf("dead letter source topic %q", h[engine.HeaderTopic])
			}
			got[k] = h[engine.HeaderReason]
		})
	}
	if fmt.Sprint(got) != fmt.Sprint(exp) {
		t.Errorf("dead letters differ:\n got %v\nwant %v", got, exp)
	}
}
