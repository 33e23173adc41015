package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/engine/repartition"
)

// runRepartitioned runs the repartitioner (engine/repartition) beside the
// processor, which reads the re-keyed topic instead of --topic. The
// repartitioner is a consumer group of its own, <group>-repartition, under
// the same instance name. Dead letters still go to <topic>.dlq. If either
// stops with an error, the other is stopped too (the processor with its
// final checkpoint).
func runRepartitioned(ctx context.Context, f *pipelineFlags, cfg engine.Config) (engine.Stats, error) {
	if cfg.UntilCaughtUp {
		return engine.Stats{}, usageError{errors.New("--until-caught-up cannot be combined with --repartition: the " +
			"re-keyed topic is written while the processor reads it, so there is no end to catch up with")}
	}
	instance, err := engine.InstanceName(cfg.StateDir, cfg.InstanceID)
	if err != nil {
		return engine.Stats{}, err
	}
	rcfg := repartition.Config{
		Brokers: cfg.Brokers, Input: f.topic, Output: cmp.Or(f.repartitionTopic, cfg.Group+"-repartition"),
		Group: cfg.Group + "-repartition", InstanceID: instance,
		UUIDField: cfg.Operator.UUIDField, TimeField: cfg.Operator.TimeField, Logger: cfg.Logger,
		KafkaOptions: append(append([]kgo.Opt(nil), cfg.KafkaOptions...), kgo.SessionTimeout(f.sessionTimeout)),
	}
	if rcfg.Output == f.topic {
		return engine.Stats{}, usageError{fmt.Errorf("--repartition-topic must differ from --topic")}
	}
	// Replicas starting together race to create the topic; the loser may
	// not see it in the metadata at once.
	for attempt := 1; ; attempt++ {
		_, err := repartition.EnsureTopic(ctx, rcfg)
		if err == nil {
			break
		}
		if attempt == 10 || !errors.Is(err, kerr.UnknownTopicOrPartition) || ctx.Err() != nil {
			return engine.Stats{}, err
		}
		time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
	}
	cfg.DLQTopic = cmp.Or(cfg.DLQTopic, f.topic+".dlq")
	cfg.Topic = rcfg.Output

	procCtx, stopProc := context.WithCancel(ctx)
	defer stopProc()
	repCtx, stopRep := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var repErr error
	wg.Go(func() {
		repErr = repartition.Run(repCtx, rcfg)
		if repErr != nil {
			cfg.Logger.Error("the repartitioner stopped; stopping the processor", "err", repErr)
			stopProc()
		}
	})
	go func() {
		<-ctx.Done()
		stopRep()
	}()
	st, err := engine.Run(procCtx, cfg)
	stopRep()
	wg.Wait()
	if err == nil && repErr != nil {
		err = fmt.Errorf("--repartition: %w", repErr)
	}
	return st, err
}
