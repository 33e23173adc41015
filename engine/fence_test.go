package engine

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestChangelogFence: a changelog transaction commits only while the group
// has the member it names. The member writes; then the group drops it (it
// leaves, as an expired session would remove it); its next transaction is
// refused with errFenced and aborted, and the producer goes on with the
// next one. A stale generation of a member still in the group is retried
// with the current one.
func TestChangelogFence(t *testing.T) {
	const group, in, clog, instance = "g", "in", "g-state", "replica-0"
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, in, clog))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	brokers := c.ListenAddrs()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	assigned := make(chan struct{}, 1)
	member, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(in),
		kgo.InstanceID(instance), kgo.DisableAutoCommit(), kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.OnPartitionsAssigned(func(context.Context, *kgo.Client, map[string][]int32) {
			select {
			case assigned <- struct{}{}:
			default:
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer member.Close()
	go func() {
		for ctx.Err() == nil {
			if member.PollFetches(ctx).IsClientClosed() {
				return
			}
		}
	}()
	select {
	case <-assigned:
	case <-ctx.Done():
		t.Fatal("the member was not assigned the partitions")
	}
	adm := kadm.NewClient(member)
	td, err := adm.ListTopics(ctx, in)
	if err != nil {
		t.Fatal(err)
	}

	cfg := Config{Brokers: brokers, Group: group, ChangelogTopic: clog}
	cp, err := newChangelogProducer(&cfg, "w")
	if err != nil {
		t.Fatal(err)
	}
	defer cp.close()
	stale := int32(0) // generations to take off the member's, for the next calls
	cp.fence = &groupFence{group: group, instance: instance, topic: in, topicID: td[in].ID,
		session: func() (string, int32, bool) {
			m, g := member.GroupMetadata()
			if stale > 0 {
				stale--
				g--
			}
			return m, g, false
		}}
	owner, _ := member.GroupMetadata()
	write := func(value string, offset int64) error {
		cp.add(0, []byte("k"), []byte(value))
		_, err := cp.write(ctx, owner, map[int32]int64{0: offset, 1: offset})
		return err
	}

	if err := write("first", 10); err != nil {
		t.Fatalf("the member's transaction: %v", err)
	}
	stale = 2 // the generation check and the first request
	if err := write("stale generation", 20); err != nil {
		t.Fatalf("a transaction under a stale generation of a member still in the group: %v", err)
	}
	committed, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	if o, _ := committed.Lookup(in, 1); o.At != 20 {
		t.Fatalf("group offset of partition 1 is %d after the transactions, want 20", o.At)
	}

	// The member is gone from the group; the process does not know yet.
	if _, err := adm.LeaveGroup(ctx, kadm.LeaveGroup(group).InstanceIDs(instance)); err != nil {
		t.Fatal(err)
	}
	err = write("zombie", 30)
	if !errors.Is(err, errFenced) {
		t.Fatalf("the transaction of a member the group no longer has: got %v, want errFenced", err)
	}
	t.Logf("refused: %v", err)
	cp.fence = nil
	if err := write("after", 40); err != nil {
		t.Fatalf("a transaction after a refused one: %v", err)
	}

	var got []string
	rd, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{clog: {0: kgo.NewOffset().AtStart()}}))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	for len(got) < 3 && ctx.Err() == nil {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		rd.PollFetches(pctx).EachRecord(func(r *kgo.Record) { got = append(got, string(r.Value)) })
		pcancel()
		if pctx.Err() != nil {
			break
		}
	}
	want := []string{"first", "stale generation", "after"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("committed changelog records %q, want %q", got, want)
	}
	committed, err = adm.FetchOffsets(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	if o, _ := committed.Lookup(in, 1); o.At != 20 {
		t.Fatalf("group offset of partition 1 is %d after the refused transaction, want 20", o.At)
	}
}
