package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// A replica can be paused (a long GC pause, a frozen VM, SIGSTOP) or cut
// off from Kafka for longer than its session timeout while it holds an
// epoch in memory. The group then gives its partitions to another replica,
// which restores them and writes on. When the paused one resumes, nothing
// local tells it that it lost them until its next heartbeat is answered,
// and the checkpoint it was about to take would write its epoch's rows a
// second time, and its checkpoint records after the new owner's.
//
// The fence is the group coordinator's own view of the membership, checked
// inside the changelog transactions (KIP-447): each commits the group's
// offsets of the partitions it covers with this process's member id,
// generation and instance id, and the coordinator refuses the commit of a
// member it no longer has (UNKNOWN_MEMBER_ID) or whose instance id another
// process took (FENCED_INSTANCE_ID). The transaction is then aborted: an
// intent that does not commit means no sink write, a state transaction that
// does not commit means no checkpoint record. The offsets go last in each
// transaction, right before its commit, so that the check is as close as
// it can be to the sink write the intents allow. A process paused inside a
// transaction finds it aborted by the broker (changelogTxnTimeout), its
// producer epoch refused (fencedWriter). Either way the run ends
// (errFenced): its tasks hold state that is no longer the partitions'
// latest, and the group client, which has not noticed yet, may still count
// them as its own; a restart rejoins the group and restores whatever it is
// given.
//
// What no fence covers: a pause after the intents committed and before the
// sink sent an INSERT of the epoch (the first, or one of the next months').
// The next owner finds those rows missing and writes them; the INSERT, sent
// on resumption, writes them again (ClickHouse 18.16 has no conditional
// insert). A pause while an INSERT runs on the server is covered by the
// sink: the next owner waits until it has ended.
//
// The membership is also checked locally, where it costs nothing: a
// checkpoint is not taken once the group client has reported the session
// lost (onLost; its partitions are then dropped and the client rejoins), a
// retried sink write stops, and a member id that changed while tasks of the
// old one still run ends the run.
//
// Kafka checks the membership of a TxnOffsetCommit from version 3 (Kafka
// 2.5), and so does kfake, so the fence needs no transactional id per
// partition.

// errSessionLost: the group client reported the session lost (onLost). The
// checkpoint under way is abandoned and every task dropped, uncommitted
// (dropLost); nothing more of theirs is written, and the client rejoins.
var errSessionLost = errors.New("the consumer group session was lost")

// errFenced: the group coordinator refused this process's membership, the
// group client changed it under running tasks, or the broker ended the
// changelog producer's transaction (fencedWriter). The run ends.
var errFenced = errors.New("this process is fenced off its partitions: it writes nothing more for them and stops " +
	"(a restart rejoins the group)")

// fenceRetryFor bounds how long a transaction waits for the group to finish
// a rebalance that made its generation stale.
const fenceRetryFor = 30 * time.Second

// groupFence is the group membership that changelog transactions commit
// offsets under.
type groupFence struct {
	group    string
	instance string // the static member's instance id
	topic    string // the input topic, whose offsets are committed
	topicID  [16]byte
	// session returns the group client's member id and generation, and
	// whether the client has reported the session lost (onLost) since.
	session func() (member string, generation int32, lost bool)
}

// commitOffsets adds the group's offsets to c's open transaction
// (AddOffsetsToTxn, then TxnOffsetCommit) as member owner, the member the
// partitions were assigned to. A stale generation of the same member is a
// rebalance in progress: the commit is retried with the new one (the
// partitions of a member still in the group cannot have moved, since the
// cooperative protocol revokes them from it first).
func (f *groupFence) commitOffsets(ctx context.Context, c *changelogProducer, owner string, offsets map[int32]int64) error {
	if err := f.check(owner); err != nil {
		return err
	}
	id, epoch, err := c.cl.ProducerID(ctx)
	if err != nil {
		return fmt.Errorf("changelog: producer id: %w", err)
	}
	add := kmsg.NewPtrAddOffsetsToTxnRequest()
	add.TransactionalID, add.ProducerID, add.ProducerEpoch, add.Group = c.txnID, id, epoch, f.group
	err = f.retry(ctx, owner, "adding the group's offsets to the transaction", func() (int16, error) {
		resp, err := add.RequestWith(ctx, c.cl)
		if err != nil {
			return 0, err
		}
		return resp.ErrorCode, nil
	})
	if err != nil {
		return err
	}

	parts := make([]int32, 0, len(offsets))
	for part := range offsets {
		parts = append(parts, part)
	}
	slices.Sort(parts)
	rt := kmsg.NewTxnOffsetCommitRequestTopic()
	rt.Topic, rt.TopicID = f.topic, f.topicID // by name up to v5, by id from v6
	for _, part := range parts {
		rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
		rp.Partition, rp.Offset, rp.LeaderEpoch = part, offsets[part], -1
		rt.Partitions = append(rt.Partitions, rp)
	}
	return f.retry(ctx, owner, "committing the group's offsets in the transaction", func() (int16, error) {
		_, generation, _ := f.session()
		req := kmsg.NewPtrTxnOffsetCommitRequest()
		req.TransactionalID, req.Group, req.ProducerID, req.ProducerEpoch = c.txnID, f.group, id, epoch
		req.MemberID, req.Generation, req.InstanceID = owner, generation, &f.instance
		req.Topics = []kmsg.TxnOffsetCommitRequestTopic{rt}
		resp, err := req.RequestWith(ctx, c.cl)
		if err != nil {
			return 0, err
		}
		if resp.Version < 3 {
			return 0, errNoKIP447
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if p.ErrorCode != 0 {
					return p.ErrorCode, nil
				}
			}
		}
		return 0, nil
	})
}

// fencedWriter says so when err is the broker's refusal of the changelog
// producer's epoch: its transaction was aborted, because the process was
// paused for longer than changelogTxnTimeout (its partitions are then
// another replica's after the session timeout, if not yet), or because
// another process runs as the same writer.
func fencedWriter(err error) error {
	if errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) {
		return fmt.Errorf("%w: the broker ended this writer's changelog transaction (paused for longer than the "+
			"transaction timeout, %s, or another process runs as the same writer): %w", errFenced, changelogTxnTimeout, err)
	}
	return err
}

// errNoKIP447: the broker cannot check a transaction's group membership.
var errNoKIP447 = errors.New("the broker answers TxnOffsetCommit below version 3, which does not check the group " +
	"membership (KIP-447): firstseen needs Kafka 2.5 or later")

// check says whether owner is still this process's member id, in a
// session the group client has not reported lost.
func (f *groupFence) check(owner string) error {
	member, generation, lost := f.session()
	switch {
	case lost:
		return errSessionLost
	case member == "" || generation < 0 || member != owner:
		return fmt.Errorf("%w: the group client left member %s of group %q (now %q, generation %d) without "+
			"revoking its partitions: they may have been another replica's meanwhile", errFenced, owner, f.group,
			member, generation)
	}
	return nil
}

// retry calls req until it answers without an error code, retrying
// transient errors with back-off, as long as owner stays the member. A
// refused membership is errFenced; ILLEGAL_GENERATION and
// REBALANCE_IN_PROGRESS are retried for fenceRetryFor.
func (f *groupFence) retry(ctx context.Context, owner, what string, req func() (int16, error)) error {
	began := time.Now()
	backoff := 20 * time.Millisecond
	for {
		code, err := req()
		if err == nil {
			err = kerr.ErrorForCode(code)
		}
		var ke *kerr.Error
		switch {
		case err == nil:
			return nil
		case errors.Is(err, kerr.UnknownMemberID) || errors.Is(err, kerr.GroupIDNotFound):
			return fmt.Errorf("%w: group %q no longer has this process (member %s): its session expired, so its "+
				"partitions may be another replica's; %s refused: %w", errFenced, f.group, owner, what, err)
		case errors.Is(err, kerr.FencedInstanceID):
			return fmt.Errorf("%w: another process joined group %q as instance %q (two replicas with one "+
				"--instance-id?); %s refused: %w", errFenced, f.group, f.instance, what, err)
		case errors.Is(err, kerr.IllegalGeneration) || errors.Is(err, kerr.RebalanceInProgress):
			if time.Since(began) > fenceRetryFor {
				return fmt.Errorf("%w: group %q kept refusing the generation of member %s for %s; %s refused: %w",
					errFenced, f.group, owner, fenceRetryFor, what, err)
			}
		case errors.Is(err, errNoKIP447), errors.As(err, &ke) && !ke.Retriable, ctx.Err() != nil:
			return fmt.Errorf("changelog: %s: %w", what, err)
		}
		if err := f.check(owner); err != nil {
			return err
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done(): // a stop's shutdown timeout bounds the wait
			return fmt.Errorf("changelog: %s: %w (gave up: %v)", what, err, ctx.Err())
		}
		backoff = min(backoff*2, time.Second)
	}
}
