package engine

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/state"
)

// Partitions come and go with the consumer group (cooperative-sticky
// balancing, static membership with Config.InstanceID):
//
//   - Gained (onAssigned, called by the client before it fetches a new
//     partition): open the partition's database in <state-dir>/partition-N,
//     restore it from the changelog up to the changelog's end, load its
//     checkpoint and any unfinished epoch, hand the task to the coordinator,
//     and tell the client to fetch from the checkpoint's offset. Heartbeats
//     go on meanwhile; a rebalance during the restore cancels it, and the
//     next assignment resumes from the database's position.
//   - Revoked (onRevoked): the coordinator takes a checkpoint, so that the
//     next owner resumes where this one stopped, then stops the partition's
//     task and removes its database.
//   - Lost (the group session expired, or the coordinator could not be
//     reached: another replica may own the partitions now): their tasks
//     stop without a checkpoint (committing anything more could race the
//     new owner), and a checkpoint under way stops writing; their
//     databases stay, so if they come back (a broker restart) they resume
//     from their last checkpoint.
//   - Fenced (the client has not noticed yet, but the group coordinator
//     refuses the membership that a checkpoint's changelog transaction
//     commits the group's offsets under; see fence.go): the transaction is
//     aborted, nothing is written, and the run ends.

// assignment asks the coordinator to start prepared tasks.
type assignment struct {
	tasks []*task
	reply chan error
}

// revocation asks the coordinator to checkpoint and drop partitions, or,
// when they were lost, just to stop them.
type revocation struct {
	partitions []int32
	lost       bool
	reply      chan error
}

// onAssigned prepares newly assigned partitions and returns the offsets to
// fetch them from: their checkpoints', not the group's.
func (p *pipeline) onAssigned(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	parts := offsets[p.cfg.Topic]
	if len(parts) == 0 {
		return offsets, nil
	}
	began := time.Now()
	var nums []int32
	for part := range parts {
		nums = append(nums, part)
	}
	// Restoring first: a checkpoint meanwhile must not mark the process
	// ready again.
	p.status.Restoring.Add(int32(len(nums)))
	defer p.status.Restoring.Add(-int32(len(nums)))
	p.status.Ready.Store(false)
	tasks, users, err := p.prepare(ctx, nums)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Error("cannot take over partitions", "partitions", nums, "err", err)
			select {
			case p.fatal <- err:
			default:
			}
		}
		return nil, err
	}
	took := time.Since(began)
	p.status.RestoredUsers.Add(users)
	p.log.Info("partitions assigned", "partitions", nums, "restored_users", users, "took", took.Round(time.Millisecond),
		"users_per_second", int64(float64(users)/max(took.Seconds(), 1e-3)))
	reply := make(chan error, 1)
	select {
	case p.assigns <- assignment{tasks: tasks, reply: reply}:
		err = <-reply
	case <-p.done:
		err = errors.New("stopping")
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		for _, t := range tasks {
			t.store.db.Close()
			t.db.Close()
		}
		return nil, err
	}
	p.assigned.Store(true)
	out := map[int32]kgo.Offset{}
	for _, t := range tasks {
		if t.next > 0 {
			out[t.partition] = kgo.NewOffset().At(t.next)
		} else {
			out[t.partition] = kgo.NewOffset().AtStart()
		}
	}
	offsets[p.cfg.Topic] = out
	return offsets, nil
}

// onRevoked has the coordinator checkpoint and drop the revoked partitions.
func (p *pipeline) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	parts := revoked[p.cfg.Topic]
	if len(parts) == 0 {
		return
	}
	reply := make(chan error, 1)
	select {
	case p.revokes <- revocation{partitions: parts, reply: reply}:
		<-reply
	case <-p.done: // shutting down: the final checkpoint is taken, the state stays
	case <-ctx.Done():
	}
}

// onLost stops the lost partitions' tasks without a checkpoint: another
// replica may own them already, so nothing more of theirs may be
// committed. Their databases stay (at the last checkpoint); if the group
// gives the partitions back, as after a broker restart, they resume from
// there after reading the changelog's tail.
func (p *pipeline) onLost(ctx context.Context, _ *kgo.Client, lost map[string][]int32) {
	parts := lost[p.cfg.Topic]
	if len(parts) == 0 {
		return
	}
	// First: a checkpoint under way stops writing (checkpoint, retry).
	p.lost.Store(true)
	p.log.Warn("kafka: the consumer group session was lost (the group coordinator could not be reached, or the "+
		"session timed out); dropping the uncommitted work of these partitions, which resume from their last "+
		"checkpoint wherever the group assigns them", "partitions", parts)
	reply := make(chan error, 1)
	select {
	case p.revokes <- revocation{partitions: parts, lost: true, reply: reply}:
		<-reply
	case <-p.done:
	case <-ctx.Done():
	}
}

// prepare opens, restores and loads the given partitions' state and makes
// their tasks, not started yet. It returns the user records restored.
func (p *pipeline) prepare(ctx context.Context, parts []int32) (tasks []*task, users int64, err error) {
	wants, users, err := p.openAndRestore(ctx, parts, true)
	if err != nil {
		return nil, 0, err
	}
	for _, w := range wants {
		t, err := p.newTask(w.partition, w.db)
		if err != nil {
			for _, t := range tasks {
				t.store.db.Close()
			}
			for _, w := range wants {
				w.db.Close()
			}
			return nil, 0, err
		}
		tasks = append(tasks, t)
	}
	return tasks, users, nil
}

// openAndRestore opens the given partitions' databases (creating them)
// and brings each up to the end of its changelog partition, from the
// position its checkpoint records. checkHeader refuses a state written for
// another topic or time zone. On success the databases are open; the
// caller closes them.
func (p *pipeline) openAndRestore(ctx context.Context, parts []int32, checkHeader bool) (wants []*restoreWant, users int64, err error) {
	// What is open so far: a failed return sets wants to nil before this
	// runs, and a database left open would keep its lock, so that the
	// partition's next assignment could not open it (a rebalance cancels a
	// restore).
	var opened []*restoreWant
	defer func() {
		if err != nil {
			for _, w := range opened {
				w.db.Close()
			}
		}
	}()
	for _, part := range parts {
		db, err := state.Open(partitionDir(p.cfg.StateDir, part), p.stateOptions())
		if err != nil {
			return nil, 0, err
		}
		w := &restoreWant{partition: part, db: db}
		opened = append(opened, w)
		cp, ok, err := db.LoadCheckpoint()
		if err != nil {
			return nil, 0, fmt.Errorf("read checkpoint in %s: %w", db.Dir(), err)
		}
		if ok {
			if checkHeader {
				if err := p.checkHeader(db.Dir(), &cp.Header); err != nil {
					return nil, 0, err
				}
			}
			w.from = cp.Partitions[part].ChangelogNext
		}
	}
	// Only the immutable fields: the coordinator updates p.header.
	h := state.Header{Topic: p.cfg.Topic, TopicID: p.topic.id, Group: p.cfg.Group, Tolerance: p.cfg.Operator.Tolerance,
		Timezone: p.cfg.Operator.Calendar.Location().String()}
	if users, err = p.restore(ctx, opened, h); err != nil {
		return nil, 0, err
	}
	return opened, users, nil
}

func (p *pipeline) stateOptions() state.Options {
	o := p.cfg.State
	o.Cache = p.cache
	return o
}

// checkHeader refuses a partition's state written for another topic or
// time zone.
func (p *pipeline) checkHeader(dir string, h *state.Header) error {
	switch {
	case h.Topic != p.cfg.Topic:
		return fmt.Errorf("state dir %s holds the state of topic %q, not %q: use another --state-dir", dir, h.Topic, p.cfg.Topic)
	case h.Timezone != p.cfg.Operator.Calendar.Location().String():
		return fmt.Errorf("state dir %s was built with --timezone %s; it cannot change to %s, because held records "+
			"and days already decided would disagree: keep %s, or start a new --state-dir and --group", dir, h.Timezone,
			p.cfg.Operator.Calendar.Location(), h.Timezone)
	case h.TopicID != ([16]byte{}) && h.TopicID != p.topic.id:
		return fmt.Errorf("topic %q was deleted and created again since the state in %s was written: its offsets "+
			"mean other records now; start with a new --state-dir and --group (and bootstrap) to process the new topic",
			p.cfg.Topic, dir)
	}
	if h.Tolerance != p.cfg.Operator.Tolerance {
		p.log.Warn("the tolerance changed since the last checkpoint; it applies to records from now on",
			"was", h.Tolerance, "now", p.cfg.Operator.Tolerance)
	}
	return nil
}

// newTask makes the task of a partition whose database is restored.
func (p *pipeline) newTask(part int32, db *state.DB) (*task, error) {
	cp, resumed, err := db.LoadCheckpoint()
	if err != nil {
		return nil, err
	}
	pc, ok := cp.Partitions[part]
	resumed = resumed && ok
	store, err := newTaskStore(db)
	if err != nil {
		return nil, err
	}
	t := &task{
		partition: part, topic: p.cfg.Topic, dlqTopic: p.cfg.DLQTopic, maxRows: p.cfg.MaxEpochRows,
		db: db, fatal: p.fatal, changelogNext: pc.ChangelogNext, checkpointed: pc, epochSeen: cp.Epoch,
		store: store,
		rows:  &sinks.Batch{}, spare: &sinks.Batch{},
		in: make(chan []*kgo.Record, 8), ctl: make(chan control, 16), full: p.full, limit: -1,
	}
	opc := p.cfg.Operator
	opc.Partitions = len(p.topic.partitions)
	t.op = operators.New(opc, part, &t.store, t)
	if resumed {
		held, err := db.LoadHeld(part)
		if err != nil {
			store.db.Close()
			return nil, err
		}
		// A held record at or below the watermark was released before the
		// checkpoint; one still here is a deletion the changelog's
		// compaction dropped.
		kept := held[:0]
		for _, h := range held {
			if h.Release > pc.Watermark {
				kept = append(kept, h)
			}
		}
		t.op.Restore(pc.Progress, kept)
		t.next = pc.NextOffset
	}
	in, unfinished, err := db.LoadIntent()
	if err != nil {
		store.db.Close()
		return nil, fmt.Errorf("read the intent in %s: %w", db.Dir(), err)
	}
	if unfinished {
		// The epoch may consist of an idle partition's watermark advance
		// alone (Next == t.next): it is replayed all the same.
		if ip, ok := in.Partitions[part]; ok && ip.Next >= t.next {
			t.limit, t.replay = ip.Next, ip.Advances
			t.replaying.Store(true)
			t.unsure = &sinks.Attempt{Writer: in.Writer, Epoch: in.Epoch}
			t.deadLetterEnds = in.DeadLetterEnds
			p.log.Warn("the last checkpoint of this partition was interrupted while writing: replaying its input to "+
				"finish it without duplicates", "partition", part, "writer", in.Writer, "epoch", in.Epoch,
				"from", t.next, "to", ip.Next)
		}
		t.epochSeen = max(t.epochSeen, in.Epoch)
	}
	if start := p.topic.starts[part]; resumed && start > t.next {
		p.log.Error("records expired from the topic before they were processed: they are lost; "+
			"keep the topic's retention longer than any outage", "partition", part, "from", t.next, "to", start)
	}
	t.pub.Partition = part
	t.publish()
	return t, nil
}

// addTasks starts prepared tasks (coordinator only).
func (p *pipeline) addTasks(tasks []*task) error {
	for _, t := range tasks {
		if old := p.byPartition(t.partition); old != nil {
			return fmt.Errorf("engine: partition %d assigned twice", t.partition)
		}
	}
	ends, err := listOffsets(context.Background(), p.adm.ListCommittedOffsets, p.cfg.Topic)
	if err != nil {
		return fmt.Errorf("kafka topic %q: list end offsets: %w", p.cfg.Topic, err)
	}
	if len(p.tasks) == 0 {
		// A member id that changes while tasks run stops the run at the
		// next checkpoint (groupFence.check).
		p.member, _ = p.cl.GroupMetadata()
	}
	now := p.cfg.Now()
	for _, t := range tasks {
		// Epochs name this writer's sink requests: a new one must not be
		// taken for one a crashed run may still have in flight.
		p.header.Epoch = max(p.header.Epoch, t.epochSeen)
		t.setEnd(ends[t.partition], now)
		t.target = ends[t.partition]
		p.tasks = append(p.tasks, t)
		p.status.addPartitions(&t.pub)
		p.taskWG.Go(t.run)
	}
	p.sortTasks()
	return nil
}

// removeTasks checkpoints, then stops the tasks of the given partitions and
// removes their databases (coordinator only).
//
// Lost partitions (lost) are stopped without a checkpoint and keep their
// databases: their uncommitted work is dropped, and the next owner replays
// it from the last checkpoint.
func (p *pipeline) removeTasks(ctx context.Context, parts []int32, lost bool) error {
	if !lost {
		err := p.checkpoint(ctx)
		if errors.Is(err, errSessionLost) {
			return p.dropLost(ctx, err)
		}
		if err != nil {
			return err
		}
	}
	for _, part := range parts {
		t := p.byPartition(part)
		if t == nil {
			continue
		}
		done := make(chan struct{})
		t.ctl <- control{stop: true, stopped: done}
		<-done
		p.gone.Records += t.pub.Records.Load()
		p.gone.Rows += t.pub.Rows.Load()
		p.gone.Late += t.pub.Late.Load()
		p.gone.New += t.pub.New.Load()
		p.gone.DeadLettered += t.pub.DeadLettered.Load()
		p.status.removePartition(&t.pub)
		p.gone.misplaced += t.misplaced.Load()
		dir := t.db.Dir()
		if err := t.db.Close(); err != nil {
			p.log.Warn("closing the state of a revoked partition", "partition", part, "err", err)
		}
		if lost {
			// The records it had fetched beyond its checkpoint are
			// processed again by the next owner.
		} else if err := os.RemoveAll(dir); err != nil {
			p.log.Warn("removing the state of a revoked partition", "partition", part, "dir", dir, "err", err)
		}
		kept := p.tasks[:0]
		for _, o := range p.tasks {
			if o != t {
				kept = append(kept, o)
			}
		}
		p.tasks = kept
	}
	p.sortTasks()
	if len(p.tasks) == 0 {
		p.member = ""
	}
	if lost {
		p.lost.Store(false)
	} else {
		p.log.Info("partitions revoked: checkpointed and dropped", "partitions", parts)
	}
	return nil
}

// sortTasks orders the tasks by partition and publishes them to the poller.
func (p *pipeline) sortTasks() {
	slices.SortFunc(p.tasks, func(a, b *task) int { return cmp.Compare(a.partition, b.partition) })
	m := make(map[int32]*task, len(p.tasks))
	for _, t := range p.tasks {
		m[t.partition] = t
	}
	p.live.Store(&m)
	p.status.Partitions.Store(int32(len(p.tasks)))
	n := max(1, len(p.tasks))
	for _, t := range p.tasks {
		t.ctl <- control{sizes: &sizes{cache: userCacheBytes / n, buffer: max(p.cfg.BufferBytes/n, minTaskBufferBytes)}}
	}
}

// Restore brings the databases of the given partitions in cfg.StateDir
// (PartitionDir) up to the end of their changelog partitions, creating
// them when missing, and returns the user records applied. Tools use it to
// see the state the replicas see (bootstrap merges into a restored copy).
func Restore(ctx context.Context, cfg Config, parts []int32) (int64, error) {
	cfg.setDefaults()
	p := &pipeline{cfg: cfg, log: cfg.Logger, status: cmp.Or(cfg.Status, &Status{})}
	opts := append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...), kgo.WithLogger(KafkaLogger(p.log))}, cfg.KafkaOptions...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return 0, fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	p.adm = kadm.NewClient(cl)
	p.cache = state.NewCache(cmp.Or(cfg.State.CacheSize, 64<<20))
	defer p.cache.Unref()
	wants, users, err := p.openAndRestore(ctx, parts, false)
	for _, w := range wants {
		w.db.Close()
	}
	return users, err
}

// PartitionDir is where a partition's database lives in a state directory.
func PartitionDir(stateDir string, part int32) string { return partitionDir(stateDir, part) }

// partitionDir is where a partition's database lives.
func partitionDir(stateDir string, part int32) string {
	return filepath.Join(stateDir, "partition-"+strconv.Itoa(int(part)))
}

// checkLayout refuses a state directory written by a firstseen that kept
// all partitions in one database.
func checkLayout(dir string) error {
	if m, _ := filepath.Glob(filepath.Join(dir, "marker.manifest.*")); len(m) > 0 {
		return fmt.Errorf("state dir %s holds a state of an older firstseen (one database for all partitions, no "+
			"changelog): move it away and start with an empty --state-dir, then bootstrap", dir)
	}
	return os.MkdirAll(dir, 0o755)
}

// InstanceName is the name a run with these settings takes in the consumer
// group: instance, or else the name kept in stateDir (created if missing).
// Stages beside the processor (the repartitioner) use it too.
func InstanceName(stateDir, instance string) (string, error) {
	if err := checkLayout(stateDir); err != nil {
		return "", err
	}
	return writerID(stateDir, instance)
}

// writerID names this process in the changelog's transactional id and the
// sink's requests: the instance id, or else a random name kept in the
// state directory, so that a restart with the same directory is the same
// writer (and fences its predecessor's transactions).
func writerID(stateDir, instance string) (string, error) {
	if instance != "" {
		return instance, nil
	}
	path := filepath.Join(stateDir, "writer-id")
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	var r [6]byte
	rand.Read(r[:])
	id := "w" + hex.EncodeToString(r[:])
	if err := os.WriteFile(path, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("state dir %s: %w", stateDir, err)
	}
	return id, nil
}
