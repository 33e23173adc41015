package engine

import (
	"context"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/state"
)

// TestFailedRestoreClosesDatabases: a restore that fails (here: cancelled,
// as a rebalance during the restore cancels it) closes the databases it
// opened, so that the partitions' next assignment can open them again.
func TestFailedRestoreClosesDatabases(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, "in", "firstseen-state"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	cfg := Config{Brokers: c.ListenAddrs(), Topic: "in", StateDir: t.TempDir()}
	cfg.setDefaults()
	p := &pipeline{cfg: cfg, log: cfg.Logger, adm: kadm.NewClient(cl), cache: state.NewCache(1 << 20)}
	defer p.cache.Unref()

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := p.openAndRestore(ctx, []int32{0, 1}, true); err == nil {
		t.Fatal("a restore under a cancelled context succeeded")
	}
	wants, _, err := p.openAndRestore(context.Background(), []int32{0, 1}, true)
	if err != nil {
		t.Fatalf("the partitions cannot be opened after a failed restore: %v", err)
	}
	for _, w := range wants {
		w.db.Close()
	}
}
