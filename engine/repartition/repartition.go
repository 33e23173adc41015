package repartition

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/operators"
)

// The headers added to every output record, after the record's own, naming
// the input record it is a copy of. Values are decimal strings (the topic
// name as is).
const (
	HeaderOriginTopic     = "firstseen.origin.topic"
	HeaderOriginPartition = "firstseen.origin.partition"
	HeaderOriginOffset    = "firstseen.origin.offset"
)

// Config configures Run and EnsureTopic.
type Config struct {
	Brokers []string
	Input   string // the producers' topic
	Output  string // the internal, re-keyed topic, e.g. "<group>-repartition"
	// Group is the consumer group of this stage, shared by all replicas
	// (e.g. "<group>-repartition"). Its committed offsets are the
	// stage's progress; they move only with committed transactions.
	Group string
	// InstanceID, optional, is a static group membership id (a pod name)
	// unique among the replicas. It also makes the transactional id
	// "<Group>-<InstanceID>" stable, so that a restart fences the
	// previous process and aborts its open transaction at once. As with
	// any static member, a replica that stops does not leave the group:
	// its partitions wait for it to come back, or for the session
	// timeout (kgo.SessionTimeout, 45s by default) to move them.
	InstanceID string
	// Partitions is the partition count of Output when it is created; 0
	// means the input's count. An existing Output must have this count.
	Partitions int
	UUIDField  string // JSON member holding the uuid; default "uuid"
	TimeField  string // JSON member holding the event time; default "event_time"
	// CommitInterval is how long a transaction collects records before it
	// is committed; default 100ms, at most 30s (well under the default
	// transaction timeout of 40s).
	CommitInterval time.Duration
	Logger         *slog.Logger // default slog.Default()
	// KafkaOptions (TLS, SASL, timeouts) are appended to the options of
	// every client.
	KafkaOptions []kgo.Opt
}

// Defaults.
const (
	DefaultUUIDField      = "uuid"
	DefaultTimeField      = "event_time"
	DefaultCommitInterval = 100 * time.Millisecond
	maxCommitInterval     = 30 * time.Second

	// endTimeout bounds ending a transaction, in particular the last one,
	// ended after ctx is cancelled.
	endTimeout = 20 * time.Second
	// metadataTimeout bounds EnsureTopic's requests.
	metadataTimeout = 30 * time.Second

	// The backoff between transactional sessions after a failure.
	minBackoff, maxBackoff = 500 * time.Millisecond, 30 * time.Second
)

// normalize validates cfg and fills in the defaults.
func (cfg *Config) normalize() error {
	switch {
	case len(cfg.Brokers) == 0:
		return errors.New("repartition: no brokers")
	case cfg.Input == "":
		return errors.New("repartition: no input topic")
	case cfg.Output == "":
		return errors.New("repartition: no output topic")
	case cfg.Input == cfg.Output:
		return fmt.Errorf("repartition: the output topic must differ from the input topic %q", cfg.Input)
	case cfg.Group == "":
		return errors.New("repartition: no consumer group")
	case cfg.Partitions < 0:
		return fmt.Errorf("repartition: negative partition count %d", cfg.Partitions)
	case cfg.CommitInterval < 0 || cfg.CommitInterval > maxCommitInterval:
		return fmt.Errorf("repartition: commit interval %s is not within 0 (the default, %s) and %s", cfg.CommitInterval, DefaultCommitInterval, maxCommitInterval)
	}
	if cfg.UUIDField == "" {
		cfg.UUIDField = DefaultUUIDField
	}
	if cfg.TimeField == "" {
		cfg.TimeField = DefaultTimeField
	}
	if cfg.UUIDField == cfg.TimeField {
		return fmt.Errorf("repartition: the uuid and event-time fields are both %q", cfg.UUIDField)
	}
	if cfg.CommitInterval == 0 {
		cfg.CommitInterval = DefaultCommitInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return nil
}

// transactionalID is the transactional id Run uses: "<Group>-<InstanceID>",
// or "<Group>-" and a random suffix without an InstanceID.
func (cfg *Config) transactionalID() string {
	if cfg.InstanceID != "" {
		return cfg.Group + "-" + cfg.InstanceID
	}
	return cfg.Group + "-" + rand.Text()
}

// permanentError is a failure that retrying cannot fix: Run returns it.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(err error) error {
	if err == nil {
		return nil
	}
	var p *permanentError
	if errors.As(err, &p) {
		return err
	}
	return &permanentError{err}
}

// permanentKafkaErrors are the broker errors that no retry can fix: missing
// rights, a duplicate InstanceID, a record the output topic refuses, a
// broker too old for transactions.
var permanentKafkaErrors = []error{
	kerr.TopicAuthorizationFailed,
	kerr.GroupAuthorizationFailed,
	kerr.ClusterAuthorizationFailed,
	kerr.TransactionalIDAuthorizationFailed,
	kerr.SaslAuthenticationFailed,
	kerr.FencedInstanceID,
	kerr.InvalidTransactionTimeout,
	kerr.UnsupportedVersion,
	kerr.UnsupportedForMessageFormat,
	kerr.MessageTooLarge,
	kerr.RecordListTooLarge,
	kerr.InvalidRecord,
}

// isPermanent tells whether Run must give up on err.
func isPermanent(err error) bool {
	var p *permanentError
	if errors.As(err, &p) {
		return true
	}
	for _, e := range permanentKafkaErrors {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Run copies Input to Output, re-keyed by uuid, until ctx is cancelled; see
// the package documentation. It creates Output when it is missing (see
// EnsureTopic). On cancellation it ends its open transaction (copies not
// yet written when ctx was cancelled fail, and the transaction is then
// aborted; the next owner of the partitions copies them again) and returns
// nil, or the error ending it. A permanent failure (a missing input topic,
// a wrong partition count, missing rights, a duplicate InstanceID, a record
// Output refuses) is returned; other failures restart the transactional
// session after a backoff, with a warning.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.normalize(); err != nil {
		return err
	}
	log := cfg.Logger
	inParts, outParts, err := ensureTopic(ctx, &cfg)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	r := &runner{cfg: &cfg, log: log, txnID: cfg.transactionalID(), copier: newCopier(&cfg, outParts)}
	log.Info("repartition: starting",
		"input", cfg.Input, "input_partitions", inParts,
		"output", cfg.Output, "output_partitions", outParts,
		"group", cfg.Group, "instance_id", cfg.InstanceID, "transactional_id", r.txnID,
		"commit_interval", cfg.CommitInterval)
	defer func() {
		log.Info("repartition: stopped", "records", r.records, "unkeyable", r.unkeyable,
			"transactions", r.committed, "aborted_transactions", r.aborted)
	}()

	r.backoff = minBackoff
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			r.retry(ctx, err)
			if ctx.Err() != nil {
				return nil
			}
			// The output topic may have been deleted and created again
			// (or given partitions) while the session failed: check it
			// again.
			var n int
			if _, n, err = ensureTopic(ctx, &cfg); err != nil {
				if isPermanent(err) {
					return err
				}
				continue
			}
			if n != outParts {
				return permanent(fmt.Errorf("repartition: output topic %q now has %d partitions, had %d", cfg.Output, n, outParts))
			}
		}
		err = r.session(ctx)
		if ctx.Err() != nil || err == nil || isPermanent(err) {
			return err
		}
	}
}

// runner is the state of Run across its transactional sessions.
type runner struct {
	cfg     *Config
	log     *slog.Logger
	txnID   string
	copier  *copier
	backoff time.Duration

	// What committed transactions copied, and how many transactions
	// committed and aborted.
	records, unkeyable, committed, aborted int64
}

// retry logs err and waits for the backoff, which it doubles.
func (r *runner) retry(ctx context.Context, err error) {
	r.log.Warn("repartition: restarting the transactional session", "err", err, "after", r.backoff)
	t := time.NewTimer(r.backoff)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	r.backoff = min(2*r.backoff, maxBackoff)
}

func (r *runner) options() []kgo.Opt {
	cfg := r.cfg
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.WithLogger(engine.KafkaLogger(r.log.With("stage", "repartition"))),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Input),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.TransactionalID(r.txnID),
		kgo.DefaultProduceTopic(cfg.Output),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		// A fetch waits for data for at most this long, and partitions
		// assigned meanwhile are only fetched by the next one: with the
		// default 5s, a partition taken over from a stopped replica
		// could wait that long.
		kgo.FetchMaxWait(500 * time.Millisecond),
		// (The EOS example also passes RequireStableFetchOffsets, which
		// is a deprecated no-op in this franz-go: stable offset fetches
		// are always on.)
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			r.log.Info("repartition: partitions assigned", "partitions", m[cfg.Input])
		}),
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			if len(m[cfg.Input]) > 0 {
				r.log.Info("repartition: partitions revoked", "partitions", m[cfg.Input])
			}
		}),
	}
	if cfg.InstanceID != "" {
		opts = append(opts, kgo.InstanceID(cfg.InstanceID))
	}
	return append(opts, cfg.KafkaOptions...)
}

// session runs one GroupTransactSession, one transaction after another.
// It returns nil when ctx is cancelled.
func (r *runner) session(ctx context.Context) error {
	sess, err := kgo.NewGroupTransactSession(r.options()...)
	if err != nil {
		return permanent(fmt.Errorf("repartition: kafka client: %w", err))
	}
	defer sess.Close()
	for {
		// Each transaction begins before its records are polled. The
		// session's first Begin initializes the producer id, which
		// fences a previous process with the same transactional id and
		// aborts its open transaction; the group's offsets that
		// transaction moved cannot be read until then (KIP-447), so a
		// first poll before it would wait for the broker to time the
		// dead transaction out. A begun transaction costs nothing
		// before its first record is written.
		if err := sess.Begin(); err != nil {
			return fmt.Errorf("repartition: begin transaction (transactional id %q): %w", r.txnID, err)
		}
		if err := r.transaction(ctx, sess); err != nil || ctx.Err() != nil {
			return err
		}
	}
}

// transaction fills the begun transaction with the copies of what is
// polled, from the first records on for CommitInterval, and ends it: it
// commits when every copy was written and no rebalance happened, and
// aborts otherwise (the session then rewinds the consumer to the committed
// offsets).
func (r *runner) transaction(ctx context.Context, sess *kgo.GroupTransactSession) error {
	// Ending is one request (or a few) and must not be cut short by the
	// cancellation that made us stop: End's documentation warns that a
	// cancelled context leaves the client in an invalid state.
	end := func(commit bool) (bool, error) {
		endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), endTimeout)
		defer cancel()
		return sess.End(endCtx, kgo.TransactionEndTry(commit))
	}
	var fs kgo.Fetches
	for fs.NumRecords() == 0 {
		fs = sess.PollFetches(ctx)
		err := r.fetchErrors(fs)
		if ctx.Err() != nil || err != nil {
			// Nothing was written: ending is local.
			if _, endErr := end(false); endErr != nil && err == nil {
				err = fmt.Errorf("repartition: ending an empty transaction: %w", endErr)
			}
			return err
		}
	}
	var n, unkeyable int64
	promise := kgo.AbortingFirstErrPromise(sess.Client())
	produce := func(fs kgo.Fetches) {
		fs.EachRecord(func(rec *kgo.Record) {
			out, keyed := r.copier.copy(rec)
			n++
			if !keyed {
				unkeyable++
			}
			sess.Produce(ctx, out, promise.Promise())
		})
	}
	produce(fs)
	began := time.Now()
	deadline := began.Add(r.cfg.CommitInterval)
	var fetchErr error
	for ctx.Err() == nil && time.Now().Before(deadline) {
		pctx, cancel := context.WithDeadline(ctx, deadline)
		fs := sess.PollFetches(pctx)
		cancel()
		if fetchErr = r.fetchErrors(fs); fetchErr != nil {
			break
		}
		produce(fs)
	}

	// Err waits for every copy to be acknowledged or to fail; a failure
	// has already aborted the buffered rest.
	produceErr := promise.Err()
	committed, err := end(produceErr == nil && fetchErr == nil)
	switch {
	case err != nil:
		r.aborted++
		return fmt.Errorf("repartition: ending a transaction of %d records: %w", n, err)
	case fetchErr != nil:
		r.aborted++
		return fetchErr
	case produceErr != nil:
		r.aborted++
		if ctx.Err() != nil { // copies cancelled by the shutdown
			return nil
		}
		return fmt.Errorf("repartition: producing to %q: %w", r.cfg.Output, produceErr)
	case committed:
		r.committed++
		r.records += n
		r.unkeyable += unkeyable
		r.backoff = minBackoff
		r.log.Debug("repartition: transaction committed", "records", n, "unkeyable", unkeyable, "took", time.Since(began))
	default:
		// A rebalance (or a failed offset commit the session deems
		// abortable): the input is read again from the committed
		// offsets, by us or by the partitions' new owner.
		r.aborted++
		r.log.Info("repartition: transaction aborted after a rebalance; its input will be read again", "records", n)
	}
	return nil
}

// fetchErrors logs the errors in fs and returns the first permanent one.
// Errors of the cancelled poll context and of a closed client are not
// errors here.
func (r *runner) fetchErrors(fs kgo.Fetches) error {
	for _, fe := range fs.Errors() {
		switch {
		case errors.Is(fe.Err, context.Canceled), errors.Is(fe.Err, context.DeadlineExceeded), errors.Is(fe.Err, kgo.ErrClientClosed):
		case isPermanent(fe.Err):
			if fe.Topic == "" {
				return permanent(fmt.Errorf("repartition: consumer group %q: %w", r.cfg.Group, fe.Err))
			}
			return permanent(fmt.Errorf("repartition: consuming topic %q partition %d: %w", fe.Topic, fe.Partition, fe.Err))
		default:
			r.log.Warn("repartition: consuming (the client retries)", "topic", fe.Topic, "partition", fe.Partition, "err", fe.Err)
		}
	}
	return nil
}

// copier makes the output record of an input record.
type copier struct {
	output     string
	partitions int
	dec        *operators.Decoder
	ev         operators.Event
	topics     map[string][]byte // header values, allocated once
	partNames  map[int32][]byte
}

func newCopier(cfg *Config, partitions int) *copier {
	return &copier{
		output:     cfg.Output,
		partitions: partitions,
		dec:        operators.NewDecoder(cfg.UUIDField, cfg.TimeField),
		topics:     map[string][]byte{},
		partNames:  map[int32][]byte{},
	}
}

// copy returns the copy of r for the output topic, and whether it is keyed
// by a uuid. The copy shares r's key and value (franz-go does not reuse
// them).
func (c *copier) copy(r *kgo.Record) (*kgo.Record, bool) {
	out := &kgo.Record{
		Topic:     c.output,
		Value:     r.Value,
		Timestamp: r.Timestamp,
		Headers:   make([]kgo.RecordHeader, 0, len(r.Headers)+3),
	}
	keyed := false
	// The uuid is known when the decoder got past it: the reasons after
	// BadUUID are about the event time. A reason added later is taken as
	// unkeyable, which only costs that record its user's partition.
	switch c.dec.Decode(r.Value, &c.ev) {
	case operators.OK, operators.NoEventTime, operators.BadEventTime, operators.TooFarInFuture:
		keyed = true
		out.Key = c.ev.UUID.AppendCanonical(make([]byte, 0, 36))
		out.Partition = operators.PartitionOf(&c.ev.UUID, c.partitions)
	default:
		out.Key = r.Key
		out.Partition = r.Partition % int32(c.partitions)
	}
	topic, ok := c.topics[r.Topic]
	if !ok {
		topic = []byte(r.Topic)
		c.topics[r.Topic] = topic
	}
	part, ok := c.partNames[r.Partition]
	if !ok {
		part = strconv.AppendInt(nil, int64(r.Partition), 10)
		c.partNames[r.Partition] = part
	}
	out.Headers = append(append(out.Headers, r.Headers...),
		kgo.RecordHeader{Key: HeaderOriginTopic, Value: topic},
		kgo.RecordHeader{Key: HeaderOriginPartition, Value: part},
		kgo.RecordHeader{Key: HeaderOriginOffset, Value: strconv.AppendInt(make([]byte, 0, 20), r.Offset, 10)})
	return out, keyed
}
