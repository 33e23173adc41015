// Package engine is firstseen's keyed streaming runtime: it reads a Kafka
// topic, runs one operator per source partition, and checkpoints state,
// offsets and watermarks together after the sink has acknowledged the rows,
// so that every record is written exactly once.
//
// The moving parts, and who owns what:
//
//	poller (1 goroutine)       kgo client -> per-partition channels (source.go)
//	end watcher (1 goroutine)  lists log ends; idleness is judged on them
//	task (1 per partition)     owns its operators.FirstSeen, its uncommitted
//	                           state and its output buffers (task.go)
//	coordinator (Run's goroutine)
//	                           timers, checkpoints, recovery, shutdown; talks
//	                           to tasks only through their control channel
//	                           (pipeline.go, checkpoint.go)
//
// A checkpoint (epoch e): barrier (tasks hand over rows, dead letters and a
// state batch, and go on with e+1), a synced intent naming the input e
// covers, the sink write, the dead letters, one synced Pebble commit of all
// state with the intent removed, then consumer-group offsets for lag tools.
// On start, an intent left by a crash is completed by deterministic replay,
// writing only what did not land. docs/checkpoints.md has the protocol and a
// table of crash points.
//
// Shutdown is ordered: stop the poller and the watcher, stop the tasks and
// wait for them, close the Kafka client, close the state.
package engine
