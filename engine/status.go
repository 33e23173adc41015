package engine

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Status is a run's live condition, for health checks, metrics, logs and
// `firstseen status`: the engine writes it, anyone may read it at any time.
// Everything in it is a number loaded atomically; nothing in it names a
// configuration value.
type Status struct {
	// Ready: the partitions assigned so far are restored and a checkpoint
	// has been taken since.
	Ready atomic.Bool
	// Partitions is the number of partitions this process processes.
	Partitions atomic.Int32
	// Restoring is the number of partitions being restored;
	// RestoreRemaining the changelog records those restores have still to
	// read.
	Restoring        atomic.Int32
	RestoreRemaining atomic.Int64
	// RestoredUsers counts the user records restored from the changelog.
	RestoredUsers atomic.Int64
	// Misplaced counts records that were not on their uuid's partition.
	Misplaced atomic.Int64
	// Checkpoints counts checkpoints taken; LastCheckpoint is when the last
	// one was committed (unix ms). CheckpointFailures counts checkpoints
	// that failed (each ends the run, or, for a revoked partition's, its
	// hand-over).
	Checkpoints        atomic.Uint64
	LastCheckpoint     atomic.Int64
	CheckpointFailures atomic.Uint64
	// Alive is when the coordinator last showed it was not wedged (unix
	// ms): every tick of its loop, and every attempt of a retried sink
	// write or produce, which can last as long as an outage.
	Alive atomic.Int64

	mu    sync.Mutex
	parts []*PartitionStatus // by partition
}

// PartitionStatus is one partition's live numbers. The task that owns the
// partition writes them; the counters count from when this process took the
// partition (a partition that moves starts again at zero elsewhere, which
// Prometheus's rate() reads as a counter reset).
type PartitionStatus struct {
	Partition int32
	// Records counts input records read (valid and malformed); Rows the
	// rows emitted, of which New had is_new and Late were late;
	// DeadLettered the malformed records; Written the rows checkpoints
	// committed to the sink.
	Records, Rows, New, Late, DeadLettered, Written atomic.Int64
	// Held is the number of records waiting for the watermark.
	Held atomic.Int64
	// NextOffset is the first input offset not processed; LogEnd the
	// partition's end (last stable offset) as last seen: their difference
	// is the lag.
	NextOffset, LogEnd atomic.Int64
	// Watermark is the event-time watermark, unix ms (0: none yet).
	Watermark atomic.Int64
	// StateBytes is the size of the partition's database on disk, as of
	// the last checkpoint.
	StateBytes atomic.Int64
}

// Lag is the number of records between the partition's position and its
// log end.
func (ps *PartitionStatus) Lag() int64 { return max(ps.LogEnd.Load()-ps.NextOffset.Load(), 0) }

// EachPartition calls fn for each partition this process owns, in
// partition order.
func (s *Status) EachPartition(fn func(*PartitionStatus)) {
	s.mu.Lock()
	parts := s.parts
	s.mu.Unlock()
	for _, ps := range parts {
		fn(ps)
	}
}

// addPartitions and removePartition keep the partition list; the list is
// replaced, never modified, so EachPartition can iterate without the lock.
func (s *Status) addPartitions(add ...*PartitionStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	parts := append(slices.Clip(s.parts), add...)
	slices.SortFunc(parts, func(a, b *PartitionStatus) int { return int(a.Partition) - int(b.Partition) })
	s.parts = parts
}

func (s *Status) removePartition(ps *PartitionStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.parts = slices.DeleteFunc(slices.Clone(s.parts), func(p *PartitionStatus) bool { return p == ps })
}

// Observer receives the events that duration and size metrics are made of.
// The coordinator calls it from its own goroutine: an implementation must
// be quick and must not block. Counts and gauges are in Status.
type Observer interface {
	// CheckpointTaken: a checkpoint was committed, having taken took and
	// written rows to the sink and changelogBytes of state changes (keys
	// and values) to the changelog.
	CheckpointTaken(took time.Duration, rows, changelogBytes int)
	// SinkWrite reports one attempt of the named sink's write of rows
	// (attempt 1 is the first; later ones are retries); err is nil when it
	// succeeded.
	SinkWrite(sink string, rows int, took time.Duration, attempt int, err error)
}

// nopObserver is the Observer of a run without one.
type nopObserver struct{}

func (nopObserver) CheckpointTaken(time.Duration, int, int)          {}
func (nopObserver) SinkWrite(string, int, time.Duration, int, error) {}
