// Package repartition re-keys an input topic by user uuid, exactly once, into
// an internal topic that firstseen's processor then reads.
//
// Why. firstseen keeps each source partition's users apart (watermarks and
// state are per partition), so all records of a user must be on one
// partition: the one Kafka's default partitioner (murmur2) picks for the
// canonical uuid string as key, operators.PartitionOf. When producers keyed
// by something else (a session id, nothing, a non-canonical spelling of the
// uuid), Run copies every input record to Output with
//
//   - key = the canonical uuid (lower case, dashed), partition =
//     operators.PartitionOf(uuid, output partitions), set explicitly (a
//     manual partitioner), so no client default can move a user;
//   - for an unkeyable record (not JSON, not an object, no uuid member, a
//     uuid ParseUUID does not accept, or JSON that is broken elsewhere, i.e.
//     any record operators.Decoder refuses before it gets to the event time)
//     the original key, on partition (input partition mod output
//     partitions), so it reaches the processor, which sends it to its
//     dead-letter topic;
//   - the original value, headers and Kafka timestamp (set explicitly),
//     followed by three headers naming the record it was copied from:
//     HeaderOriginTopic, HeaderOriginPartition and HeaderOriginOffset
//     (decimal strings). A record repartitioned twice carries two sets; the
//     last one names its immediate origin.
//
// A record with a good uuid but a bad or missing event time is keyed by its
// uuid: the processor refuses it on that user's partition.
//
// Order. An input partition is read in order and each user's records go to
// one output partition in that order, so the records of one user from one
// input partition keep their relative order. Records of one user from two
// input partitions interleave in whatever order the two are read.
//
// Why transactions. The copy must neither lose nor duplicate a record, even
// when the process is killed at any moment or the group rebalances: a
// duplicate would be counted twice downstream, and the processor's own
// exactly-once checkpoints start from what is in Output. Run consumes the
// input in a consumer group (Group, shared by all replicas) with
// read_committed, and writes with a transactional producer: each
// transaction holds the copies of what was read in the last
// CommitInterval together with the group's new input offsets
// (TxnOffsetCommit), so both become visible atomically or not at all. This
// is franz-go's kgo.GroupTransactSession, used as its EOS example does
// (Begin, produce the copies of what was polled, End with TryCommit), with
// two departures: a transaction spans the polls of CommitInterval rather
// than one, and it begins before its first poll (see below). A rebalance
// during a transaction makes End abort it, and the consumer rewinds to the
// committed offsets. KIP-447 (stable offset fetches, always on in
// franz-go) keeps a new owner of a partition from reading its committed
// offset while a transaction that moves it is still open.
//
// A restarted process with the same InstanceID reuses the transactional id
// "<Group>-<InstanceID>", and a session begins its first transaction (which
// initializes the producer id) before it polls: that fences the dead
// process's producer and aborts its open transaction at once, releasing the
// group offsets it had sent, which nobody can read while it is open.
// Without InstanceID the id is random, and an open transaction of a killed
// process holds back read_committed readers of the partitions it wrote to,
// and the group's offsets it moved, until the broker times it out
// (kgo.TransactionTimeout, 40s by default).
//
// Readers of Output (the processor) must read with read_committed.
//
// The output topic is created when missing with the wanted partition count
// (Config.Partitions, or the input's count) and cleanup.policy=delete; an
// existing one with another partition count is an error, never resized:
// the processor's state is per partition.
package repartition
