package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/state"
)

// Config configures a pipeline run.
type Config struct {
	Brokers  []string
	Topic    string
	Group    string // names the consumer group whose offsets show progress (default "firstseen")
	DLQTopic string // default Topic + ".dlq"
	StateDir string
	State    state.Options

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

	Sink sinks.Sink
	// IsRetryable tells a transient sink error from a permanent one. Nil
	// treats every error as transient.
	IsRetryable func(error) bool

	Logger       *slog.Logger
	KafkaOptions []kgo.Opt // extra client options (TLS, SASL, ...)
	// Testing holds hooks for tests; nil in production.
	Testing *TestingKnobs
	// Now is the wall clock (default time.Now). It drives idleness only.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.Group == "" {
		c.Group = "firstseen"
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
	if c.IsRetryable == nil {
		c.IsRetryable = func(error) bool { return true }
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
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
	// letters"); an error ends the run there, as a crash would.
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
	db     *state.DB
	cl     *kgo.Client
	adm    *kadm.Client
	tasks  []*task // by partition
	header state.Header
	out    sinks.Batch
	full   chan struct{}
	fatal  chan error
	held   int // held records at the last checkpoint
	// snapshotAt is when the last snapshot was published.
	snapshotAt time.Time
	// recoveredDeadLetterEnds come from the intent of the unfinished epoch.
	recoveredDeadLetterEnds map[int32]int64
}

// Run processes the topic until ctx is cancelled (then it takes a final
// checkpoint within ShutdownTimeout) or, with UntilCaughtUp, until it has
// caught up with the log end it saw at start.
func Run(ctx context.Context, cfg Config) (Stats, error) {
	cfg.setDefaults()
	start := time.Now()
	p := &pipeline{cfg: cfg, log: cfg.Logger, full: make(chan struct{}, 1), fatal: make(chan error, 1)}
	if cfg.Sink == nil {
		return Stats{}, errors.New("engine: no sink configured")
	}
	if cfg.State.Logger == nil {
		cfg.State.Logger = cfg.Logger
	}
	db, err := state.Open(cfg.StateDir, cfg.State)
	if err != nil {
		return Stats{}, err
	}
	p.db = db
	defer db.Close()

	timezone := cfg.Operator.Calendar.Location().String()
	cp, resumed, err := db.LoadCheckpoint()
	if err != nil {
		return Stats{}, fmt.Errorf("read checkpoint in %s: %w", cfg.StateDir, err)
	}
	if resumed {
		if cp.Topic != cfg.Topic {
			return Stats{}, fmt.Errorf("state dir %s holds the state of topic %q, not %q: use another --state-dir", cfg.StateDir, cp.Topic, cfg.Topic)
		}
		if cp.Timezone != timezone {
			return Stats{}, fmt.Errorf("state dir %s was built with --timezone %s; it cannot change to %s, because held records "+
				"and days already decided would disagree: keep %s, or start a new --state-dir", cfg.StateDir, cp.Timezone, timezone, cp.Timezone)
		}
		if cp.Tolerance != cfg.Operator.Tolerance {
			p.log.Warn("the tolerance changed since the last checkpoint; it applies to records from now on",
				"was", cp.Tolerance, "now", cfg.Operator.Tolerance)
		}
	}
	p.header = state.Header{Epoch: cp.Epoch, Topic: cfg.Topic, Group: cfg.Group, Tolerance: cfg.Operator.Tolerance, Timezone: timezone}
	intent, recovering, err := db.LoadIntent()
	if err != nil {
		return Stats{}, fmt.Errorf("read the intent in %s: %w", cfg.StateDir, err)
	}
	if recovering && intent.Epoch != cp.Epoch+1 {
		return Stats{}, fmt.Errorf("state in %s is inconsistent: intent for epoch %d after checkpoint %d", cfg.StateDir, intent.Epoch, cp.Epoch)
	}
	p.recoveredDeadLetterEnds = intent.DeadLetterEnds

	topic, err := p.discover(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return Stats{}, nil // stopped while starting: nothing to save
		}
		return Stats{}, err
	}
	if resumed && cp.TopicID != ([16]byte{}) && cp.TopicID != topic.id {
		return Stats{}, fmt.Errorf("topic %q was deleted and created again since the state in %s was written: its offsets "+
			"mean other records now; start with a new --state-dir (and bootstrap it) to process the new topic", cfg.Topic, cfg.StateDir)
	}
	p.header.TopicID = topic.id
	started := false
	defer func() {
		if !started { // the tasks' goroutines would have closed their readers
			for _, t := range p.tasks {
				t.store.db.Close()
			}
		}
	}()
	offsets := map[int32]kgo.Offset{}
	now := cfg.Now()
	for _, part := range topic.partitions {
		pc, ok := cp.Partitions[part]
		t, err := p.newTask(part, pc, ok)
		if err != nil {
			return Stats{}, err
		}
		t.setEnd(topic.ends[part], now)
		t.target = topic.ends[part]
		if recovering {
			ip, ok := intent.Partitions[part]
			if !ok {
				ip.Next = t.next // not in the unfinished epoch: nothing to replay
			}
			t.limit, t.replay = ip.Next, ip.Advances
		}
		p.tasks = append(p.tasks, t)
		switch {
		case !ok:
			offsets[part] = kgo.NewOffset().AtStart()
			if resumed {
				p.log.Warn("a partition was added to the topic since the last checkpoint: producers' keys now map to other "+
					"partitions, so one user's records may reach two partitions for a while; first_seen stays the minimum", "partition", part)
			}
		default:
			offsets[part] = kgo.NewOffset().At(pc.NextOffset)
			if start := topic.starts[part]; start > pc.NextOffset {
				p.log.Error("records expired from the topic before they were processed: they are lost; "+
					"keep the topic's retention longer than any outage", "partition", part, "from", pc.NextOffset, "to", start)
			}
		}
	}
	for _, t := range p.tasks {
		t.store.setCacheBytes(userCacheBytes / len(p.tasks))
		t.maxBytes = max(p.cfg.BufferBytes/len(p.tasks), minTaskBufferBytes)
	}
	p.log.Info("starting", "topic", cfg.Topic, "partitions", len(topic.partitions), "resumed", resumed,
		"epoch", cp.Epoch, "state_dir", cfg.StateDir)
	if recovering {
		p.log.Warn("the last run stopped while writing a checkpoint: replaying its input to finish it without duplicates",
			"epoch", intent.Epoch)
	}
	if cfg.SnapshotInterval > 0 {
		// Readers see what this run starts from (a bootstrap since the last
		// run, say) rather than a snapshot from before; the first checkpoint
		// publishes again, then every SnapshotInterval.
		if err := db.PublishSnapshot(); err != nil {
			p.log.Warn("publishing a state snapshot for `firstseen state` failed", "err", err)
		}
	}

	opts := append([]kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{cfg.Topic: offsets}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
		kgo.ProducerLinger(5 * time.Millisecond),
		kgo.WithLogger(KafkaLogger(p.log)),
	}, cfg.KafkaOptions...)
	if p.cl, err = kgo.NewClient(opts...); err != nil {
		return Stats{}, fmt.Errorf("kafka client: %w", err)
	}
	defer p.cl.Close()
	p.adm = kadm.NewClient(p.cl)

	// Shutdown order (deferred, so it runs in reverse): stop the poller and
	// the end-offset watcher, then the tasks (waiting until each has closed
	// its state reader), then the Kafka client, then the state database.
	var tasks sync.WaitGroup
	for _, t := range p.tasks {
		tasks.Go(t.run)
	}
	started = true
	defer func() {
		for _, t := range p.tasks {
			t.ctl <- control{stop: true}
		}
		tasks.Wait()
	}()

	srcCtx, stopSource := context.WithCancel(context.Background())
	pollDone := make(chan error, 1)
	go func() { pollDone <- p.poll(srcCtx) }()
	var watcher sync.WaitGroup
	watcher.Go(func() { p.watchEnds(srcCtx, tickInterval(cfg.Operator.IdleTimeout)*5) })
	defer func() { stopSource(); <-pollDone; watcher.Wait() }()

	err = p.coordinate(ctx, pollDone, recovering)
	st := p.stats()
	st.Elapsed = time.Since(start)
	return st, err
}

func (p *pipeline) newTask(part int32, pc state.PartitionCheckpoint, resumed bool) (*task, error) {
	store, err := newTaskStore(p.db)
	if err != nil {
		return nil, err
	}
	t := &task{
		partition: part, topic: p.cfg.Topic, dlqTopic: p.cfg.DLQTopic, maxRows: p.cfg.MaxEpochRows,
		db: p.db, fatal: p.fatal,
		store: store,
		rows:  &sinks.Batch{}, spare: &sinks.Batch{},
		in: make(chan []*kgo.Record, 8), ctl: make(chan control, 16), full: p.full, limit: -1,
	}
	t.op = operators.New(p.cfg.Operator, part, &t.store, t)
	if resumed {
		held, err := p.db.LoadHeld(part)
		if err != nil {
			return nil, err
		}
		t.op.Restore(pc.Progress, held)
		t.next = pc.NextOffset
	}
	t.pos.Store(t.next)
	return t, nil
}

// coordinate runs timers and checkpoints until the run ends.
//
// Checkpoints run under a context that the first stop request does not
// cancel: an in-flight checkpoint finishes, then a final one is taken. Only
// ShutdownTimeout after the stop request is everything cut short.
//
// When recovering, the tasks first replay the unfinished epoch up to its
// limits; that epoch is then checkpointed again (writing only the rows the
// sink does not have yet) before anything else happens.
func (p *pipeline) coordinate(ctx context.Context, pollDone <-chan error, recovering bool) error {
	cpCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopWatch := context.AfterFunc(ctx, func() { time.AfterFunc(p.cfg.ShutdownTimeout, cancel) })
	defer stopWatch()

	cpTimer := time.NewTicker(p.cfg.CheckpointInterval)
	defer cpTimer.Stop()
	tick := time.NewTicker(tickInterval(p.cfg.Operator.IdleTimeout))
	defer tick.Stop()
	final := func(why string) error {
		if recovering {
			p.log.Info(why + " before the unfinished checkpoint was replayed; the next start replays it")
			return nil
		}
		p.log.Info(why+": taking a final checkpoint", "timeout", p.cfg.ShutdownTimeout)
		return p.checkpoint(cpCtx, false)
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
		case <-cpTimer.C:
			if recovering {
				continue
			}
			if err := p.checkpoint(cpCtx, false); err != nil {
				return err
			}
		case <-p.full:
			if recovering {
				continue
			}
			if err := p.checkpoint(cpCtx, false); err != nil {
				return err
			}
			cpTimer.Reset(p.cfg.CheckpointInterval)
		case <-tick.C:
			if recovering {
				replayed := true
				for _, t := range p.tasks {
					replayed = replayed && t.pos.Load() >= t.limit
				}
				if !replayed {
					continue
				}
				if err := p.checkpoint(cpCtx, true); err != nil {
					return err
				}
				for _, t := range p.tasks {
					t.ctl <- control{release: true}
				}
				recovering = false
				p.log.Info("the unfinished checkpoint is complete; resuming", "epoch", p.header.Epoch)
				continue
			}
			done := true
			for _, t := range p.tasks {
				if at, ok := t.caughtUpAt(); ok {
					select {
					case t.ctl <- control{tick: at}:
					default:
					}
				}
				if t.pos.Load() < t.target {
					done = false
				}
			}
			if p.cfg.UntilCaughtUp && done {
				return final("caught up")
			}
		}
	}
}

func tickInterval(idle time.Duration) time.Duration {
	if idle <= 0 {
		idle = time.Minute
	}
	return min(max(idle/10, 10*time.Millisecond), 100*time.Millisecond)
}

func (p *pipeline) stats() Stats {
	var s Stats
	for _, t := range p.tasks {
		s.Records += t.counters.records.Load()
		s.Rows += t.counters.rows.Load()
		s.Late += t.counters.late.Load()
		s.New += t.counters.isNew.Load()
		s.DeadLettered += t.counters.dead.Load()
	}
	s.Checkpoints = p.header.Epoch
	s.Held = int64(p.held)
	return s
}
