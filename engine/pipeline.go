package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
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

	Operator operators.Config
	Timezone string // recorded in checkpoints; the calendar itself is Operator.Calendar

	CheckpointInterval time.Duration // default 5s
	// MaxEpochRows makes a partition stop reading and ask for a checkpoint
	// when it has buffered this many rows (default 200,000). It bounds memory
	// when the sink is slow.
	MaxEpochRows int
	// UntilCaughtUp makes Run return after processing everything that was in
	// the topic when it started.
	UntilCaughtUp bool
	// ShutdownTimeout bounds the final checkpoint after ctx is cancelled
	// (default 30s).
	ShutdownTimeout time.Duration

	Sink sinks.Sink
	// IsRetryable tells a transient sink error from a permanent one. Nil
	// treats every error as transient.
	IsRetryable func(error) bool

	Logger       *slog.Logger
	KafkaOptions []kgo.Opt // extra client options (TLS, SASL, ...)
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
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 30 * time.Second
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
	if c.Timezone == "" {
		c.Timezone = "UTC"
	}
}

// Stats are a run's totals.
type Stats struct {
	Records      int64 // input records read (valid and malformed)
	Rows         int64 // rows written
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
	held   int // held records at the last checkpoint
}

// Run processes the topic until ctx is cancelled (then it takes a final
// checkpoint within ShutdownTimeout) or, with UntilCaughtUp, until it has
// caught up with the log end it saw at start.
func Run(ctx context.Context, cfg Config) (Stats, error) {
	cfg.setDefaults()
	start := time.Now()
	p := &pipeline{cfg: cfg, log: cfg.Logger, full: make(chan struct{}, 1)}
	if cfg.Sink == nil {
		return Stats{}, errors.New("engine: no sink configured")
	}
	db, err := state.Open(cfg.StateDir, cfg.State)
	if err != nil {
		return Stats{}, err
	}
	p.db = db
	defer db.Close()

	cp, resumed, err := db.LoadCheckpoint()
	if err != nil {
		return Stats{}, fmt.Errorf("read checkpoint in %s: %w", cfg.StateDir, err)
	}
	if resumed {
		if cp.Topic != cfg.Topic {
			return Stats{}, fmt.Errorf("state dir %s holds the state of topic %q, not %q: use another --state-dir", cfg.StateDir, cp.Topic, cfg.Topic)
		}
		if cp.Tolerance != cfg.Operator.Tolerance || cp.Timezone != cfg.Timezone {
			p.log.Warn("tolerance or timezone changed since the last checkpoint; it applies to records from now on",
				"was_tolerance", cp.Tolerance, "tolerance", cfg.Operator.Tolerance, "was_timezone", cp.Timezone, "timezone", cfg.Timezone)
		}
	}
	p.header = state.Header{Epoch: cp.Epoch, Topic: cfg.Topic, Group: cfg.Group, Tolerance: cfg.Operator.Tolerance, Timezone: cfg.Timezone}
	intent, recovering, err := db.LoadIntent()
	if err != nil {
		return Stats{}, fmt.Errorf("read the intent in %s: %w", cfg.StateDir, err)
	}
	if recovering && intent.Epoch != cp.Epoch+1 {
		return Stats{}, fmt.Errorf("state in %s is inconsistent: intent for epoch %d after checkpoint %d", cfg.StateDir, intent.Epoch, cp.Epoch)
	}

	partitions, ends, err := p.discover(ctx)
	if err != nil {
		return Stats{}, err
	}
	offsets := map[int32]kgo.Offset{}
	for _, part := range partitions {
		pc, ok := cp.Partitions[part]
		t, err := p.newTask(part, pc, ok)
		if err != nil {
			return Stats{}, err
		}
		t.end.Store(ends[part])
		if recovering {
			ip, ok := intent.Partitions[part]
			if !ok {
				ip.Next = t.next // not in the unfinished epoch: nothing to replay
			}
			t.limit, t.replay = ip.Next, ip.Advances
		}
		p.tasks = append(p.tasks, t)
		if ok {
			offsets[part] = kgo.NewOffset().At(pc.NextOffset)
		} else {
			offsets[part] = kgo.NewOffset().AtStart()
		}
	}
	p.log.Info("starting", "topic", cfg.Topic, "partitions", len(partitions), "resumed", resumed,
		"epoch", cp.Epoch, "state_dir", cfg.StateDir)
	if recovering {
		p.log.Warn("the last run stopped while writing a checkpoint: replaying its input to finish it without duplicates",
			"epoch", intent.Epoch)
	}

	opts := append([]kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{cfg.Topic: offsets}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
		kgo.ProducerLinger(5 * time.Millisecond),
	}, cfg.KafkaOptions...)
	if p.cl, err = kgo.NewClient(opts...); err != nil {
		return Stats{}, fmt.Errorf("kafka client: %w", err)
	}
	defer p.cl.Close()
	p.adm = kadm.NewClient(p.cl)

	// Shutdown order (deferred, so it runs in reverse): stop the poller,
	// then the tasks (waiting until each has closed its state reader), then
	// the Kafka client, then the state database.
	var tasks sync.WaitGroup
	for _, t := range p.tasks {
		tasks.Go(t.run)
	}
	defer func() {
		for _, t := range p.tasks {
			t.ctl <- control{stop: true}
		}
		tasks.Wait()
	}()

	pollCtx, stopPoll := context.WithCancel(context.Background())
	pollDone := make(chan error, 1)
	go func() { pollDone <- p.poll(pollCtx) }()
	defer func() { stopPoll(); <-pollDone }()

	err = p.coordinate(ctx, pollDone, recovering)
	st := p.stats()
	st.Elapsed = time.Since(start)
	return st, err
}

// discover returns the topic's partitions and their log ends.
func (p *pipeline) discover(ctx context.Context) ([]int32, map[int32]int64, error) {
	opts := append([]kgo.Opt{kgo.SeedBrokers(p.cfg.Brokers...), kgo.RetryTimeout(30 * time.Second)}, p.cfg.KafkaOptions...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	topics, err := adm.ListTopics(mctx, p.cfg.Topic)
	if err != nil {
		return nil, nil, fmt.Errorf("kafka %s: cannot read metadata: %w", strings.Join(p.cfg.Brokers, ","), err)
	}
	td, ok := topics[p.cfg.Topic]
	if !ok || errors.Is(td.Err, kerr.UnknownTopicOrPartition) {
		return nil, nil, fmt.Errorf("kafka %s: topic %q does not exist", strings.Join(p.cfg.Brokers, ","), p.cfg.Topic)
	}
	if td.Err != nil {
		return nil, nil, fmt.Errorf("kafka topic %q: %w", p.cfg.Topic, td.Err)
	}
	parts := td.Partitions.Numbers()
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })

	// The dead-letter topic is created with the input's partition count
	// when missing; a broker that forbids it gets a warning, and producing
	// will tell if the topic really is missing.
	if _, err := adm.CreateTopic(mctx, int32(len(parts)), -1, nil, p.cfg.DLQTopic); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		p.log.Warn("cannot create the dead-letter topic", "topic", p.cfg.DLQTopic, "err", err)
	}

	ends := map[int32]int64{}
	lo, err := adm.ListCommittedOffsets(mctx, p.cfg.Topic)
	if err != nil {
		return nil, nil, fmt.Errorf("kafka topic %q: list end offsets: %w", p.cfg.Topic, err)
	}
	lo.Each(func(o kadm.ListedOffset) { ends[o.Partition] = o.Offset })
	return parts, ends, nil
}

func (p *pipeline) newTask(part int32, pc state.PartitionCheckpoint, resumed bool) (*task, error) {
	r, err := p.db.NewReader()
	if err != nil {
		return nil, err
	}
	t := &task{
		partition: part, topic: p.cfg.Topic, dlqTopic: p.cfg.DLQTopic, maxRows: p.cfg.MaxEpochRows, db: p.db,
		store: taskStore{cur: map[operators.UUID]int64{}, prev: map[operators.UUID]int64{}, db: r},
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

// poll fetches records and hands each partition's records to its task.
func (p *pipeline) poll(ctx context.Context) error {
	byPart := map[int32]*task{}
	for _, t := range p.tasks {
		byPart[t.partition] = t
	}
	var lastErr string
	for {
		fs := p.cl.PollRecords(ctx, 10_000)
		if fs.IsClientClosed() || ctx.Err() != nil {
			return nil
		}
		fs.EachError(func(topic string, part int32, err error) {
			if errors.Is(err, context.Canceled) {
				return
			}
			if msg := err.Error(); msg != lastErr {
				p.log.Warn("fetch error; retrying", "topic", topic, "partition", part, "err", err)
				lastErr = msg
			}
		})
		var stopped bool
		fs.EachPartition(func(fp kgo.FetchTopicPartition) {
			t := byPart[fp.Partition]
			if t == nil || stopped {
				return
			}
			if fp.LastStableOffset > 0 {
				t.end.Store(fp.LastStableOffset)
			}
			if len(fp.Records) == 0 {
				return
			}
			select {
			case t.in <- fp.Records:
			case <-ctx.Done():
				stopped = true
			}
		})
		if stopped {
			return nil
		}
	}
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
	target := map[int32]int64{}
	for _, t := range p.tasks {
		target[t.partition] = t.end.Load()
	}
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
			now := p.cfg.Now().UnixMilli()
			done := true
			for _, t := range p.tasks {
				pos := t.pos.Load()
				if pos >= t.end.Load() {
					select {
					case t.ctl <- control{tick: now}:
					default:
					}
				}
				if pos < target[t.partition] {
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

// checkpoint takes one checkpoint; see the package documentation. retry
// says the epoch is a replay of one a crashed run may have partly written.
func (p *pipeline) checkpoint(ctx context.Context, retry bool) error {
	began := time.Now()
	epoch := p.header.Epoch + 1
	reply := make(chan *snapshot, len(p.tasks))
	for _, t := range p.tasks {
		t.ctl <- control{barrier: reply}
	}
	snaps := make([]*snapshot, 0, len(p.tasks))
	for range p.tasks {
		snaps = append(snaps, <-reply)
	}
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].partition < snaps[j].partition })

	p.out.Reset()
	p.out.Epoch, p.out.Retry = epoch, retry
	var dead []*kgo.Record
	batches := make([]*state.Batch, 0, len(snaps))
	for _, s := range snaps {
		p.out.AppendBatch(s.rows)
		dead = append(dead, s.dead...)
		batches = append(batches, s.batch)
	}
	giveBack := func() {
		for _, s := range snaps {
			s.task.ctl <- control{committed: s.rows}
		}
	}
	// A failed checkpoint ends the run: the tasks have moved on from the
	// handed-over epoch, so the next start must replay it from the last
	// committed checkpoint.
	fail := func(err error) error {
		for _, b := range batches {
			b.Close()
		}
		giveBack()
		return fmt.Errorf("checkpoint %d not taken, the next start replays from checkpoint %d: %w", epoch, p.header.Epoch, err)
	}
	if p.out.Len() > 0 {
		// The intent makes a crash from here on recoverable without
		// duplicates: it names the input this epoch covers.
		in := state.Intent{Epoch: epoch, Partitions: make(map[int32]state.IntentPartition, len(snaps))}
		for _, s := range snaps {
			in.Partitions[s.partition] = state.IntentPartition{Next: s.next, Advances: s.advances}
		}
		if err := p.db.WriteIntent(&in); err != nil {
			return fail(fmt.Errorf("write the intent to %s: %w", p.cfg.StateDir, err))
		}
	}
	if err := p.retry(ctx, "sink write", func() error { return p.cfg.Sink.Write(ctx, &p.out) }, p.cfg.IsRetryable); err != nil {
		return fail(err)
	}
	if len(dead) > 0 {
		if err := p.retry(ctx, "dead-letter produce", func() error { return p.cl.ProduceSync(ctx, dead...).FirstErr() }, nil); err != nil {
			return fail(err)
		}
	}
	h := p.header
	h.Epoch, h.Time = epoch, time.Now()
	if err := p.db.Commit(h, batches...); err != nil {
		return fail(fmt.Errorf("commit to %s: %w", p.cfg.StateDir, err))
	}
	p.header = h
	giveBack()

	offsets := kadm.Offsets{}
	var held int
	for _, s := range snaps {
		offsets.Add(kadm.Offset{Topic: p.cfg.Topic, Partition: s.partition, At: s.next, LeaderEpoch: -1})
		held += s.held
	}
	p.held = held
	if _, err := p.adm.CommitOffsets(ctx, p.cfg.Group, offsets); err != nil && ctx.Err() == nil {
		p.log.Debug("committing group offsets for lag monitoring failed", "group", p.cfg.Group, "err", err)
	}
	p.log.Debug("checkpoint", "epoch", epoch, "rows", p.out.Len(), "dead_letters", len(dead), "held", held,
		"took", time.Since(began))
	return nil
}

// retry calls fn until it succeeds, ctx ends, or retryable says no.
func (p *pipeline) retry(ctx context.Context, what string, fn func() error, retryable func(error) bool) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			if attempt > 1 {
				p.log.Info(what+" recovered", "attempts", attempt)
			}
			return nil
		}
		if retryable != nil && !retryable(err) {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w (gave up: %v)", what, err, ctx.Err())
		}
		p.log.Warn(what+" failed; retrying (input is paused until it succeeds)", "attempt", attempt, "retry_in", backoff, "err", err)
		jitter := time.Duration(rand.Int64N(int64(backoff) / 5))
		select {
		case <-time.After(backoff + jitter):
		case <-ctx.Done():
		}
		backoff = min(backoff*2, 30*time.Second)
	}
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
