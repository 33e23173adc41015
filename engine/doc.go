// Package engine is firstseen's keyed streaming runtime: it reads a Kafka
// topic, runs one operator per source partition, and checkpoints state,
// offsets and watermarks together after the sink has acknowledged the rows.
//
// The moving parts, and who owns what:
//
//	poller (1 goroutine)      kgo client -> per-partition channels
//	task (1 per partition)    owns its operators.FirstSeen, its dirty state
//	                          and its output buffers; nothing else touches them
//	coordinator (Run's goroutine)
//	                          timers, checkpoints, shutdown; talks to tasks
//	                          only through their control channel
//
// A checkpoint (epoch e) runs in this order:
//
//  1. barrier: every task hands over the rows and dead letters it produced
//     since e-1, and a state batch with its user updates, held-record
//     changes, next offset and watermark; it then keeps processing into
//     fresh buffers, reading its own not-yet-committed updates from memory;
//  2. the rows go to the sink, which returns only when they are durable
//     (retried with back-off while the error is retryable);
//  3. dead letters are produced and acknowledged;
//  4. the state batches and the checkpoint header commit in one synced
//     Pebble batch;
//  5. tasks are told e committed and refresh their view of the state;
//  6. the consumer group's offsets are committed, for lag monitoring only.
//
// A crash before 4 replays from e-1. Recovery reads offsets only from the
// state, never from the consumer group. See docs/checkpoints.md.
package engine
