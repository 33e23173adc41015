//go:build race

package state

// raceEnabled: Pebble turns on invariant checks that allocate under -race.
const raceEnabled = true
