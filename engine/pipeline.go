package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/state"
)

// Config configures a pipeline run.
type Config struct {
	Brokers []string
	Topic   string
	// Group is the consumer group that the processes sharing the topic's
	// partitions join (default "firstseen").
	Group string
	// InstanceID makes this process a static member of the group (KIP-345):
	// a restart within the session timeout keeps its partitions. A
	// StatefulSet pod's name is the natural choice. It also names the
	// process in the changelog's transactions and the sink's requests.
	InstanceID string
	// SessionTimeout is how long the group waits for a member that stopped
	// heartbeating before its partitions move to others (default 45s). A
	// static member's restart within it keeps its partitions.
	SessionTimeout time.Duration
	// ChangelogTopic is the compacted topic that every partition's state
	// changes are written to (default Group + "-state").
	ChangelogTopic string
	DLQTopic       string // default Topic + ".dlq"
	StateDir       string
	State          state.Options

	Operator operators.Config // its Calendar's zone is recorded in checkpoints

	CheckpointInterval time.Duration // default 5s
	// MaxEpochRows makes a partition stop reading and ask for a checkpoint
	// when it has buffered this many rows (default 200,000). It bounds memory
	// when the sink is slow.
	MaxEpochRows int
	// BufferBytes bounds the rows and dead letters buffered for the next
	// checkpoint, over all partitions together (default 32 MiB); each
	// partition gets an equal share and, when its share is full, stops
	// reading and asks for a checkpoint. The rows of the checkpoint being
	// written are held beside the next epoch's, so buffers take at most
	// twice this. It bounds memory whatever the throughput, the payload
	// sizes or the sink's speed: at high throughput checkpoints come sooner
	// than CheckpointInterval.
	BufferBytes int
	// UntilCaughtUp makes Run return after processing everything that was in
	// the topic when it started.
	UntilCaughtUp bool
	// ShutdownTimeout bounds the final checkpoint after ctx is cancelled
	// (default 30s).
	ShutdownTimeout time.Duration
	// SnapshotInterval is how often a snapshot of the state is published
	// for `firstseen state` to read while the run holds the state (default
	// 1m; negative: never).
	SnapshotInterval time.Duration

	// Sinks are where the rows go, each exactly once: the plain sinks are
	// written in order at every checkpoint (each retried until it
	// succeeds or fails for good), then the transactional ones
	// (sinks.Transactional) queue their rows in the checkpoint's changelog
	// transaction.
	Sinks []SinkConfig
	// Sink and IsRetryable are a shorthand for a single plain sink named
	// "default" (appended to Sinks).
	Sink        sinks.Sink
	IsRetryable func(error) bool

	Logger       *slog.Logger
	KafkaOptions []kgo.Opt // extra client options (TLS, SASL, ...)
	// Testing holds hooks for tests; nil in production.
	Testing *TestingKnobs
	// Now is the wall clock (default time.Now). It drives idleness only.
	Now func() time.Time
	// Status, when set, is kept up to date for health checks and metrics.
	Status *Status
	// Observer, when set, receives checkpoint and sink-write events (for
	// histograms).
	Observer Observer
}

func (c *Config) setDefaults() {
	if c.Group == "" {
		c.Group = "firstseen"
	}
	if c.ChangelogTopic == "" {
		c.ChangelogTopic = c.Group + "-state"
	}
	if c.DLQTopic == "" {
		c.DLQTopic = c.Topic + ".dlq"
	}
	if c.CheckpointInterval <= 0 {
		c.CheckpointInterval = 5 * time.Second
	}
	if c.MaxEpochRows <= 0 {
		c.MaxEpochRows = 200_000
	}
	if c.BufferBytes <= 0 {
		c.BufferBytes = DefaultBufferBytes
	}
	c.Operator = c.Operator.WithDefaults()
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = time.Minute
	}
	if c.Sink != nil {
		c.Sinks = append(slices.Clip(c.Sinks), SinkConfig{Name: "default", Sink: c.Sink, IsRetryable: c.IsRetryable})
		c.Sink, c.IsRetryable = nil, nil
	}
	for i := range c.Sinks {
		if c.Sinks[i].IsRetryable == nil {
			c.Sinks[i].IsRetryable = func(error) bool { return true }
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// SinkConfig is one destination of the rows.
type SinkConfig struct {
	// Name names the sink in metrics and logs ("clickhouse", "kafka").
	Name string
	Sink sinks.Sink
	// IsRetryable tells a transient error of the sink from a permanent
	// one. Nil treats every error as transient.
	IsRetryable func(error) bool
}

// DefaultBufferBytes is the default of Config.BufferBytes. 32 MiB are
// 150,000-250,000 rows of typical activity logs: at a few hundred thousand
// records a second a checkpoint every second or so, large INSERTs for
// ClickHouse, and a process that stays within a few hundred MiB (see
// docs/performance.md).
const DefaultBufferBytes = 32 << 20

// minTaskBufferBytes is the least buffer a partition gets, however many
// partitions share Config.BufferBytes.
const minTaskBufferBytes = 1 << 20

// TestingKnobs are hooks that let tests put a run in states that are
// otherwise a matter of timing.
type TestingKnobs struct {
	// CrashAt is called at named points of every checkpoint that has rows
	// or dead letters ("before sink write", "after sink write", "after dead
	// letters", "after changelog"); an error ends the run there, as a crash
	// would.
	CrashAt func(point string) error
}

// Stats are a run's totals.
type Stats struct {
	Records      int64 // input records read (valid and malformed)
	Rows         int64 // rows emitted (written at the checkpoints)
	Late         int64
	New          int64
	DeadLettered int64
	Held         int64 // records still held at the end
	Checkpoints  uint64
	Elapsed      time.Duration
}

type pipeline struct {
	cfg    Config
	log    *slog.Logger
	writer string // this process's name in the changelog and the sink's requests
	cache  *state.Cache
	cl     *kgo.Client // group consumer; also produces dead letters
	adm    *kadm.Client
	clog   *changelogProducer
	topic  topicInfo
	tasks  []*task // by partition; owned by the coordinator
	// live is the tasks by partition, for the poller and the end watcher
	// (replaced, never modified, by the coordinator).
	live    atomic.Pointer[map[int32]*task]
	taskWG  sync.WaitGroup
	header  state.Header
	out     sinks.Batch
	full    chan struct{}
	fatal   chan error
	assigns chan assignment
	revokes chan revocation
	done    chan struct{} // closed when the coordinator stops taking requests
	held    int           // held records at the last checkpoint
	// snapshotAt is when the last snapshot was published.
	snapshotAt time.Time
	// assigned: a partition was assigned at least once; restoring counts
	// assignments being prepared.
	assigned  atomic.Bool
	restoring atomic.Int32
	// lost is set when the group client reports the session lost (onLost),
	// until the coordinator has dropped the partitions: no checkpoint is
	// taken meanwhile.
	lost atomic.Bool
	// member is the group member id the tasks' partitions were assigned
	// to ("" without tasks; coordinator only).
	member      string
	misplaced   int64 // records off their uuid's partition, as last reported
	warnedAt    time.Time
	status      *Status
	observer    Observer
	checkpoints uint64
	// gone holds the totals of the tasks of partitions this process no
	// longer owns.
	gone struct {
		Stats
		misplaced int64
	}
}

// Run processes the topic's partitions that the consumer group assigns to
// this process until ctx is cancelled (then it takes a final checkpoint
// within ShutdownTimeout) or, with UntilCaughtUp, until it has caught up
// with the log ends it saw when its partitions were assigned.
func Run(ctx context.Context, cfg Config) (Stats, error) {
	cfg.setDefaults()
	start := time.Now()
	if len(cfg.Sinks) == 0 {
		return Stats{}, errors.New("engine: no sink configured")
	}
	if cfg.State.Logger == nil {
		cfg.State.Logger = cfg.Logger
	}
	p := &pipeline{cfg: cfg, log: cfg.Logger, full: make(chan struct{}, 1), fatal: make(chan error, 1),
		assigns: make(chan assignment), revokes: make(chan revocation), done: make(chan struct{}), status: cfg.Status}
	if p.status == nil {
		p.status = &Status{}
	}
	p.observer = cmp.Or[Observer](cfg.Observer, nopObserver{})
	m := map[int32]*task{}
	p.live.Store(&m)
	if err := checkLayout(cfg.StateDir); err != nil {
		return Stats{}, err
	}
	writer, err := writerID(cfg.StateDir, cfg.InstanceID)
	if err != nil {
		return Stats{}, err
	}
	p.writer = writer
	timezone := cfg.Operator.Calendar.Location().String()
	p.header = state.Header{Topic: cfg.Topic, Group: cfg.Group, Tolerance: cfg.Operator.Tolerance, Timezone: timezone}

	p.topic, err = p.discover(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return Stats{}, nil // stopped while starting: nothing to save
		}
		return Stats{}, err
	}
	p.header.TopicID = p.topic.id
	p.cache = state.NewCache(cmp.Or(cfg.State.CacheSize, 64<<20))
	defer p.cache.Unref()
	if p.clog, err = newChangelogProducer(&p.cfg, writer); err != nil {
		return Stats{}, err
	}
	defer p.clog.close()

	// The admin client exists before the group client, whose callbacks
	// (restores) use it from the moment it joins.
	admCl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...), kgo.WithLogger(KafkaLogger(p.log))},
		cfg.KafkaOptions...)...)
	if err != nil {
		return Stats{}, fmt.Errorf("kafka client: %w", err)
	}
	defer admCl.Close()
	p.adm = kadm.NewClient(admCl)
	opts := append([]kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topic),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.DisableAutoCommit(),
		kgo.AdjustFetchOffsetsFn(p.onAssigned),
		kgo.OnPartitionsRevoked(p.onRevoked),
		kgo.OnPartitionsLost(p.onLost),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
		kgo.ProducerLinger(5 * time.Millisecond),
		kgo.WithLogger(KafkaLogger(p.log)),
	}, cfg.KafkaOptions...)
	// Static membership always: by default under the state directory's
	// own name, so that a process restarted on the same directory takes
	// its place in the group at once, keeping its partitions, instead of
	// waiting for the session of its killed predecessor to expire.
	instance := cmp.Or(cfg.InstanceID, writer)
	opts = append(opts, kgo.InstanceID(instance))
	if cfg.SessionTimeout > 0 {
		opts = append(opts, kgo.SessionTimeout(cfg.SessionTimeout), kgo.HeartbeatInterval(max(cfg.SessionTimeout/10, 100*time.Millisecond)))
	}
	if p.cl, err = kgo.NewClient(opts...); err != nil {
		return Stats{}, fmt.Errorf("kafka client: %w", err)
	}
	p.clog.fence = &groupFence{group: cfg.Group, instance: instance, topic: cfg.Topic, topicID: p.topic.id,
		session: p.session}
	p.log.Info("starting", "topic", cfg.Topic, "partitions", len(p.topic.partitions), "group", cfg.Group,
		"instance", instance, "changelog", cfg.ChangelogTopic, "state_dir", cfg.StateDir)

	// Shutdown order (deferred, so it runs in reverse): the coordinator
	// stops taking requests, the poller and the end-offset watcher stop,
	// the tasks stop (each closes its partition's database), then the Kafka
	// client closes, which leaves the group unless membership is static.
	defer p.cl.Close()
	defer p.stopTasks()
	srcCtx, stopSource := context.WithCancel(context.Background())
	pollDone := make(chan error, 1) // the poller's result, for the coordinator
	pollExited := make(chan struct{})
	go func() {
		defer close(pollExited)
		pollDone <- p.poll(srcCtx)
	}()
	var watcher sync.WaitGroup
	watcher.Go(func() { p.watchEnds(srcCtx, tickInterval(cfg.Operator.IdleTimeout)*5) })
	defer func() { stopSource(); <-pollExited; watcher.Wait() }()

	err = p.coordinate(ctx, pollDone)
	close(p.done)
	if err == nil && cfg.UntilCaughtUp {
		// A batch job is done: its partitions need not wait for it to come
		// back (a static member does not leave the group by closing).
		lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if _, err := p.adm.LeaveGroup(lctx, kadm.LeaveGroup(cfg.Group).InstanceIDs(instance)); err != nil {
			p.log.Debug("leaving the consumer group", "err", err)
		}
		cancel()
	}
	st := p.stats()
	st.Elapsed = time.Since(start)
	return st, err
}

// stopTasks stops every task and waits until each has closed its database.
func (p *pipeline) stopTasks() {
	for _, t := range p.tasks {
		t.ctl <- control{stop: true}
	}
	p.taskWG.Wait()
	for _, t := range p.tasks {
		if err := t.db.Close(); err != nil {
			p.log.Warn("closing a partition's state", "partition", t.partition, "err", err)
		}
	}
	p.tasks = nil
}

// coordinate runs timers, checkpoints and the group's assignments and
// revocations until the run ends.
//
// Checkpoints run under a context that the first stop request does not
// cancel: an in-flight checkpoint finishes, then a final one is taken. Only
// ShutdownTimeout after the stop request is everything cut short.
func (p *pipeline) coordinate(ctx context.Context, pollDone <-chan error) error {
	cpCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopWatch := context.AfterFunc(ctx, func() { time.AfterFunc(p.cfg.ShutdownTimeout, cancel) })
	defer stopWatch()

	cpTimer := time.NewTicker(p.cfg.CheckpointInterval)
	defer cpTimer.Stop()
	tick := time.NewTicker(tickInterval(p.cfg.Operator.IdleTimeout))
	defer tick.Stop()
	final := func(why string) error {
		p.log.Info(why+": taking a final checkpoint", "timeout", p.cfg.ShutdownTimeout)
		return p.tryCheckpoint(cpCtx)
	}
	for {
		if ctx.Err() != nil {
			return final("stopping")
		}
		select {
		case <-ctx.Done():
			return final("stopping")
		case err := <-pollDone:
			if err == nil {
				err = errors.New("kafka consumer stopped")
			}
			return err
		case err := <-p.fatal:
			return err
		case a := <-p.assigns:
			a.reply <- p.addTasks(a.tasks)
		case r := <-p.revokes:
			err := p.removeTasks(cpCtx, r.partitions, r.lost)
			r.reply <- err
			if err != nil {
				return err
			}
		case <-cpTimer.C:
			if err := p.tryCheckpoint(cpCtx); err != nil {
				return err
			}
		case <-p.full:
			if err := p.tryCheckpoint(cpCtx); err != nil {
				return err
			}
			cpTimer.Reset(p.cfg.CheckpointInterval)
		case <-tick.C:
			p.status.Alive.Store(time.Now().UnixMilli())
			done := p.assigned.Load() && p.status.Restoring.Load() == 0
			for _, t := range p.tasks {
				if at, ok := t.caughtUpAt(); ok {
					select {
					case t.ctl <- control{tick: at}:
					default:
					}
				}
				if t.pub.NextOffset.Load() < t.target || t.replaying.Load() {
					done = false
				}
			}
			p.reportMisplaced()
			if p.cfg.UntilCaughtUp && done {
				return final("caught up")
			}
		}
	}
}

// tryCheckpoint takes a checkpoint. One abandoned because the group client
// reported the session lost is not an error: see dropLost.
func (p *pipeline) tryCheckpoint(ctx context.Context) error {
	err := p.checkpoint(ctx)
	if errors.Is(err, errSessionLost) {
		return p.dropLost(ctx, err)
	}
	return err
}

// dropLost drops every task, uncommitted, after a checkpoint was abandoned
// because the group client reported the session lost (err): as the
// revocation the client queued would, but at once, since no task may go on
// past an epoch it handed over that was not committed. The client then
// rejoins the group.
func (p *pipeline) dropLost(ctx context.Context, err error) error {
	// Its epoch number may name sink requests sent already: the next
	// checkpoint takes the one after.
	p.header.Epoch++
	parts := make([]int32, 0, len(p.tasks))
	for _, t := range p.tasks {
		parts = append(parts, t.partition)
	}
	p.log.Warn("checkpoint abandoned: the consumer group session was lost; dropping the partitions without it",
		"partitions", parts, "err", err)
	return p.removeTasks(ctx, parts, true)
}

// session is the group membership as the group client sees it: its member
// id and generation, and whether it reported the session lost since.
func (p *pipeline) session() (member string, generation int32, lost bool) {
	member, generation = p.cl.GroupMetadata()
	return member, generation, p.lost.Load()
}

// reportMisplaced warns, at most once a minute, when records arrived on a
// partition other than their uuid's (see operators.PartitionOf): their
// users' state is split between partitions, so their is_new may be wrong.
func (p *pipeline) reportMisplaced() {
	var n int64
	for _, t := range p.tasks {
		n += t.misplaced.Load()
	}
	n += p.gone.misplaced
	p.status.Misplaced.Store(n)
	if n == p.misplaced || time.Since(p.warnedAt) < time.Minute {
		return
	}
	p.log.Warn("records are not on the partition of their user's uuid: producers do not key by the canonical uuid, "+
		"so one user's records reach several partitions, whose states are kept apart, and their is_new may be wrong; "+
		"key records by the canonical uuid (as 'firstseen produce' does) or run with --repartition",
		"misplaced_records", n, "since_last_warning", n-p.misplaced)
	p.misplaced, p.warnedAt = n, time.Now()
}

func tickInterval(idle time.Duration) time.Duration {
	if idle <= 0 {
		idle = time.Minute
	}
	return min(max(idle/10, 10*time.Millisecond), 100*time.Millisecond)
}

func (p *pipeline) stats() Stats {
	s := p.gone.Stats
	for _, t := range p.tasks {
		s.Records += t.pub.Records.Load()
		s.Rows += t.pub.Rows.Load()
		s.Late += t.pub.Late.Load()
		s.New += t.pub.New.Load()
		s.DeadLettered += t.pub.DeadLettered.Load()
	}
	s.Checkpoints = p.checkpoints
	s.Held = int64(p.held)
	return s
}
