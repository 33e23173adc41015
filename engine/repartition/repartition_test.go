package repartition

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/firstseen/firstseen/operators"
)

const (
	inputTopic = "activity"
	// childEnv, when set, makes the test binary a repartitioner process
	// (configured by the variable's JSON value) instead of running tests:
	// the tests kill such processes with SIGKILL.
	childEnv = "FIRSTSEEN_REPARTITION_TEST_CHILD"
)

func TestMain(m *testing.M) {
	if c := os.Getenv(childEnv); c != "" {
		os.Exit(childMain(c))
	}
	os.Exit(m.Run())
}

// TestRandomizedOracle: mis-keyed input in all the uuid spellings, some
// unkeyable records and an aborted input transaction, copied while more
// is produced; every committed input record is in the output exactly
// once, where the contract puts it, unchanged, in order.
func TestRandomizedOracle(t *testing.T) {
	seed := mrand.Uint64()
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 1))
	brokers := startCluster(t, 4)
	users := genUsers(rng, 300)
	const outParts = 6

	var inputs []*input
	first := genInputs(rng, users, 2500, 4)
	produceInputs(t, brokers, first)
	inputs = append(inputs, first...)
	produceAborted(t, brokers, rng, users, 100)

	cfg := Config{Brokers: brokers, Input: inputTopic, Output: "oracle-repartition", Group: "oracle-repartition",
		Partitions: outParts, CommitInterval: 50 * time.Millisecond, Logger: testLogger(t)}
	stop := startRun(t, cfg)
	second := genInputs(rng, users, 2500, 4)
	produceInputs(t, brokers, second)
	inputs = append(inputs, second...)
	waitCopied(t, brokers, cfg.Output, len(inputs), 15*time.Second)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	out := readAll(t, brokers, cfg.Output, outParts, true)
	check(t, inputs, out, outParts)
}

// TestCrashRestartExactlyOnce kills repartitioner processes with SIGKILL
// in the middle of their transactions while input keeps coming, starts
// them again, and checks that the committed output has every input record
// exactly once. The killed transactions' copies are in the log, aborted.
func TestCrashRestartExactlyOnce(t *testing.T) {
	seed := mrand.Uint64()
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 2))
	brokers := startCluster(t, 4)
	users := genUsers(rng, 200)
	const outParts = 4
	cfg := Config{Brokers: brokers, Input: inputTopic, Output: "crash-repartition", Group: "crash-repartition",
		InstanceID: "pod-0", CommitInterval: 200 * time.Millisecond}

	tr := startTrickle(t, brokers, users, mrand.New(mrand.NewPCG(seed, 3)))
	adm := newAdmin(t, brokers)
	var progress int64 // the group's committed offsets, added up
	for i := range 5 {
		p := startChild(t, cfg, false)
		// Once it has committed a transaction it is in the next one
		// (input keeps coming): kill it a random while later.
		progress = waitProgress(t, adm, cfg.Group, progress, p, 15*time.Second)
		time.Sleep(time.Duration(rng.IntN(250)) * time.Millisecond)
		p.kill(t)
		t.Logf("SIGKILL #%d: %d input records committed before", i+1, progress)
	}
	all := tr.stop(t)

	// The last start fences the last killed one and finishes the job.
	cfg.Logger = testLogger(t)
	stop := startRun(t, cfg)
	waitCopied(t, brokers, cfg.Output, len(all), 15*time.Second)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	out := readAll(t, brokers, cfg.Output, outParts, true)
	check(t, all, out, outParts)
	uncommitted := readAll(t, brokers, cfg.Output, outParts, false)
	aborted := len(uncommitted) - len(out)
	t.Logf("%d input records; %d copies in the log, %d of them aborted", len(all), len(uncommitted), aborted)
	if aborted <= 0 {
		t.Errorf("no aborted copies in the output: no kill hit an open transaction")
	}
}

// TestTwoReplicasTakeOver: two replicas share the group while input
// keeps coming; the second joins mid-stream, the first is stopped
// mid-stream and the second takes its partitions over. Output partitions
// default to the input's count.
func TestTwoReplicasTakeOver(t *testing.T) {
	seed := mrand.Uint64()
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 4))
	brokers := startCluster(t, 4)
	users := genUsers(rng, 300)
	cfg := Config{Brokers: brokers, Input: inputTopic, Output: "pair-repartition", Group: "pair-repartition",
		CommitInterval: 50 * time.Millisecond}
	adm := newAdmin(t, brokers)
	tr := startTrickle(t, brokers, users, mrand.New(mrand.NewPCG(seed, 5)))

	a, b := cfg, cfg
	a.Logger = testLogger(t).With("replica", "a")
	b.Logger = testLogger(t).With("replica", "b")
	stopA := startRun(t, a)
	progress := waitProgress(t, adm, cfg.Group, 0, nil, 15*time.Second)
	stopB := startRun(t, b)
	waitOwners(t, adm, cfg.Group, 2, 4, 15*time.Second)
	progress = waitProgress(t, adm, cfg.Group, progress+600, nil, 15*time.Second)
	if err := stopA(); err != nil {
		t.Fatalf("Run (replica a): %v", err)
	}
	t.Logf("replica a stopped; %d input records committed before", progress)
	waitOwners(t, adm, cfg.Group, 1, 4, 15*time.Second)
	waitProgress(t, adm, cfg.Group, progress+200, nil, 15*time.Second)
	inputs := tr.stop(t)
	waitCopied(t, brokers, cfg.Output, len(inputs), 15*time.Second)
	if err := stopB(); err != nil {
		t.Fatalf("Run (replica b): %v", err)
	}
	out := readAll(t, brokers, cfg.Output, 4, true)
	check(t, inputs, out, 4)
}

// TestReplicaKilledWithoutInstanceID: without an InstanceID nothing fences
// a killed replica's transaction: the broker aborts it when it times out,
// and until then the survivor cannot read the offsets it moves (KIP-447)
// and read_committed readers of the output wait at its first record. Short
// session and transaction timeouts keep the test short.
func TestReplicaKilledWithoutInstanceID(t *testing.T) {
	seed := mrand.Uint64()
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 6))
	brokers := startCluster(t, 4, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	users := genUsers(rng, 300)
	cfg := Config{Brokers: brokers, Input: inputTopic, Output: "killed-repartition", Group: "killed-repartition",
		Partitions: 3, CommitInterval: 200 * time.Millisecond}
	adm := newAdmin(t, brokers)
	tr := startTrickle(t, brokers, users, mrand.New(mrand.NewPCG(seed, 7)))

	a := startChild(t, cfg, true)
	progress := waitProgress(t, adm, cfg.Group, 0, a, 15*time.Second)
	b := cfg
	b.Logger = testLogger(t).With("replica", "b")
	b.KafkaOptions = shortTimeouts()
	stopB := startRun(t, b)
	waitOwners(t, adm, cfg.Group, 2, 4, 15*time.Second)
	progress = waitProgress(t, adm, cfg.Group, progress+400, a, 15*time.Second)
	time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond)
	a.kill(t)
	t.Logf("replica a killed; %d input records committed before", progress)
	waitOwners(t, adm, cfg.Group, 1, 4, 15*time.Second)
	progress = waitProgress(t, adm, cfg.Group, progress+200, nil, 15*time.Second)
	inputs := tr.stop(t)
	waitCopied(t, brokers, cfg.Output, len(inputs), 15*time.Second)
	if err := stopB(); err != nil {
		t.Fatalf("Run (replica b): %v", err)
	}
	out := readAll(t, brokers, cfg.Output, 3, true)
	check(t, inputs, out, 3)
	uncommitted := readAll(t, brokers, cfg.Output, 3, false)
	t.Logf("%d copies in the log, %d of them aborted", len(uncommitted), len(uncommitted)-len(out))
}

// shortTimeouts are client options for a group that notices a dead member
// within about a second, and a broker that aborts its transaction as fast.
func shortTimeouts() []kgo.Opt {
	return []kgo.Opt{kgo.SessionTimeout(1500 * time.Millisecond), kgo.HeartbeatInterval(200 * time.Millisecond),
		kgo.RebalanceTimeout(3 * time.Second), kgo.TransactionTimeout(time.Second)}
}

// TestAuthorizationErrors: missing rights on the input topic, the group or
// the transactional id stop Run with an error that says so.
func TestAuthorizationErrors(t *testing.T) {
	allow := func(res kmsg.ACLResourceType, name string, pattern kmsg.ACLResourcePatternType, ops ...kmsg.ACLOperation) []kfake.ACL {
		var acls []kfake.ACL
		for _, op := range ops {
			acls = append(acls, kfake.ACL{Resource: res, Name: name, Pattern: pattern, Operation: op, Allow: true})
		}
		return acls
	}
	lit, pre := kmsg.ACLResourcePatternTypeLiteral, kmsg.ACLResourcePatternTypePrefixed
	topics := slices.Concat(
		allow(kmsg.ACLResourceTypeTopic, inputTopic, lit, kmsg.ACLOperationDescribe, kmsg.ACLOperationRead),
		allow(kmsg.ACLResourceTypeTopic, "auth-", pre, kmsg.ACLOperationAll))
	group := allow(kmsg.ACLResourceTypeGroup, "auth-", pre, kmsg.ACLOperationAll)
	txn := allow(kmsg.ACLResourceTypeTransactionalId, "auth-", pre, kmsg.ACLOperationAll)
	brokers := startCluster(t, 4, kfake.EnableSASL(), kfake.EnableACLs(), kfake.Superuser("PLAIN", "admin", "admin"),
		kfake.User("PLAIN", "stranger", "pw"),
		kfake.User("PLAIN", "nogroup", "pw", slices.Concat(topics, txn)...),
		kfake.User("PLAIN", "notxn", "pw", slices.Concat(topics, group)...))
	admin := []kgo.Opt{kgo.SASL(plain.Auth{User: "admin", Pass: "admin"}.AsMechanism())}
	produceInputs(t, brokers, genInputs(mrand.New(mrand.NewPCG(1, 1)), genUsers(mrand.New(mrand.NewPCG(1, 2)), 10), 100, 4), admin...)

	for _, tc := range []struct {
		user string
		want string
	}{
		{"stranger", `cannot describe the input topic "activity" and the output topic "auth-out": TOPIC_AUTHORIZATION_FAILED`},
		{"nogroup", `consumer group "auth-group": unable to join group session: GROUP_AUTHORIZATION_FAILED`},
		{"notxn", `transactional id "auth-group-notxn"): producer ID has a fatal, unrecoverable error, err: unable to initialize a producer ID due to request failures: TRANSACTIONAL_ID_AUTHORIZATION_FAILED`},
	} {
		t.Run(tc.user, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
			defer cancel()
			err := Run(ctx, Config{Brokers: brokers, Input: inputTopic, Output: "auth-out", Group: "auth-group",
				InstanceID: tc.user, Logger: testLogger(t),
				KafkaOptions: []kgo.Opt{kgo.SASL(plain.Auth{User: tc.user, Pass: "pw"}.AsMechanism())}})
			switch {
			case ctx.Err() != nil:
				t.Fatalf("Run did not fail within 15s (%v)", err)
			case err == nil || !strings.Contains(err.Error(), tc.want):
				t.Fatalf("Run: %v; want an error saying %s", err, tc.want)
			}
			t.Log(err)
		})
	}
}

// TestSessionRestartAfterAFailedCommit: the broker refuses one
// transaction's offset commit (as if the producer had been fenced) and
// one produce request (timed out, which the client retries): Run
// warns, starts a new
// transactional session, and the output is still exactly once.
func TestSessionRestartAfterAFailedCommit(t *testing.T) {
	seed := mrand.Uint64()
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 8))
	c := newCluster(t, 4)
	brokers := c.ListenAddrs()
	users := genUsers(rng, 100)
	const output = "restart-repartition"
	var commits, produces atomic.Int32
	c.ControlKey(int16(kmsg.TxnOffsetCommit), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if commits.Add(1) != 3 {
			return nil, nil, false
		}
		c.DropControl()
		r := req.(*kmsg.TxnOffsetCommitRequest)
		resp := r.ResponseKind().(*kmsg.TxnOffsetCommitResponse)
		resp.SetVersion(r.GetVersion())
		for _, rt := range r.Topics {
			st := kmsg.NewTxnOffsetCommitResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewTxnOffsetCommitResponseTopicPartition()
				sp.Partition, sp.ErrorCode = rp.Partition, kerr.ProducerFenced.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		r := req.(*kmsg.ProduceRequest)
		if r.TransactionID == nil || produces.Add(1) != 5 {
			return nil, nil, false
		}
		c.DropControl()
		resp := r.ResponseKind().(*kmsg.ProduceResponse)
		resp.SetVersion(r.GetVersion())
		for _, rt := range r.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition, sp.ErrorCode = rp.Partition, kerr.RequestTimedOut.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})

	log, logged := captureLogger(t)
	cfg := Config{Brokers: brokers, Input: inputTopic, Output: output, Group: output, InstanceID: "pod-0",
		CommitInterval: 50 * time.Millisecond, Logger: log}
	tr := startTrickle(t, brokers, users, rng)
	stop := startRun(t, cfg)
	// (The controls count requests until they inject their failure.)
	for deadline := time.Now().Add(15 * time.Second); commits.Load() < 3 || produces.Load() < 5; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after 15s, %d offset commits and %d transactional produce requests", commits.Load(), produces.Load())
		}
	}
	adm := newAdmin(t, brokers)
	progress := waitProgress(t, adm, output, 0, nil, 15*time.Second)
	waitProgress(t, adm, output, progress+500, nil, 15*time.Second)
	inputs := tr.stop(t)
	waitCopied(t, brokers, output, len(inputs), 15*time.Second)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	check(t, inputs, readAll(t, brokers, output, 4, true), 4)
	if !strings.Contains(logged(), `level=WARN msg="repartition: restarting the transactional session"`) {
		t.Errorf("no warning about the restart")
	}
}

// TestKillBetweenOffsetCommitAndEnd kills a repartitioner in the narrowest
// window: its transaction's offsets are sent (TxnOffsetCommit) but the
// transaction is not ended. The group's offsets are then unstable
// (KIP-447): nobody can read them until the transaction ends. The restart,
// with the same InstanceID, must fence it and go on at once rather than
// wait for the broker to time it out (40s by default).
func TestKillBetweenOffsetCommitAndEnd(t *testing.T) {
	seed := mrand.Uint64()
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 9))
	c := newCluster(t, 4)
	brokers := c.ListenAddrs()
	users := genUsers(rng, 100)
	cfg := Config{Brokers: brokers, Input: inputTopic, Output: "dangle-repartition", Group: "dangle-repartition",
		InstanceID: "pod-0", CommitInterval: 100 * time.Millisecond}
	inputs := genInputs(rng, users, 1000, 4)
	produceInputs(t, brokers, inputs)

	atEnd, killed := make(chan struct{}), make(chan struct{})
	c.ControlKey(int16(kmsg.EndTxn), func(req kmsg.Request) (kmsg.Response, error, bool) {
		if r := req.(*kmsg.EndTxnRequest); r.TransactionalID != "dangle-repartition-pod-0" || !r.Commit {
			c.KeepControl()
			return nil, nil, false
		}
		close(atEnd)
		c.SleepControl(func() { <-killed })
		return nil, errors.New("the client is gone"), true
	})
	p := startChild(t, cfg, false)
	select {
	case <-atEnd:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		t.Fatalf("no EndTxn within 15s: %s", p.output())
	}
	p.kill(t)
	close(killed)

	more := genInputs(rng, users, 500, 4)
	produceInputs(t, brokers, more)
	inputs = append(inputs, more...)
	cfg.Logger = testLogger(t)
	start := time.Now()
	stop := startRun(t, cfg)
	waitCopied(t, brokers, cfg.Output, len(inputs), 15*time.Second)
	t.Logf("the restart copied everything within %s", time.Since(start).Round(time.Millisecond))
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	check(t, inputs, readAll(t, brokers, cfg.Output, 4, true), 4)
}

// TestTopicChecks: an output topic with a partition count other than the
// one wanted, a compacted output and a missing input are clear errors;
// a missing output is created.
func TestTopicChecks(t *testing.T) {
	brokers := startCluster(t, 4)
	adm := newAdmin(t, brokers)
	create := func(topic string, partitions int32, policy string) {
		t.Helper()
		if _, err := adm.CreateTopic(t.Context(), partitions, -1, map[string]*string{"cleanup.policy": &policy}, topic); err != nil {
			t.Fatal(err)
		}
	}
	create("three", 3, "delete")
	create("compacted", 4, "compact")
	base := Config{Brokers: brokers, Input: inputTopic, Group: "checks", Logger: testLogger(t)}
	for _, tc := range []struct {
		name       string
		output     string
		input      string
		partitions int
		want       []string
	}{
		{"explicit count", "three", "", 6, []string{`output topic "three" has 3 partitions, want 6`, "Config.Partitions"}},
		{"input's count", "three", "", 0, []string{`output topic "three" has 3 partitions, want 4`, `input topic "activity"`}},
		{"compacted", "compacted", "", 4, []string{`"compacted" has cleanup.policy=compact`}},
		{"missing input", "created", "nope", 4, []string{`input topic "nope" does not exist`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			cfg.Output, cfg.Partitions = tc.output, tc.partitions
			if tc.input != "" {
				cfg.Input = tc.input
			}
			ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
			defer cancel()
			_, ensureErr := EnsureTopic(ctx, cfg)
			runErr := Run(ctx, cfg)
			for _, err := range []error{ensureErr, runErr} {
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
			}
		})
	}

	t.Run("created", func(t *testing.T) {
		cfg := base
		cfg.Output, cfg.Partitions = "fresh", 5
		n, err := EnsureTopic(t.Context(), cfg)
		if err != nil || n != 5 {
			t.Fatalf("EnsureTopic = %d, %v; want 5 partitions", n, err)
		}
		td, err := adm.ListTopics(t.Context(), "fresh")
		if err != nil || len(td["fresh"].Partitions) != 5 {
			t.Fatalf("created %v (%v), want 5 partitions", td["fresh"].Partitions.Numbers(), err)
		}
		rcs, err := adm.DescribeTopicConfigs(t.Context(), "fresh")
		if err != nil {
			t.Fatal(err)
		}
		rc, _ := rcs.On("fresh", nil)
		for _, c := range rc.Configs {
			if c.Key == "cleanup.policy" && c.MaybeValue() != "delete" {
				t.Errorf("cleanup.policy=%s, want delete", c.MaybeValue())
			}
		}
		if n, err := EnsureTopic(t.Context(), cfg); err != nil || n != 5 {
			t.Fatalf("EnsureTopic again = %d, %v", n, err)
		}
	})
}

// --- the input and the oracle ---

// input is an input record and what the contract says of its copy.
type input struct {
	rec   *kgo.Record // Partition and, once produced, Offset set
	keyed bool
	user  operators.UUID // when keyed
}

func genUsers(rng *mrand.Rand, n int) []operators.UUID {
	us := make([]operators.UUID, n)
	for i := range us {
		for j := range us[i] {
			us[i][j] = byte(rng.Uint32())
		}
	}
	return us
}

// spell writes u in one of the forms operators.ParseUUID accepts.
func spell(rng *mrand.Rand, u operators.UUID) string {
	s := u.String()
	switch rng.IntN(5) {
	case 0:
		return s
	case 1:
		return strings.ToUpper(s)
	case 2: // mixed case
		b := []byte(s)
		for i := range b {
			if rng.IntN(2) == 0 {
				b[i] = byte(strings.ToUpper(string(b[i]))[0])
			}
		}
		return string(b)
	case 3:
		return strings.ReplaceAll(s, "-", "")
	default:
		return strings.ToUpper(strings.ReplaceAll(s, "-", ""))
	}
}

var seqs atomic.Int64 // makes every value distinct

// genInputs makes n records of users, on random partitions with random
// keys (nil, empty, or bytes that have nothing to do with the user).
// About 5% are unkeyable; another 2% have a good uuid and a bad or missing
// event time, which makes them dead letters later but keyed here.
func genInputs(rng *mrand.Rand, users []operators.UUID, n, partitions int) []*input {
	ins := make([]*input, n)
	for i := range ins {
		seq := seqs.Add(1)
		u := users[rng.IntN(len(users))]
		in := &input{rec: &kgo.Record{
			Topic:     inputTopic,
			Partition: int32(rng.IntN(partitions)),
			Timestamp: time.UnixMilli(1_780_000_000_000 + rng.Int64N(86_400_000)),
		}}
		switch k := rng.IntN(10); {
		case k == 0:
		case k == 1:
			in.rec.Key = []byte{}
		default:
			in.rec.Key = fmt.Appendf(nil, "session-%x", rng.Uint64())
		}
		for h := range rng.IntN(3) {
			in.rec.Headers = append(in.rec.Headers, kgo.RecordHeader{Key: "h" + strconv.Itoa(h), Value: fmt.Appendf(nil, "%d", rng.Uint32())})
		}
		et := in.rec.Timestamp.UnixMilli() - rng.Int64N(60_000)
		switch k := rng.IntN(100); {
		case k < 5:
			in.rec.Value = unkeyable(rng, u, seq)
		case k < 7:
			in.keyed, in.user = true, u
			if k == 5 {
				in.rec.Value = fmt.Appendf(nil, `{"uuid":%q,"seq":%d}`, spell(rng, u), seq)
			} else {
				in.rec.Value = fmt.Appendf(nil, `{"event_time":"yesterday","uuid":%q,"seq":%d}`, spell(rng, u), seq)
			}
		default:
			in.keyed, in.user = true, u
			switch rng.IntN(3) {
			case 0:
				in.rec.Value = fmt.Appendf(nil, `{"uuid":%q,"event_time":%d,"seq":%d}`, spell(rng, u), et, seq)
			case 1:
				in.rec.Value = fmt.Appendf(nil, `{ "seq" : %d, "event_time" : %d, "uuid" : %q, "page": "/a\"b" }`, seq, et, spell(rng, u))
			default:
				in.rec.Value = fmt.Appendf(nil, `{"event_time":%q,"uuid":%q,"seq":%d,"nested":{"uuid":"x"}}`,
					time.UnixMilli(et).UTC().Format(time.RFC3339Nano), spell(rng, u), seq)
			}
		}
		ins[i] = in
	}
	return ins
}

// unkeyable returns a value whose uuid cannot be found or parsed.
func unkeyable(rng *mrand.Rand, u operators.UUID, seq int64) []byte {
	s := u.String()
	switch rng.IntN(11) {
	case 0:
		return nil
	case 1:
		return []byte{}
	case 2:
		return fmt.Appendf(nil, "not json %d", seq)
	case 3:
		return fmt.Appendf(nil, "[%d,2,3]", seq)
	case 4:
		return fmt.Appendf(nil, `{"event_time":1780000000000,"seq":%d}`, seq)
	case 5:
		return fmt.Appendf(nil, `{"uuid":null,"event_time":1780000000000,"seq":%d}`, seq)
	case 6:
		return fmt.Appendf(nil, `{"uuid":12345,"event_time":1780000000000,"seq":%d}`, seq)
	case 7: // braces: operators.ParseUUID does not take them
		return fmt.Appendf(nil, `{"uuid":"{%s}","event_time":1780000000000,"seq":%d}`, s, seq)
	case 8:
		return fmt.Appendf(nil, `{"uuid":%q,"event_time":1780000000000,"seq":%d}`, s[:35], seq)
	case 9: // a good uuid in broken JSON
		return fmt.Appendf(nil, `{"uuid":%q,"event_time":1780000000000,"seq":%d`, s, seq)
	default: // the uuid member under another name
		return fmt.Appendf(nil, `{"UUID":%q,"event_time":1780000000000,"seq":%d}`, s, seq)
	}
}

type origin struct {
	partition int32
	offset    int64
}

// lastHeader returns the value of the last header named key.
func lastHeader(r *kgo.Record, key string) (string, bool) {
	for i := len(r.Headers) - 1; i >= 0; i-- {
		if r.Headers[i].Key == key {
			return string(r.Headers[i].Value), true
		}
	}
	return "", false
}

func originOf(r *kgo.Record) (origin, error) {
	topic, ok1 := lastHeader(r, HeaderOriginTopic)
	p, ok2 := lastHeader(r, HeaderOriginPartition)
	o, ok3 := lastHeader(r, HeaderOriginOffset)
	if !ok1 || !ok2 || !ok3 || topic != inputTopic {
		return origin{}, fmt.Errorf("output %d/%d: origin headers %q", r.Partition, r.Offset, r.Headers)
	}
	pn, err1 := strconv.ParseInt(p, 10, 32)
	on, err2 := strconv.ParseInt(o, 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return origin{}, fmt.Errorf("output %d/%d: origin headers: %w", r.Partition, r.Offset, err)
	}
	return origin{int32(pn), on}, nil
}

// check compares the output, read in order, with the contract for inputs.
func check(t *testing.T, inputs []*input, out []*kgo.Record, outParts int) {
	t.Helper()
	byOrigin := make(map[origin]*input, len(inputs))
	for _, in := range inputs {
		byOrigin[origin{in.rec.Partition, in.rec.Offset}] = in
	}
	seen := make(map[origin]bool, len(inputs))
	type stream struct {
		key       string // the canonical uuid, or "" for the unkeyable
		partition int32  // input partition
	}
	last := map[stream]int64{}
	errs := 0
	fail := func(format string, args ...any) {
		t.Helper()
		if errs++; errs <= 20 {
			t.Errorf(format, args...)
		}
	}
	unkeyed := 0
	for _, r := range out {
		o, err := originOf(r)
		if err != nil {
			fail("%v", err)
			continue
		}
		in := byOrigin[o]
		switch {
		case in == nil:
			fail("output %d/%d: a copy of %v, which is no committed input record", r.Partition, r.Offset, o)
			continue
		case seen[o]:
			fail("output %d/%d: a second copy of %v", r.Partition, r.Offset, o)
			continue
		}
		seen[o] = true
		s := stream{partition: o.partition}
		if in.keyed {
			s.key = in.user.String()
			if string(r.Key) != s.key {
				fail("output %d/%d (%v): key %q, want %q", r.Partition, r.Offset, o, r.Key, s.key)
			}
			if want := operators.PartitionOf(&in.user, outParts); r.Partition != want {
				fail("output %d/%d (%v): partition %d, want %d", r.Partition, r.Offset, o, r.Partition, want)
			}
		} else {
			unkeyed++
			if !bytes.Equal(r.Key, in.rec.Key) || (r.Key == nil) != (in.rec.Key == nil) {
				fail("output %d/%d (%v): unkeyable with key %q, want the original %q", r.Partition, r.Offset, o, r.Key, in.rec.Key)
			}
			if want := o.partition % int32(outParts); r.Partition != want {
				fail("output %d/%d (%v): unkeyable on partition %d, want %d", r.Partition, r.Offset, o, r.Partition, want)
			}
		}
		if !bytes.Equal(r.Value, in.rec.Value) || (r.Value == nil) != (in.rec.Value == nil) {
			fail("output %d/%d (%v): value %q, want %q", r.Partition, r.Offset, o, r.Value, in.rec.Value)
		}
		if got, want := r.Timestamp.UnixMilli(), in.rec.Timestamp.UnixMilli(); got != want {
			fail("output %d/%d (%v): timestamp %d, want %d", r.Partition, r.Offset, o, got, want)
		}
		if n := len(r.Headers) - 3; n < 0 || !slices.EqualFunc(r.Headers[:n], in.rec.Headers, func(a, b kgo.RecordHeader) bool {
			return a.Key == b.Key && bytes.Equal(a.Value, b.Value)
		}) {
			fail("output %d/%d (%v): headers %q, want %q and the origin", r.Partition, r.Offset, o, r.Headers, in.rec.Headers)
		}
		if prev, ok := last[s]; ok && prev >= o.offset {
			fail("output %d/%d: input offset %d of partition %d (user %q) after %d", r.Partition, r.Offset, o.offset, o.partition, s.key, prev)
		}
		last[s] = o.offset
	}
	missing := 0
	for o := range byOrigin {
		if !seen[o] {
			if missing++; missing <= 5 {
				t.Errorf("input %v was not copied", o)
			}
		}
	}
	if missing > 0 || errs > 0 {
		t.Fatalf("%d input records, %d output records: %d missing, %d wrong", len(inputs), len(out), missing, errs)
	}
	t.Logf("%d input records (%d unkeyable) copied exactly once, in order, to %d partitions", len(inputs), unkeyed, outParts)
}

// --- Kafka helpers ---

func startCluster(t *testing.T, partitions int32, opts ...kfake.Opt) []string {
	t.Helper()
	return newCluster(t, partitions, opts...).ListenAddrs()
}

func newCluster(t *testing.T, partitions int32, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(partitions, inputTopic)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func newAdmin(t *testing.T, brokers []string) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

func newProducer(t *testing.T, brokers []string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(inputTopic),
		kgo.RecordPartitioner(kgo.ManualPartitioner())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// produceWith writes the records in order; their offsets are set.
func produceWith(ctx context.Context, cl *kgo.Client, ins []*input) error {
	recs := make([]*kgo.Record, len(ins))
	for i, in := range ins {
		recs[i] = in.rec
	}
	return cl.ProduceSync(ctx, recs...).FirstErr()
}

func produceInputs(t *testing.T, brokers []string, ins []*input, opts ...kgo.Opt) {
	t.Helper()
	cl := newProducer(t, brokers, opts...)
	defer cl.Close()
	if err := produceWith(t.Context(), cl, ins); err != nil {
		t.Fatal(err)
	}
}

// produceAborted writes n good records in a transaction it aborts: they
// must not be copied.
func produceAborted(t *testing.T, brokers []string, rng *mrand.Rand, users []operators.UUID, n int) {
	t.Helper()
	cl := newProducer(t, brokers, kgo.TransactionalID("test-aborted-input"))
	defer cl.Close()
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := produceWith(t.Context(), cl, genInputs(rng, users, n, 4)); err != nil {
		t.Fatal(err)
	}
	if err := cl.EndTransaction(t.Context(), kgo.TryAbort); err != nil {
		t.Fatal(err)
	}
}

// trickle produces input in small batches, 20 records about every 5ms,
// until stopped.
type trickle struct {
	stopping chan struct{}
	done     chan struct{}
	once     sync.Once
	inputs   []*input
	err      error
}

func startTrickle(t *testing.T, brokers []string, users []operators.UUID, rng *mrand.Rand) *trickle {
	t.Helper()
	cl := newProducer(t, brokers)
	tr := &trickle{stopping: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		defer cl.Close()
		for {
			// Not cancelled midway: every record written is known.
			batch := genInputs(rng, users, 20, 4)
			if tr.err = produceWith(t.Context(), cl, batch); tr.err != nil {
				return
			}
			tr.inputs = append(tr.inputs, batch...)
			select {
			case <-tr.stopping:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { tr.once.Do(func() { close(tr.stopping) }); <-tr.done })
	return tr
}

// stop stops producing and returns what was produced.
func (tr *trickle) stop(t *testing.T) []*input {
	t.Helper()
	tr.once.Do(func() { close(tr.stopping) })
	<-tr.done
	if tr.err != nil {
		t.Fatalf("producing input: %v", tr.err)
	}
	return tr.inputs
}

// startRun runs Run in a goroutine; stop cancels it and returns its error.
func startRun(t *testing.T, cfg Config) (stop func() error) {
	t.Helper()
	if os.Getenv("REPARTITION_TEST_KGO") != "" { // franz-go's debug log on stderr
		cfg.KafkaOptions = append(slices.Clip(cfg.KafkaOptions), kgo.WithLogger(kgo.BasicLogger(os.Stderr, kgo.LogLevelDebug,
			func() string { return time.Now().Format("15:04:05.000 ") })))
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				err = errors.New("Run did not return within 30s of the cancellation")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// waitCopied reads the output with read_committed until it has copies of
// want distinct input records.
func waitCopied(t *testing.T, brokers []string, topic string, want int, timeout time.Duration) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	seen := map[origin]bool{}
	for len(seen) < want {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("after %s, %d of %d input records copied", timeout, len(seen), want)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if o, err := originOf(r); err == nil {
				seen[o] = true
			}
		})
	}
}

// waitProgress waits until the group's committed offsets add up to more
// than after, and returns the sum. p, if any, must not exit meanwhile.
func waitProgress(t *testing.T, adm *kadm.Client, group string, after int64, p *child, timeout time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var sum int64
		if offs, err := adm.FetchOffsets(t.Context(), group); err == nil {
			offs.Each(func(o kadm.OffsetResponse) {
				if o.Err == nil {
					sum += o.At
				}
			})
		}
		if sum > after {
			return sum
		}
		if p != nil && p.exited() {
			t.Fatalf("the repartitioner exited: %s", p.output())
		}
		if time.Now().After(deadline) {
			if p != nil {
				p.cmd.Process.Kill()
				t.Fatalf("after %s, the group's offsets still add up to %d; the repartitioner's output: %s", timeout, sum, p.output())
			}
			t.Fatalf("after %s, the group's offsets still add up to %d", timeout, sum)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitOwners waits until the group has members members that each own a
// partition, and that own all partitions between them.
func waitOwners(t *testing.T, adm *kadm.Client, group string, members, partitions int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		owners, owned := 0, 0
		if gs, err := adm.DescribeGroups(t.Context(), group); err == nil {
			for _, m := range gs[group].Members {
				if c, ok := m.Assigned.AsConsumer(); ok && len(c.Topics) > 0 && len(c.Topics[0].Partitions) > 0 {
					owners++
					owned += len(c.Topics[0].Partitions)
				}
			}
		}
		if owners == members && owned == partitions {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, %d members own %d partitions, want %d members owning %d", timeout, owners, owned, members, partitions)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const sentinelHeader = "test.sentinel"

// readAll returns the records of topic, read with read_committed or not,
// in order per partition. It knows where the end is by writing a sentinel
// record to each partition first: only use it once nothing else writes.
func readAll(t *testing.T, brokers []string, topic string, partitions int, committed bool) []*kgo.Record {
	t.Helper()
	token := []byte(rand.Text())
	p, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	for i := range partitions {
		r := &kgo.Record{Partition: int32(i), Headers: []kgo.RecordHeader{{Key: sentinelHeader, Value: token}}}
		if err := p.ProduceSync(t.Context(), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	p.Close()

	level := kgo.ReadUncommitted()
	if committed {
		level = kgo.ReadCommitted()
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(level))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	var out []*kgo.Record
	for left := partitions; left > 0; {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s: %d partitions not read to the end", topic, left)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if v, ok := lastHeader(r, sentinelHeader); ok {
				if v == string(token) {
					left--
				}
				return
			}
			out = append(out, r)
		})
	}
	return out
}

// captureLogger is testLogger that also keeps what it logs.
func captureLogger(t *testing.T) (*slog.Logger, func() string) {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: testLogLevel})), func() string {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.kept.String()
	}
}

// testLogger logs to t until the test ends.
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: testLogLevel}))
}

var testLogLevel = func() slog.Level {
	if os.Getenv("REPARTITION_TEST_DEBUG") != "" {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}()

type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
	kept bytes.Buffer
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	w.kept.Write(p)
	return len(p), nil
}

// --- repartitioner processes ---

type childConfig struct {
	Brokers        []string
	Input, Output  string
	Group          string
	InstanceID     string
	Partitions     int
	CommitInterval time.Duration
	ShortTimeouts  bool
}

// childMain runs Run as configured by c until its stdin closes (the test
// is gone) or it is killed.
func childMain(c string) int {
	var cc childConfig
	if err := json.Unmarshal([]byte(c), &cc); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg := Config{Brokers: cc.Brokers, Input: cc.Input, Output: cc.Output, Group: cc.Group,
		InstanceID: cc.InstanceID, Partitions: cc.Partitions, CommitInterval: cc.CommitInterval, Logger: log}
	if cc.ShortTimeouts {
		cfg.KafkaOptions = shortTimeouts()
	}
	err := Run(ctx, cfg)
	if err != nil {
		log.Error("Run", "err", err)
		return 1
	}
	return 0
}

type child struct {
	cmd  *exec.Cmd
	out  bytes.Buffer // read only after done
	done chan struct{}
	err  error
}

func startChild(t *testing.T, cfg Config, shortTimeouts bool) *child {
	t.Helper()
	c, err := json.Marshal(childConfig{Brokers: cfg.Brokers, Input: cfg.Input, Output: cfg.Output, Group: cfg.Group,
		InstanceID: cfg.InstanceID, Partitions: cfg.Partitions, CommitInterval: cfg.CommitInterval, ShortTimeouts: shortTimeouts})
	if err != nil {
		t.Fatal(err)
	}
	p := &child{cmd: exec.Command(os.Args[0]), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), childEnv+"="+string(c))
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	stdin, err := p.cmd.StdinPipe() // closed when the test ends: the child exits
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		stdin.Close()
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *child) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// output is what the child wrote; only once it has exited.
func (p *child) output() string {
	<-p.done
	return fmt.Sprintf("%v\n%s", p.err, p.out.String())
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *child) kill(t *testing.T) {
	t.Helper()
	if p.exited() {
		t.Fatalf("the repartitioner exited by itself: %s", p.output())
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.done
}
