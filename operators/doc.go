// Package operators holds firstseen's enrichment logic as a deterministic
// state machine.
//
// A [FirstSeen] operator owns one source partition. It is fed records
// ([FirstSeen.Process]), watermark advances ([FirstSeen.AdvanceWatermark]) and
// wall-clock ticks ([FirstSeen.Tick]) by the engine, and emits enriched
// [Row]s to an [Emitter]. It performs no I/O and never reads a clock: the
// same inputs in the same order always give the same outputs, which is what
// makes crash recovery by replay exact.
//
// Semantics, per partition:
//
//   - first_seen(user) is the earliest event time known for the user (from
//     bootstrap or any processed record); it only moves earlier.
//   - is_new is 1 when a record's event time is on the same calendar day (in
//     the configured time zone) as first_seen(user).
//   - The watermark W is the highest event time seen minus the tolerance. A
//     record with event time >= W when it arrives is on time; one below W is
//     late, is written with late=1 and decided from what the state knows then.
//   - An on-time record whose user might still turn out to have been active
//     on an earlier day (first_seen is on the record's day and W is before
//     that day's midnight) is held until W passes the midnight. Everything
//     else is emitted at once. Held records are released in (midnight, offset)
//     order.
//   - A partition that sees no record for the idle timeout moves W along the
//     wall clock minus the tolerance, so held records are never stuck.
//
// The input decoding ([Decoder]), uuid normalisation ([ParseUUID]) and the
// calendar ([Calendar]) live here too, because they decide what the operator
// sees; none of them allocates per record.
package operators
