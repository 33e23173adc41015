package engine_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/engine/enginetest"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
)

// memSink keeps rows in memory; for tests of the engine's own behaviour.
type memSink struct {
	rows atomic.Pointer[[]operators.Row]
}

func (m *memSink) Write(_ context.Context, b *sinks.Batch) error {
	old := m.rows.Load()
	var all []operators.Row
	if old != nil {
		all = append(all, *old...)
	}
	var r operators.Row
	for i := range b.Len() {
		b.Row(i, &r)
		r.Payload = nil
		all = append(all, r)
	}
	m.rows.Store(&all)
	return nil
}

func (m *memSink) Close() error { return nil }

func (m *memSink) all() []operators.Row {
	if p := m.rows.Load(); p != nil {
		return *p
	}
	return nil
}

func record(user int, t time.Time) *kgo.Record {
	return &kgo.Record{Topic: topic, Partition: 0,
		Value: fmt.Appendf(nil, `{"uuid":"00000000-0000-4000-8000-%012d","event_time":%d}`, user, t.UnixMilli())}
}

// TestBrokerOutageIsNotIdleness: while fetches fail, a partition must not
// count as idle (its watermark would follow the wall clock and every record
// produced meanwhile would come out late).
func TestBrokerOutageIsNotIdleness(t *testing.T) {
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	c, produce := oneTopic(t, base)
	var down atomic.Bool
	for _, key := range []int16{kmsg.Fetch.Int16(), kmsg.ListOffsets.Int16()} {
		c.ControlKey(key, func(kmsg.Request) (kmsg.Response, error, bool) {
			c.KeepControl()
			if down.Load() {
				return nil, errors.New("simulated outage"), true
			}
			return nil, nil, false
		})
	}
	produce(0, 5)
	sink := &memSink{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := engine.Run(ctx, engine.Config{Brokers: c.ListenAddrs(), Topic: topic, StateDir: t.TempDir(), Sink: sink,
			CheckpointInterval: 100 * time.Millisecond, Operator: operators.Config{IdleTimeout: 300 * time.Millisecond}})
		done <- err
	}()
	waitFor(t, func() bool { return len(sink.all()) == 5 })
	down.Store(true)
	produce(5, 10)
	time.Sleep(2 * time.Second) // far beyond the idle timeout
	down.Store(false)
	waitFor(t, func() bool { return len(sink.all()) == 10 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, r := range sink.all() {
		if r.Late {
			t.Fatalf("offset %d came out late: the outage was taken for idleness", r.Offset)
		}
	}
}

// TestRecreatedTopicIsAnError: a log that goes back below the checkpoint
// (the topic was recreated) stops the run with an error that says so,
// instead of skipping records.
func TestRecreatedTopicIsAnError(t *testing.T) {
	dir := t.TempDir()
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	run := func(n int) error {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		for i := 0; i < n; i++ {
			if err := cl.ProduceSync(context.Background(), record(i, base.Add(time.Duration(i)*time.Second))).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err = engine.Run(ctx, engine.Config{Brokers: c.ListenAddrs(), Topic: topic, StateDir: dir, Sink: &memSink{},
			UntilCaughtUp: true, CheckpointInterval: 100 * time.Millisecond})
		return err
	}
	if err := run(20); err != nil {
		t.Fatal(err)
	}
	err := run(30) // a new cluster: the same topic name, a new topic
	if err == nil || !strings.Contains(err.Error(), "was deleted and created again") {
		t.Fatalf("got %v, want the recreated-topic error", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTimezoneIsBoundToTheState: a state decided days in one zone; a run in
// another zone is refused with a message that says what to do.
func TestTimezoneIsBoundToTheState(t *testing.T) {
	c := enginetest.StartBroker(t, topic, 1)
	dir := t.TempDir()
	run := func(zone string) error {
		loc, err := time.LoadLocation(zone)
		if err != nil {
			t.Skip(err)
		}
		_, err = engine.Run(context.Background(), engine.Config{Brokers: c.ListenAddrs(), Topic: topic, StateDir: dir,
			Sink: &memSink{}, UntilCaughtUp: true, Operator: operators.Config{Calendar: operators.NewCalendar(loc)}})
		return err
	}
	if err := run("Asia/Shanghai"); err != nil {
		t.Fatal(err)
	}
	if err := run("Asia/Shanghai"); err != nil {
		t.Fatalf("same zone again: %v", err)
	}
	err := run("UTC")
	if err == nil || !strings.Contains(err.Error(), "was built with --timezone Asia/Shanghai; it cannot change to UTC") {
		t.Fatalf("got %v, want the time-zone refusal", err)
	}
}

// oneTopic starts a broker with the one-partition topic and returns it with
// a function that produces the records of users from to to-1 (record),
// one second apart from base.
func oneTopic(t *testing.T, base time.Time) (*kfake.Cluster, func(from, to int)) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return c, func(from, to int) {
		for i := from; i < to; i++ {
			if err := cl.ProduceSync(context.Background(), record(i, base.Add(time.Duration(i)*time.Second))).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}
}
