//go:build race

package engine

// raceEnabled: Pebble turns on its invariant checks under -race, and they
// allocate, so allocation tests run in the non-race pass of make test.
const raceEnabled = true
