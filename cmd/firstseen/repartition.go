package main

import (
	"context"
	"errors"

	"github.com/firstseen/firstseen/engine"
)

// runRepartitioned runs the repartitioner beside the processor, which
// reads the re-keyed topic.
func runRepartitioned(ctx context.Context, f *pipelineFlags, cfg engine.Config) (engine.Stats, error) {
	return engine.Stats{}, errors.New("--repartition: not wired yet")
}
