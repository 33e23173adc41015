package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/firstseen/firstseen/engine/enginetest"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
	"github.com/firstseen/firstseen/sinks/kafka"
	"github.com/firstseen/firstseen/sinks/sinktest"
)

// txn is a Kafka transaction of a transactional producer, as the engine's
// checkpoint has one: the records are copied, produced, and committed or
// aborted as a whole.
type txn struct {
	cl  *kgo.Client
	ctx context.Context
	wg  sync.WaitGroup
	mu  sync.Mutex
	err error
}

func (x *txn) Add(r *kgo.Record) {
	c := &kgo.Record{Topic: r.Topic, Partition: r.Partition, Key: append([]byte(nil), r.Key...),
		Value: append([]byte(nil), r.Value...), Timestamp: r.Timestamp}
	for _, h := range r.Headers {
		c.Headers = append(c.Headers, kgo.RecordHeader{Key: h.Key, Value: append([]byte(nil), h.Value...)})
	}
	x.wg.Add(1)
	x.cl.Produce(x.ctx, c, func(_ *kgo.Record, err error) {
		defer x.wg.Done()
		x.mu.Lock()
		defer x.mu.Unlock()
		if err != nil && x.err == nil {
			x.err = err
		}
	})
}

// TestConformance runs the sink conformance suite against a Kafka broker
// (kfake, the real wire protocol, with transactions).
func TestConformance(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var broken atomic.Bool
	// breakBroker makes the broker refuse to end transactions until broken
	// is cleared (a coordinator failing over); the control then removes
	// itself. Failing produce requests instead would not make a write
	// fail: an idempotent producer retries records in flight until the
	// broker is back.
	breakBroker := func() {
		broken.Store(true)
		c.ControlKey(kmsg.EndTxn.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
			if !broken.Load() {
				return nil, nil, false
			}
			c.KeepControl()
			resp := req.ResponseKind().(*kmsg.EndTxnResponse)
			resp.ErrorCode = kerr.UnknownServerError.Code
			return resp, nil, true
		})
	}
	brokers := c.ListenAddrs()
	var topic string
	n := 0
	producer, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.TransactionalID("sinktest"),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.RecordDeliveryTimeout(5*time.Second), kgo.TransactionTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { producer.Close() }()

	sinktest.Run(t, sinktest.Harness{
		Reset: func(t *testing.T) {
			n++
			topic = fmt.Sprintf("enriched-%d", n)
		},
		Open: func(t *testing.T) sinks.Sink {
			s, err := kafka.Open(context.Background(), kafka.Config{Brokers: brokers, Topic: topic, Partitions: 4})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		Write: func(ctx context.Context, t *testing.T, s sinks.Sink, b *sinks.Batch, commit bool) error {
			if err := producer.BeginTransaction(); err != nil {
				return err
			}
			x := &txn{cl: producer, ctx: ctx}
			b.Txn = x
			err := s.Write(ctx, b)
			b.Txn = nil
			x.wg.Wait()
			err = errors.Join(err, x.err)
			end := kgo.TryCommit
			if err != nil || !commit {
				end = kgo.TryAbort // a crash: the broker aborts the transaction
			}
			if eerr := producer.EndTransaction(ctx, end); eerr != nil {
				err = errors.Join(err, eerr)
				// A failed end leaves the producer unusable: start over, as a
				// restarted process would (the same id fences the old one).
				producer.Close()
				if producer, eerr = kgo.NewClient(producer.Opts()...); eerr != nil {
					t.Fatal(eerr)
				}
			}
			return err
		},
		Break: func(t *testing.T, _ sinks.Sink) func() {
			breakBroker()
			return func() { broken.Store(false) }
		},
		Read: func(t *testing.T) []sinks.Line { return readTopic(t, brokers, topic) },
	})
}

// readTopic reads every committed record of the topic and checks each is
// keyed by its uuid, on that key's partition, with the source position in
// its headers.
func readTopic(t *testing.T, brokers []string, topic string) []sinks.Line {
	t.Helper()
	var out []sinks.Line
	for _, r := range enginetest.ReadTopic(t, brokers, topic) {
		l, err := sinks.ParseJSON(r.Value)
		if err != nil {
			t.Fatalf("%s/%d@%d: %v", topic, r.Partition, r.Offset, err)
		}
		if string(r.Key) != l.UUID || r.Partition != operators.Partition(r.Key, 4) {
			t.Errorf("record of %s keyed %q on partition %d", l.UUID, r.Key, r.Partition)
		}
		if h := header(r, kafka.HeaderPartition); h != strconv.Itoa(int(l.Partition)) {
			t.Errorf("%s header %q, row's partition %d", kafka.HeaderPartition, h, l.Partition)
		}
		if h := header(r, kafka.HeaderOffset); h != strconv.FormatInt(l.Offset, 10) {
			t.Errorf("%s header %q, row's offset %d", kafka.HeaderOffset, h, l.Offset)
		}
		out = append(out, l)
	}
	return out
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
