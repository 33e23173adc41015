// Package sinks writes enriched rows to their destinations, exactly once.
//
// # The contract
//
// The engine hands each sink one [Batch] per checkpoint epoch, after it has
// recorded the epoch's intent (which input it covers) and before it commits
// the checkpoint (offsets, watermarks, state). A crash anywhere in between
// makes the next owner of a partition replay the epoch from the last
// checkpoint and hand the sinks the same rows again. A sink therefore
// promises three things:
//
//  1. Durable before acknowledged: Write returns nil only when every row of
//     the batch is stored (or, for a [Transactional] sink, queued in the
//     checkpoint's transaction, which the engine commits with the
//     checkpoint).
//  2. Idempotent by (Partition, Offset): a replayed batch carries Retry, and
//     the same rows for the same offsets as the attempt that may have
//     crashed (Unsure names that attempt, maybe another process's). The sink
//     stores only the rows that are not stored yet. A Write that returned an
//     error may be called again with the same batch, without Retry: the sink
//     must not store a row twice then either (undo what failed, or
//     remember that the attempt is unsure).
//  3. Ordered shutdown: Close releases the sink; Close twice is safe; a
//     Write after Close fails. Closing never commits or discards rows that
//     Write acknowledged.
//
// A [Transactional] sink (the Kafka sink) does not store rows itself: it
// queues them in Batch.Txn, the Kafka transaction that also carries the
// checkpoint's state changes, so its rows become visible to read_committed
// consumers exactly when the checkpoint commits, and never otherwise.
//
// # Adding a sink
//
// Implement [Sink] in a sub-package; read a batch part by part ([Batch.Parts]
// and the columns of each part, or [Batch.Row]), since a batch joins the
// partitions' buffers; satisfy the contract above; pass the conformance
// suite, sinks/sinktest, with a harness that reads the destination back (see
// the existing sinks' conformance tests); and add its flags to
// cmd/firstseen's --sink. Destinations: sinks/clickhouse (the production
// table), sinks/kafka (an enriched topic), sinks/filesink (files for a data
// lake).
package sinks

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/operators"
)

// Sink is a destination for enriched rows; see the package documentation
// for the exactly-once contract.
type Sink interface {
	// Write stores every row of b durably. It returns nil only when the
	// destination has acknowledged all of them. It may be called again with
	// the same batch after an error.
	Write(ctx context.Context, b *Batch) error
	// Close releases the sink's resources. It is safe to call twice.
	Close() error
}

// Transactional is a sink whose Write queues the rows in Batch.Txn instead
// of storing them: they are committed, atomically, with the checkpoint.
type Transactional interface {
	Sink
	// Transactional marks the sink; it does nothing.
	Transactional()
}

// Txn is the checkpoint's Kafka transaction, as a transactional sink sees
// it.
type Txn interface {
	// Add queues r in the transaction. Its Topic and Partition must be set;
	// Key, Value and Headers are copied, so r may be reused at once.
	Add(r *kgo.Record)
}

// Batch is a column-oriented buffer of rows. Appending reuses the buffer's
// memory after Reset, so a steady stream of rows does not allocate.
//
// A batch can also be a join of other batches (see [Batch.Join]): the engine
// hands a sink the rows of every partition of an epoch that way, without
// copying them into one buffer. A sink reads a batch with Len and Row, or
// part by part with Parts and the columns of each part.
type Batch struct {
	// Epoch is the checkpoint epoch the rows belong to.
	Epoch uint64
	// Writer names the process writing the batch (its instance id), so
	// that a later process can tell its requests: Epoch is a count of the
	// writer's own checkpoints.
	Writer string
	// Retry says rows of the batch may already be stored, by an attempt
	// that crashed while writing them (listed in Unsure when known): the
	// sink must store only the rows that are not there yet, telling rows
	// apart by (Partition, Offset). Replay makes the rows identical to the
	// first attempt's.
	Retry bool
	// Unsure lists the earlier attempts that may have stored rows of this
	// batch, possibly by other writers (a replica that died while writing
	// a partition it owned): a sink whose writes may still be in flight
	// after their writer died waits for them to end.
	Unsure []Attempt
	// Txn is the checkpoint's Kafka transaction, set for the Write of a
	// [Transactional] sink only.
	Txn Txn

	// The columns hold the rows appended to this batch; a joined batch has
	// its rows in its parts, and its own columns are empty.
	UUID      []operators.UUID
	EventTime []int64 // epoch ms
	EventDate []int32 // days since 1970-01-01 in the pipeline's zone
	FirstSeen []int64 // epoch ms
	IsNew     []bool
	Late      []bool
	Partition []int32
	Offset    []int64
	Timestamp []int64 // Kafka record timestamp, epoch ms
	payloadAt []int32 // end of each row's payload in payloads
	payloads  []byte

	parts []*Batch // set by Join
}

// Attempt names one write of a batch: who wrote it, and their epoch.
type Attempt struct {
	Writer string
	Epoch  uint64
}

// Append copies r into the batch.
func (b *Batch) Append(r *operators.Row) {
	if len(b.parts) > 0 {
		panic("sinks: Append to a joined batch")
	}
	b.UUID = append(b.UUID, r.UUID)
	b.EventTime = append(b.EventTime, r.EventTime)
	b.EventDate = append(b.EventDate, r.EventDate)
	b.FirstSeen = append(b.FirstSeen, r.FirstSeen)
	b.IsNew = append(b.IsNew, r.IsNew)
	b.Late = append(b.Late, r.Late)
	b.Partition = append(b.Partition, r.Partition)
	b.Offset = append(b.Offset, r.Offset)
	b.Timestamp = append(b.Timestamp, r.Timestamp)
	b.payloads = append(b.payloads, r.Payload...)
	b.payloadAt = append(b.payloadAt, int32(len(b.payloads)))
}

// AppendBatch copies every row of o into b.
func (b *Batch) AppendBatch(o *Batch) {
	if len(b.parts) > 0 {
		panic("sinks: AppendBatch to a joined batch")
	}
	for _, o := range o.Parts() {
		base := int32(len(b.payloads))
		b.UUID = append(b.UUID, o.UUID...)
		b.EventTime = append(b.EventTime, o.EventTime...)
		b.EventDate = append(b.EventDate, o.EventDate...)
		b.FirstSeen = append(b.FirstSeen, o.FirstSeen...)
		b.IsNew = append(b.IsNew, o.IsNew...)
		b.Late = append(b.Late, o.Late...)
		b.Partition = append(b.Partition, o.Partition...)
		b.Offset = append(b.Offset, o.Offset...)
		b.Timestamp = append(b.Timestamp, o.Timestamp...)
		b.payloads = append(b.payloads, o.payloads...)
		for _, at := range o.payloadAt {
			b.payloadAt = append(b.payloadAt, base+at)
		}
	}
}

// Join adds the rows of parts, in order, to b without copying them: b
// refers to the parts' memory until Reset, and the parts must not change
// meanwhile. b must not have rows of its own (from Append).
func (b *Batch) Join(parts ...*Batch) {
	if len(b.UUID) > 0 {
		panic("sinks: Join into a batch that has rows of its own")
	}
	for _, p := range parts {
		b.parts = append(b.parts, p.Parts()...)
	}
}

// Parts returns the batches that hold b's rows, in order: the parts it
// joined, or b itself. Their columns hold the rows.
func (b *Batch) Parts() []*Batch {
	if len(b.parts) > 0 {
		return b.parts
	}
	return []*Batch{b}
}

// Bytes is roughly the memory the rows hold.
func (b *Batch) Bytes() int {
	n := len(b.payloads) + 64*len(b.UUID)
	for _, p := range b.parts {
		n += p.Bytes()
	}
	return n
}

// Len is the number of rows.
func (b *Batch) Len() int {
	n := len(b.UUID)
	for _, p := range b.parts {
		n += p.Len()
	}
	return n
}

// part returns the part that holds row i of a joined batch, and the row's
// index in it.
func (b *Batch) part(i int) (*Batch, int) {
	j := i
	for _, p := range b.parts {
		n := p.Len()
		if j < n {
			return p, j
		}
		j -= n
	}
	panic(fmt.Sprintf("sinks: row %d of a batch of %d rows", i, b.Len()))
}

// Payload returns row i's payload; it aliases the batch's memory.
func (b *Batch) Payload(i int) []byte {
	if len(b.parts) > 0 {
		p, j := b.part(i)
		return p.Payload(j)
	}
	start := int32(0)
	if i > 0 {
		start = b.payloadAt[i-1]
	}
	return b.payloads[start:b.payloadAt[i]]
}

// Row copies row i into r; r.Payload aliases the batch's memory.
func (b *Batch) Row(i int, r *operators.Row) {
	if len(b.parts) > 0 {
		p, j := b.part(i)
		p.Row(j, r)
		return
	}
	*r = operators.Row{UUID: b.UUID[i], EventTime: b.EventTime[i], EventDate: b.EventDate[i],
		FirstSeen: b.FirstSeen[i], IsNew: b.IsNew[i], Late: b.Late[i], Partition: b.Partition[i],
		Offset: b.Offset[i], Timestamp: b.Timestamp[i], Payload: b.Payload(i)}
}

// A batch keeps at most four times the memory its last rows used, and at
// least keepRows rows and keepBytes bytes of payload, for the next rows:
// one huge epoch must not pin its memory for good.
const (
	keepRows  = 16 << 10
	keepBytes = 4 << 20
)

// Reset empties the batch (a joined batch lets go of its parts). It keeps
// its memory for the next rows, unless that is much more than the rows it
// just held needed.
func (b *Batch) Reset() {
	b.Epoch, b.Retry, b.Writer, b.Unsure, b.Txn = 0, false, "", b.Unsure[:0], nil
	clear(b.parts)
	b.parts = b.parts[:0]
	if n := len(b.UUID); cap(b.UUID) > max(4*n, keepRows) {
		b.UUID, b.EventTime, b.EventDate, b.FirstSeen = nil, nil, nil, nil
		b.IsNew, b.Late, b.Partition, b.Offset, b.Timestamp, b.payloadAt = nil, nil, nil, nil, nil, nil
	}
	if n := len(b.payloads); cap(b.payloads) > max(4*n, keepBytes) {
		b.payloads = nil
	}
	b.UUID, b.EventTime, b.EventDate, b.FirstSeen = b.UUID[:0], b.EventTime[:0], b.EventDate[:0], b.FirstSeen[:0]
	b.IsNew, b.Late, b.Partition, b.Offset, b.Timestamp = b.IsNew[:0], b.Late[:0], b.Partition[:0], b.Offset[:0], b.Timestamp[:0]
	b.payloadAt, b.payloads = b.payloadAt[:0], b.payloads[:0]
}
