// Package engine is firstseen's keyed streaming runtime: it reads a Kafka
// topic, runs one operator per source partition, and checkpoints state,
// offsets and watermarks together after the sink has acknowledged the rows,
// so that every record is written exactly once.
//
// The moving parts, and who owns what:
//
//	group client (franz-go)    joins the consumer group (static membership,
//	                           cooperative-sticky); its callbacks restore a
//	                           gained partition before it is fetched and
//	                           drop a revoked one (group.go)
//	poller (1 goroutine)       kgo client -> per-partition channels (source.go)
//	end watcher (1 goroutine)  lists log ends; idleness is judged on them
//	task (1 per partition)     owns its operators.FirstSeen, its partition's
//	                           Pebble database, its uncommitted state and its
//	                           output buffers (task.go)
//	coordinator (Run's goroutine)
//	                           timers, checkpoints, starting and stopping
//	                           tasks, shutdown; talks to tasks only through
//	                           their control channel (pipeline.go,
//	                           checkpoint.go)
//
// A checkpoint (epoch e): barrier (tasks hand over rows, dead letters and a
// state batch, and go on with e+1), the intents of the partitions with
// output in one transaction on the changelog topic, the sink write, the dead
// letters, the state changes and each partition's checkpoint in one more
// changelog transaction, then a synced commit of each partition's database.
// Both transactions commit the consumer group's offsets too, as the member
// that owns the partitions, so that the broker refuses them from a replica
// the group has dropped (fence.go). A partition whose last changelog
// intent is not followed by a checkpoint was interrupted: whoever owns it
// next (this process after a crash, or another replica) replays that epoch
// deterministically and writes only what did not land. docs/checkpoints.md
// has the protocol and a table of crash points; docs/scaling.md how
// partitions and their state move between replicas.
//
// Shutdown is ordered: the coordinator takes a final checkpoint and stops
// taking requests, the poller and the watcher stop, the tasks stop and close
// their databases, then the Kafka clients close.
package engine
