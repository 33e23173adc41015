package engine_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine"
)

// TestFencedMemberWritesNothing: the group drops a running member before
// the member notices (as it does when the member's session expires while
// it is paused: here it is told to leave); the member's next checkpoint is
// refused by the group coordinator, so its rows are not written, and its
// run ends with an error that says why.
func TestFencedMemberWritesNothing(t *testing.T) {
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	c, produce := oneTopic(t, base)
	produce(0, 5)
	sink := &memSink{}
	done := make(chan error, 1)
	go func() {
		// A long session: the member's heartbeats, every 6s, would notice
		// much later than its next checkpoint.
		_, err := engine.Run(context.Background(), engine.Config{Brokers: c.ListenAddrs(), Topic: topic,
			Group: "g", InstanceID: "replica-0", SessionTimeout: time.Minute, StateDir: t.TempDir(), Sink: sink,
			CheckpointInterval: 100 * time.Millisecond})
		done <- err
	}()
	waitFor(t, func() bool { return len(sink.all()) == 5 })
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).LeaveGroup(context.Background(), kadm.LeaveGroup("g").InstanceIDs("replica-0")); err != nil {
		t.Fatal(err)
	}
	produce(5, 10)
	select {
	case err := <-done:
		// The refused transaction is the intents' of the epoch with rows,
		// or, when an epoch without rows (no intents) came first, its
		// state changes': either way no row of the dropped member's reaches
		// the sink (checked below).
		if err == nil || !strings.Contains(err.Error(), "fenced off its partitions") {
			t.Fatalf("got %v, want the group's refusal", err)
		}
		t.Log(err)
	case <-time.After(30 * time.Second):
		t.Fatal("the run of a member the group dropped goes on")
	}
	if n := len(sink.all()); n != 5 {
		t.Fatalf("%d rows written, want the 5 written before the member was dropped", n)
	}
}
