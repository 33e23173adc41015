// Package enginetest holds what the integration tests of several packages
// share: producing a generated workload to a Kafka-protocol broker, and
// checking a ClickHouse table and a dead-letter topic against the oracle.
// It is imported only by tests.
package enginetest

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
	"github.com/firstseen/firstseen/sinks"
)

// StartBroker runs a Kafka-protocol broker (kfake) in the test's process
// with topic created; it stops when the test ends.
func StartBroker(t testing.TB, topic string, partitions int) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(int32(partitions), topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Produce writes recs to topic in order, each to its partition.
func Produce(t testing.TB, brokers []string, topic string, recs []workload.Record) {
	t.Helper()
	if err := workload.Produce(context.Background(), brokers, topic, recs); err != nil {
		t.Fatal(err)
	}
}

// ValidCount is the number of rows the oracle expects.
func ValidCount(want []workload.Expected) int {
	n := 0
	for _, e := range want {
		if e.Reason == operators.OK {
			n++
		}
	}
	return n
}

// Count returns the rows in table.
func Count(t testing.TB, conn driver.Conn, table string) int {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(context.Background(), "SELECT count() FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return int(n)
}

type key struct {
	partition int32
	offset    int64
}

// CheckTable compares the whole table with the oracle: exactly one row per
// valid record, with its uuid, is_new and late. It reports missing,
// duplicated and wrong rows, at most ten of each.
func CheckTable(t testing.TB, conn driver.Conn, table string, want []workload.Expected) {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT src_partition, src_offset, uuid, is_new, late FROM "+table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []sinks.Line
	for rows.Next() {
		var l sinks.Line
		var isNew, late uint8
		if err := rows.Scan(&l.Partition, &l.Offset, &l.UUID, &isNew, &late); err != nil {
			t.Fatal(err)
		}
		l.IsNew, l.Late = isNew == 1, late == 1
		got = append(got, l)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	CheckLines(t, "table "+table, got, want)
}

// CheckLines compares the rows a sink stored (read back as lines) with the
// oracle: exactly one row per valid record, with its uuid, is_new and late.
// It reports missing, duplicated, wrong and extra rows.
func CheckLines(t testing.TB, what string, lines []sinks.Line, want []workload.Expected) {
	t.Helper()
	got := map[key]string{}
	var dups, missing, wrong int
	for _, l := range lines {
		k := key{l.Partition, l.Offset}
		if _, dup := got[k]; dup {
			if dups++; dups <= 10 {
				t.Errorf("%s: duplicate row for partition %d offset %d", what, l.Partition, l.Offset)
			}
		}
		got[k] = fmt.Sprintf("%s is_new=%d late=%d", l.UUID, b01(l.IsNew), b01(l.Late))
	}
	valid := 0
	for _, e := range want {
		if e.Reason != operators.OK {
			continue
		}
		valid++
		exp := fmt.Sprintf("%s is_new=%d late=%d", e.UUID, b01(e.IsNew), b01(e.Late))
		g, ok := got[key{e.Partition, e.Offset}]
		switch {
		case !ok:
			if missing++; missing <= 10 {
				t.Errorf("%s: missing row for partition %d offset %d", what, e.Partition, e.Offset)
			}
		case g != exp:
			if wrong++; wrong <= 10 {
				t.Errorf("%s: partition %d offset %d: got %s, want %s", what, e.Partition, e.Offset, g, exp)
			}
		}
	}
	if extra := len(got) - (valid - missing); extra > 0 {
		t.Errorf("%s: %d rows that match no valid input record", what, extra)
	}
	t.Logf("%s check: %d rows expected, %d distinct found, %d missing, %d duplicated, %d wrong",
		what, valid, len(got), missing, dups, wrong)
}

// ReadTopicLines reads every committed record of topic (as a consumer with
// isolation.level=read_committed does) up to its end, as rows in JSON.
func ReadTopicLines(t testing.TB, brokers []string, topic string, opts ...kgo.Opt) []sinks.Line {
	t.Helper()
	var out []sinks.Line
	for _, r := range ReadTopic(t, brokers, topic, opts...) {
		l, err := sinks.ParseJSON(r.Value)
		if err != nil {
			t.Fatalf("%s partition %d offset %d: %v", topic, r.Partition, r.Offset, err)
		}
		out = append(out, l)
	}
	return out
}

// ReadTopic reads every committed record of topic up to its end, as a
// consumer with isolation.level=read_committed sees them.
func ReadTopic(t testing.TB, brokers []string, topic string, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	adm, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ends, err := kadm.NewClient(adm).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	left := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			left[o.Partition] = o.Offset
		}
	})
	// With the control records kept, every offset up to the end shows up
	// (a transactional partition ends with a commit or abort marker), so
	// a partition is done when its last record is the one before its end.
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s: %v (partitions not read to their end: %v)", topic, ctx.Err(), left)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if !r.Attrs.IsControl() {
				out = append(out, r)
			}
			if end, ok := left[r.Partition]; ok && r.Offset+1 >= end {
				delete(left, r.Partition)
			}
		})
	}
	return out
}

func b01(b bool) int {
	if b {
		return 1
	}
	return 0
}

// CheckDeadLetters reads the dead-letter topic and checks that it holds every
// malformed record, with its reason and source, and nothing else. With
// allowDuplicates (the dead-letter topic is at least once), a record may be
// there more than once.
func CheckDeadLetters(t testing.TB, brokers []string, sourceTopic string, want []workload.Expected, allowDuplicates bool) {
	t.Helper()
	exp := map[key]string{}
	for _, e := range want {
		if e.Reason != operators.OK {
			exp[key{e.Partition, e.Offset}] = e.Reason.String()
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(sourceTopic+".dlq"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	got := map[key]string{}
	deadline := time.Now().Add(20 * time.Second)
	for len(got) < len(exp) && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			h := map[string]string{}
			for _, x := range r.Headers {
				h[x.Key] = string(x.Value)
			}
			p, _ := strconv.Atoi(h[engine.HeaderPartition])
			off, _ := strconv.ParseInt(h[engine.HeaderOffset], 10, 64)
			k := key{int32(p), off}
			if _, dup := got[k]; dup && !allowDuplicates {
				t.Errorf("dead letter for partition %d offset %d twice", p, off)
			}
			if h[engine.HeaderTopic] != sourceTopic {
				t.Errorf("dead letter source topic %q, want %q", h[engine.HeaderTopic], sourceTopic)
			}
			got[k] = h[engine.HeaderReason]
		})
	}
	if fmt.Sprint(got) != fmt.Sprint(exp) {
		t.Errorf("dead letters differ:\n got %v\nwant %v", got, exp)
	}
}
