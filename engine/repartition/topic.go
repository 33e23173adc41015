package repartition

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/firstseen/firstseen/engine"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// EnsureTopic checks that cfg.Input exists and that cfg.Output has the
// wanted partition count (cfg.Partitions, or the input's when 0), creating
// it when it is missing, with the broker's replication factor and
// cleanup.policy=delete. It returns that count. An existing Output with
// another count, or compacted (compaction by uuid would drop a user's
// records), is an error: it is never changed. Run calls it; a caller that
// starts the reader of Output before Run may call it first.
func EnsureTopic(ctx context.Context, cfg Config) (partitions int, err error) {
	if err := cfg.normalize(); err != nil {
		return 0, err
	}
	_, partitions, err = ensureTopic(ctx, &cfg)
	return partitions, err
}

// ensureTopic is EnsureTopic on a normalized cfg; it also returns the
// input's partition count. The errors retrying cannot fix are permanent.
func ensureTopic(ctx context.Context, cfg *Config) (in, out int, err error) {
	brokers := strings.Join(cfg.Brokers, ",")
	opts := append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...), kgo.WithLogger(engine.KafkaLogger(cfg.Logger))}, cfg.KafkaOptions...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return 0, 0, permanent(fmt.Errorf("repartition: kafka client: %w", err))
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(ctx, metadataTimeout)
	defer cancel()

	topics, err := adm.ListTopics(ctx, cfg.Input, cfg.Output)
	if err != nil {
		if isPermanent(err) {
			return 0, 0, permanent(fmt.Errorf("repartition: kafka %s: cannot describe the input topic %q and the output topic %q: %w",
				brokers, cfg.Input, cfg.Output, err))
		}
		return 0, 0, fmt.Errorf("repartition: kafka %s: cannot read metadata: %w", brokers, err)
	}
	td, ok := topics[cfg.Input]
	if !ok || errors.Is(td.Err, kerr.UnknownTopicOrPartition) {
		return 0, 0, permanent(fmt.Errorf("repartition: kafka %s: input topic %q does not exist", brokers, cfg.Input))
	}
	if td.Err != nil {
		return 0, 0, topicErr("input", cfg.Input, td.Err)
	}
	in = len(td.Partitions)
	want := cfg.Partitions
	if want == 0 {
		want = in
	}

	od, ok := topics[cfg.Output]
	if !ok || errors.Is(od.Err, kerr.UnknownTopicOrPartition) {
		policy := "delete"
		_, err := adm.CreateTopic(ctx, int32(want), -1, map[string]*string{"cleanup.policy": &policy}, cfg.Output)
		if err == nil {
			cfg.Logger.Info("repartition: created the output topic", "topic", cfg.Output, "partitions", want)
			return in, want, nil
		}
		if !errors.Is(err, kerr.TopicAlreadyExists) {
			return 0, 0, topicErr("output", cfg.Output, fmt.Errorf("cannot create it: %w", err))
		}
		// Another replica created it meanwhile: check it like any.
		if topics, err = adm.ListTopics(ctx, cfg.Output); err != nil {
			return 0, 0, fmt.Errorf("repartition: kafka %s: cannot read metadata: %w", brokers, err)
		}
		if od, ok = topics[cfg.Output]; !ok {
			return 0, 0, fmt.Errorf("repartition: output topic %q: created, but not in the metadata", cfg.Output)
		}
	}
	if od.Err != nil {
		return 0, 0, topicErr("output", cfg.Output, od.Err)
	}
	if got := len(od.Partitions); got != want {
		why := "Config.Partitions"
		if cfg.Partitions == 0 {
			why = fmt.Sprintf("the input topic %q's count, as Config.Partitions is 0", cfg.Input)
		}
		return 0, 0, permanent(fmt.Errorf("repartition: output topic %q has %d partitions, want %d (%s); "+
			"the processor's state is per partition, so the count is never changed: set the partition count to %d, "+
			"or delete the topic together with the processor's state", cfg.Output, got, want, why, got))
	}

	// A compacted output would keep only the last record of each user.
	// Not being allowed to look is no reason not to run.
	var rc kadm.ResourceConfig
	rcs, err := adm.DescribeTopicConfigs(ctx, cfg.Output)
	if err == nil {
		if rc, err = rcs.On(cfg.Output, nil); err == nil {
			err = rc.Err
		}
	}
	if err != nil {
		cfg.Logger.Warn("repartition: cannot read the output topic's configuration", "topic", cfg.Output, "err", err)
		return in, want, nil
	}
	for _, c := range rc.Configs {
		if c.Key == "cleanup.policy" && strings.Contains(c.MaybeValue(), "compact") {
			return 0, 0, permanent(fmt.Errorf("repartition: output topic %q has cleanup.policy=%s: "+
				"compaction by uuid would drop records; it must be delete", cfg.Output, c.MaybeValue()))
		}
	}
	return in, want, nil
}

// topicErr describes a broker error about a topic; authorization errors
// and the like are permanent.
func topicErr(role, topic string, err error) error {
	err = fmt.Errorf("repartition: %s topic %q: %w", role, topic, err)
	if isPermanent(err) {
		return permanent(err)
	}
	return err
}
