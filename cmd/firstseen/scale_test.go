package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/firstseen/firstseen/engine"
	"github.com/firstseen/firstseen/engine/enginetest"
	"github.com/firstseen/firstseen/engine/repartition"
	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/operators"
)

// The scale-out tests: several `firstseen run` processes (at most three at
// a time) in one consumer group share a 6-partition topic on a separate
// dev-broker process, each with its own state directory, and write to the
// real ClickHouse, each test to a database of its own. State moves between
// them mid-stream (a replica joins, dies, loses its volume, stops, comes
// back with stale state, freezes); the table and the dead-letter topic must
// still equal the oracle exactly, and no partition may ever be owned by two
// processes at once: the replicas' "partitions assigned" and "partitions
// revoked" log lines give each partition's owners over time.
//
// Replicas run with --instance-id replica-N, except those whose name starts
// with "noid", which run without (the engine then names the replica after
// its state directory; a wiped directory makes a new member), all with a 6s
// session timeout (--session-timeout),
// kfake's minimum: with the default 45s a dead replica's partitions would
// wait 45s. A seed chooses the workload and the moments; replay a run with
// FIRSTSEEN_SCALE_SEED=<seed>.

const (
	scalePartitions = 6
	scaleSession    = 6 * time.Second
	scaleGroup      = "fs-scale"
)

// scaleEnv is a broker process, a workload and its ClickHouse database,
// and the replicas started against them.
type scaleEnv struct {
	t     *testing.T
	s     *scenario
	group string
	rng   *rand.Rand

	mu   sync.Mutex
	reps []*replica
}

// replica is one `firstseen run` process.
type replica struct {
	id   string // --instance-id
	name string // id, and #n when restarted
	dir  string // --state-dir
	p    *proc

	mu       sync.Mutex
	exitedAt time.Time
	// ending is set before the test kills or stops the process on purpose.
	ending   bool
	killedAt time.Time
}

var (
	sessionFlagOnce sync.Once
	sessionFlagOK   bool
)

// needSessionTimeout skips the test when `run` has no --session-timeout:
// without it a dead replica's partitions wait for franz-go's default 45s
// session timeout, too long for these tests.
func needSessionTimeout(t *testing.T) {
	t.Helper()
	bin := binary(t)
	sessionFlagOnce.Do(func() {
		out, _ := exec.Command(bin, "run", "--help").CombinedOutput()
		sessionFlagOK = strings.Contains(string(out), "--session-timeout")
	})
	if !sessionFlagOK {
		t.Skip("firstseen run has no --session-timeout flag yet (wanted: --session-timeout 6s mapped to " +
			"kgo.SessionTimeout): the scale tests need it to move a dead replica's partitions within seconds")
	}
}

// newScaleEnv starts a broker process with a 6-partition input topic and
// generates a workload of users over 2 days with late and malformed
// records.
func newScaleEnv(t *testing.T, users int) *scaleEnv {
	t.Helper()
	needSessionTimeout(t)
	seed := testSeed(t, "FIRSTSEEN_SCALE_SEED")
	t.Logf("seed %d (replay with FIRSTSEEN_SCALE_SEED=%d)", seed, seed)
	port := freePort(t)
	brokers := []string{"127.0.0.1:" + strconv.Itoa(port)}
	startBroker(t, port, t.TempDir(), activity, scalePartitions)
	s := newScenario(t, brokers, workload.Config{Users: users, Days: 2, Partitions: scalePartitions,
		Seed: int64(seed % 1000), LateShare: 0.01, MalformedShare: 0.01})
	t.Logf("workload: %d records, %d valid", len(s.recs), s.valid)
	e := &scaleEnv{t: t, s: s, group: scaleGroup, rng: rand.New(rand.NewPCG(seed, 2))}
	t.Cleanup(func() {
		if t.Failed() {
			e.dumpEvents()
		}
	})
	return e
}

// start runs a replica with instance id and state directory dir. An id
// with the prefix "noid" names a replica run without --instance-id.
func (e *scaleEnv) start(id, dir string, extra ...string) *replica {
	e.t.Helper()
	s := e.s
	s.kafkaSink = true // the replicas write to both sinks
	args := []string{"run", "--brokers", strings.Join(s.brokers, ","), "--topic", activity,
		"--group", e.group, "--session-timeout", scaleSession.String(),
		"--state-dir", dir, "--clickhouse-addr", s.chAddr, "--clickhouse-database", s.db, "--sink", "clickhouse,kafka", "--sink-topic", enrichedTopic,
		"--checkpoint-interval", "200ms", "--idle-timeout", "1h", "--log-format", "json",
		"--metrics-addr", "127.0.0.1:0", "--shutdown-timeout", "20s"}
	if !strings.HasPrefix(id, "noid") {
		args = append(args, "--instance-id", id)
	}
	args = append(args, extra...)
	e.mu.Lock()
	n := 0
	for _, r := range e.reps {
		if r.id == id {
			n++
		}
	}
	e.mu.Unlock()
	name := id
	if n > 0 {
		name = fmt.Sprintf("%s#%d", id, n+1)
	}
	r := &replica{id: id, name: name, dir: dir}
	r.p = start(e.t, name, nil, args...)
	go func() {
		<-r.p.done
		r.mu.Lock()
		r.exitedAt = time.Now()
		r.mu.Unlock()
	}()
	e.mu.Lock()
	e.reps = append(e.reps, r)
	e.mu.Unlock()
	return r
}

// startN starts replicas replica-0 .. replica-(n-1), each with a state
// directory of its own.
func (e *scaleEnv) startN(n int, extra ...string) []*replica {
	var rs []*replica
	for i := range n {
		rs = append(rs, e.start(fmt.Sprintf("replica-%d", i), e.t.TempDir(), extra...))
	}
	return rs
}

func (r *replica) alive() bool { return !r.p.exited() }

// kill sends SIGKILL and waits for the process to go.
func (r *replica) kill() time.Time {
	r.mu.Lock()
	r.ending = true
	r.killedAt = time.Now()
	at := r.killedAt
	r.mu.Unlock()
	r.p.kill()
	return at
}

// stop sends SIGTERM and waits for exit status 0.
func (r *replica) stop(t *testing.T) time.Duration {
	t.Helper()
	r.mu.Lock()
	r.ending = true
	r.mu.Unlock()
	return stopGracefully(t, r.p, 40*time.Second)
}

// end is when the replica stopped processing: its kill, or its exit.
func (r *replica) end() (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.killedAt.IsZero() {
		return r.killedAt, true
	}
	if !r.exitedAt.IsZero() {
		return r.exitedAt, true
	}
	return time.Time{}, false
}

// live returns the replicas still running.
func (e *scaleEnv) live() []*replica {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*replica
	for _, r := range e.reps {
		if r.alive() {
			out = append(out, r)
		}
	}
	return out
}

// checkNoUnexpectedExit fails when a replica exited that the test did not
// end.
func (e *scaleEnv) checkNoUnexpectedExit() {
	e.t.Helper()
	e.mu.Lock()
	reps := slices.Clone(e.reps)
	e.mu.Unlock()
	for _, r := range reps {
		r.mu.Lock()
		ending := r.ending
		r.mu.Unlock()
		if !ending && r.p.exited() {
			e.t.Fatalf("%s exited by itself (%v):\n%s", r.name, r.p.err, tail(r.p.out.String(), 6000))
		}
	}
}

// waitFor polls cond until it holds, failing after timeout or when a
// replica exits unexpectedly.
func (e *scaleEnv) waitFor(what string, timeout time.Duration, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		e.checkNoUnexpectedExit()
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: not within %s (%d of %d rows in the table; partitions: %s)", what, timeout,
				e.s.rows(e.t), e.s.valid, e.ownersString())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitAllRows waits until the table holds a row for every valid record.
func (e *scaleEnv) waitAllRows(timeout time.Duration) time.Duration {
	e.t.Helper()
	began := time.Now()
	e.waitFor("every valid record in the table", timeout, func() bool { return e.s.rows(e.t) >= e.s.valid })
	return time.Since(began)
}

// stopAll stops every live replica with SIGTERM at once and waits for
// each to exit 0.
func (e *scaleEnv) stopAll() {
	e.t.Helper()
	live := e.live()
	for _, r := range live {
		r.mu.Lock()
		r.ending = true
		r.mu.Unlock()
		r.p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, r := range live {
		select {
		case <-r.p.done:
		case <-time.After(40 * time.Second):
			e.t.Fatalf("%s did not exit within 40s of SIGTERM", r.name)
		}
		if r.p.err != nil {
			e.t.Fatalf("%s exited with %v after SIGTERM, want status 0", r.name, r.p.err)
		}
	}
}

// produceSlices produces recs in n slices, calling between(i) after slice
// i (0-based) has been acknowledged.
func (e *scaleEnv) produceSlices(recs []workload.Record, n int, between func(i int)) {
	e.t.Helper()
	for i := range n {
		lo, hi := i*len(recs)/n, (i+1)*len(recs)/n
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := workload.Produce(ctx, e.s.brokers, activity, recs[lo:hi])
		cancel()
		if err != nil {
			e.t.Fatal(err)
		}
		if between != nil {
			between(i)
		}
	}
}

// The log lines the tests read (--log-format json).

type logEvent struct {
	Time           time.Time       `json:"time"`
	Level          string          `json:"level"`
	Msg            string          `json:"msg"`
	Partitions     json.RawMessage `json:"partitions"`
	RestoredUsers  int64           `json:"restored_users"`
	Took           json.RawMessage `json:"took"`
	UsersPerSecond float64         `json:"users_per_second"`
	Misplaced      int64           `json:"misplaced_records"`
	Rows           int64           `json:"rows"`
	DeadLetters    int64           `json:"dead_letters"`
	ChangelogUsers int64           `json:"changelog_users"`
	Addr           string          `json:"addr"`
	Err            string          `json:"err"`
	line           string
	parts          []int32
}

const (
	msgAssigned = "partitions assigned"
	msgRevoked  = "partitions revoked: checkpointed and dropped"
)

// events parses the replica's JSON log lines.
func (r *replica) events() []logEvent {
	var out []logEvent
	sc := bufio.NewScanner(strings.NewReader(r.p.out.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var ev logEvent
		if json.Unmarshal([]byte(line), &ev) != nil {
			continue
		}
		ev.line = line
		if ev.Msg == msgAssigned || ev.Msg == msgRevoked {
			json.Unmarshal(ev.Partitions, &ev.parts)
		}
		out = append(out, ev)
	}
	return out
}

// took is the event's "took" field (slog writes durations as nanoseconds).
func (ev *logEvent) took() time.Duration {
	var ns int64
	if json.Unmarshal(ev.Took, &ns) == nil {
		return time.Duration(ns)
	}
	var s string
	if json.Unmarshal(ev.Took, &s) == nil {
		d, _ := time.ParseDuration(s)
		return d
	}
	return 0
}

// owned is the set of partitions the replica's log says it holds now.
func (r *replica) owned() map[int32]bool {
	m := map[int32]bool{}
	for _, ev := range r.events() {
		for _, p := range ev.parts {
			m[p] = ev.Msg == msgAssigned
		}
	}
	for p, ok := range m {
		if !ok {
			delete(m, p)
		}
	}
	return m
}

func sortedKeys(m map[int32]bool) []int32 {
	var out []int32
	for p := range m {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// ownersString describes who owns what, for failure messages.
func (e *scaleEnv) ownersString() string {
	var b strings.Builder
	for _, r := range e.live() {
		fmt.Fprintf(&b, "%s=%v ", r.name, sortedKeys(r.owned()))
	}
	return strings.TrimSpace(b.String())
}

// balanced reports whether the live replicas own every partition exactly
// once between them, and each at least one when want is set.
func (e *scaleEnv) balanced(eachOwns bool) bool {
	seen := map[int32]int{}
	for _, r := range e.live() {
		o := r.owned()
		if eachOwns && len(o) == 0 {
			return false
		}
		for p := range o {
			seen[p]++
		}
	}
	if len(seen) != scalePartitions {
		return false
	}
	for _, n := range seen {
		if n != 1 {
			return false
		}
	}
	return true
}

// interval is a stretch of time a replica owned a partition, from its
// "partitions assigned" line (logged after the restore, before the task
// starts) to its "partitions revoked" line (logged after the task stopped),
// its kill or its exit.
type interval struct {
	rep        string
	from, to   time.Time
	open       bool // still owned by a live replica
	assignLine string
}

// ownership returns each partition's ownership intervals, by start.
func (e *scaleEnv) ownership() map[int32][]interval {
	e.mu.Lock()
	reps := slices.Clone(e.reps)
	e.mu.Unlock()
	out := map[int32][]interval{}
	for _, r := range reps {
		openAt := map[int32]logEvent{}
		for _, ev := range r.events() {
			for _, p := range ev.parts {
				switch ev.Msg {
				case msgAssigned:
					if prev, ok := openAt[p]; ok {
						// Assigned again without a revocation: the intervals merge.
						_ = prev
						continue
					}
					openAt[p] = ev
				case msgRevoked:
					if a, ok := openAt[p]; ok {
						out[p] = append(out[p], interval{rep: r.name, from: a.Time, to: ev.Time, assignLine: a.line})
						delete(openAt, p)
					}
				}
			}
		}
		end, ended := r.end()
		for p, a := range openAt {
			iv := interval{rep: r.name, from: a.Time, to: end, assignLine: a.line}
			if !ended {
				iv.to, iv.open = time.Now().Add(time.Hour), true
			}
			out[p] = append(out[p], iv)
		}
	}
	for p := range out {
		sort.Slice(out[p], func(i, j int) bool { return out[p][i].from.Before(out[p][j].from) })
	}
	return out
}

// checkExclusive fails when two processes owned a partition at the same
// time, or when the live replicas at the end do not own every partition
// exactly once. It also compares the partition-N directories in the live
// replicas' state directories with what they own: a replica drops the
// directory of a partition revoked from it, but one restarted after a
// crash keeps those of the partitions it owned then (they are resumed
// from if the partition comes back); with staleDirsOK these are only
// logged.
func (e *scaleEnv) checkExclusive(staleDirsOK bool) {
	e.t.Helper()
	own := e.ownership()
	for p := int32(0); p < scalePartitions; p++ {
		ivs := own[p]
		var hist []string
		for _, iv := range ivs {
			to := iv.to.Format("15:04:05.000")
			if iv.open {
				to = "now"
			}
			hist = append(hist, fmt.Sprintf("%s %s-%s", iv.rep, iv.from.Format("15:04:05.000"), to))
		}
		e.t.Logf("partition %d: %s", p, strings.Join(hist, ", "))
		for i := 1; i < len(ivs); i++ {
			for j := 0; j < i; j++ {
				if ivs[i].from.Before(ivs[j].to) {
					e.t.Errorf("partition %d owned by two processes at once: %s from %s to %s, and %s from %s\n  %s\n  %s",
						p, ivs[j].rep, ivs[j].from.Format(time.RFC3339Nano), ivs[j].to.Format(time.RFC3339Nano),
						ivs[i].rep, ivs[i].from.Format(time.RFC3339Nano), ivs[j].assignLine, ivs[i].assignLine)
				}
			}
		}
		open := 0
		for _, iv := range ivs {
			if iv.open {
				open++
			}
		}
		if open != 1 {
			e.t.Errorf("partition %d is owned by %d live processes at the end, want 1 (%s)", p, open, e.ownersString())
		}
	}
	// The state directories agree with the logs.
	dirs := map[int32][]string{}
	for _, r := range e.live() {
		owned := r.owned()
		ents, err := os.ReadDir(r.dir)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, ent := range ents {
			n, ok := strings.CutPrefix(ent.Name(), "partition-")
			if !ok || !ent.IsDir() {
				continue
			}
			v, err := strconv.Atoi(n)
			if err != nil {
				continue
			}
			if !owned[int32(v)] {
				if staleDirsOK {
					e.t.Logf("%s keeps %s of a partition it does not own (owns %v)", r.name, ent.Name(), sortedKeys(owned))
					continue
				}
				e.t.Errorf("%s keeps %s although it does not own partition %d (owns %v)", r.name, ent.Name(), v, sortedKeys(owned))
			}
			dirs[int32(v)] = append(dirs[int32(v)], r.name)
		}
	}
	for p := int32(0); p < scalePartitions; p++ {
		if len(dirs[p]) != 1 {
			e.t.Errorf("partition %d has a state directory in %d live replicas (%v), want 1", p, len(dirs[p]), dirs[p])
		}
	}
}

// takeover waits until the live replicas logged "partitions assigned" for
// every partition in parts after since, and returns when the last one was
// logged and the restores' durations.
func (e *scaleEnv) takeover(parts []int32, since time.Time, timeout time.Duration) (time.Time, []string) {
	e.t.Helper()
	var last time.Time
	var restores []string
	e.waitFor(fmt.Sprintf("partitions %v taken over", parts), timeout, func() bool {
		last, restores = time.Time{}, nil
		got := map[int32]bool{}
		for _, r := range e.live() {
			for _, ev := range r.events() {
				if ev.Msg != msgAssigned || ev.Time.Before(since) {
					continue
				}
				mine := false
				for _, p := range ev.parts {
					if slices.Contains(parts, p) {
						got[p], mine = true, true
					}
				}
				if mine {
					if ev.Time.After(last) {
						last = ev.Time
					}
					restores = append(restores, fmt.Sprintf("%s %v: restored_users=%d took=%s users_per_second=%.0f",
						r.name, ev.parts, ev.RestoredUsers, ev.took(), ev.UsersPerSecond))
				}
			}
		}
		return len(got) == len(parts)
	})
	return last, restores
}

// dumpEvents logs every replica's group events, warnings and errors.
func (e *scaleEnv) dumpEvents() {
	e.mu.Lock()
	reps := slices.Clone(e.reps)
	e.mu.Unlock()
	for _, r := range reps {
		var b strings.Builder
		for _, ev := range r.events() {
			if ev.Msg == msgAssigned || ev.Msg == msgRevoked || ev.Level == "WARN" || ev.Level == "ERROR" ||
				strings.Contains(ev.Msg, "starting") || strings.Contains(ev.Msg, "final checkpoint") {
				b.WriteString(tail(ev.line, 600))
				b.WriteByte('\n')
			}
		}
		e.t.Logf("--- group events, warnings and errors of %s (exit %v):\n%s", r.name, r.p.err, tail(b.String(), 12000))
	}
}

// TestScaleNormalRun: three replicas share the topic while it is produced;
// the table and dead letters are exact and every partition is processed
// by one process at a time.
func TestScaleNormalRun(t *testing.T) {
	e := newScaleEnv(t, 4000)
	began := time.Now()
	e.startN(3)
	e.produceSlices(e.s.recs, 6, func(int) { time.Sleep(300 * time.Millisecond) })
	took := e.waitAllRows(60 * time.Second)
	t.Logf("all %d rows %s after the last slice, %s after the start", e.s.valid, took.Round(time.Millisecond),
		time.Since(began).Round(time.Millisecond))
	e.waitFor("every partition owned by exactly one replica", 20*time.Second, func() bool { return e.balanced(true) })
	e.checkExclusive(false)
	e.stopAll()
	e.s.check(t)
}

// TestScaleDeadReplica: one of three replicas is killed mid-stream for
// good; the two others take over its partitions, restoring them from the
// changelog, and the output stays exact.
func TestScaleDeadReplica(t *testing.T) {
	e := newScaleEnv(t, 4000)
	reps := e.startN(3)
	e.waitFor("three replicas with partitions", 30*time.Second, func() bool { return e.balanced(true) })
	victim := reps[e.rng.IntN(len(reps))]
	var killedAt time.Time
	var lost []int32
	killAfter := 1 + e.rng.IntN(2) // after slice 2 or 3
	delay := time.Duration(e.rng.IntN(600)) * time.Millisecond
	e.produceSlices(e.s.recs, 6, func(i int) {
		if i != killAfter {
			time.Sleep(200 * time.Millisecond)
			return
		}
		e.waitFor("rows from the first slices", 30*time.Second, func() bool { return e.s.rows(t) > 0 })
		time.Sleep(delay)
		lost = sortedKeys(victim.owned())
		killedAt = victim.kill()
		t.Logf("SIGKILL %s (partitions %v) after slice %d + %s, %d rows in the table", victim.name, lost, i+1, delay, e.s.rows(t))
	})
	last, restores := e.takeover(lost, killedAt, 60*time.Second)
	t.Logf("takeover of %v: %s from SIGKILL to the last 'partitions assigned' (session timeout %s)",
		lost, last.Sub(killedAt).Round(time.Millisecond), scaleSession)
	for _, r := range restores {
		t.Logf("  %s", r)
	}
	e.waitAllRows(60 * time.Second)
	e.waitFor("every partition owned by exactly one survivor", 20*time.Second, func() bool { return e.balanced(true) })
	e.checkExclusive(false)
	e.stopAll()
	e.s.check(t)
}

// TestScaleLostVolume: a replica is killed, its state directory deleted,
// and it is started again with the same instance id and an empty state
// directory: it restores its partitions from the changelog and the output
// stays exact.
func TestScaleLostVolume(t *testing.T) {
	e := newScaleEnv(t, 4000)
	reps := e.startN(3)
	e.waitFor("three replicas with partitions", 30*time.Second, func() bool { return e.balanced(true) })
	victim := reps[e.rng.IntN(len(reps))]
	var again *replica
	var killedAt time.Time
	e.produceSlices(e.s.recs, 6, func(i int) {
		if i != 2 {
			time.Sleep(200 * time.Millisecond)
			return
		}
		e.waitFor("rows from the first slices", 30*time.Second, func() bool { return e.s.rows(t) > 0 })
		time.Sleep(time.Duration(e.rng.IntN(500)) * time.Millisecond)
		owned := sortedKeys(victim.owned())
		killedAt = victim.kill()
		if err := os.RemoveAll(victim.dir); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(victim.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Logf("SIGKILL %s (partitions %v) and its state directory deleted; %d rows in the table", victim.name, owned, e.s.rows(t))
		again = e.start(victim.id, victim.dir)
	})
	// The restarted replica restores what it is given from the changelog.
	e.waitFor(again.name+" restores partitions", 60*time.Second, func() bool { return len(again.owned()) > 0 })
	var users int64
	for _, ev := range again.events() {
		if ev.Msg == msgAssigned {
			users += ev.RestoredUsers
			t.Logf("%s: partitions %v restored_users=%d took=%s users_per_second=%.0f (%s after the SIGKILL)",
				again.name, ev.parts, ev.RestoredUsers, ev.took(), ev.UsersPerSecond, ev.Time.Sub(killedAt).Round(time.Millisecond))
		}
	}
	if users == 0 {
		t.Errorf("%s restored no user from the changelog into its empty state directory", again.name)
	}
	e.waitAllRows(60 * time.Second)
	e.waitFor("every partition owned by exactly one replica", 20*time.Second, func() bool { return e.balanced(true) })
	e.checkExclusive(false)
	e.stopAll()
	e.s.check(t)
}

// TestScaleRescale: two replicas, a third joins mid-stream, then one of
// the first two stops gracefully (2 -> 3 -> 2); the output stays exact.
func TestScaleRescale(t *testing.T) {
	e := newScaleEnv(t, 4000)
	reps := e.startN(2)
	e.waitFor("two replicas with partitions", 30*time.Second, func() bool { return e.balanced(true) })
	var third *replica
	e.produceSlices(e.s.recs, 6, func(i int) {
		switch i {
		case 1:
			e.waitFor("rows from the first slices", 30*time.Second, func() bool { return e.s.rows(t) > 0 })
			began := time.Now()
			third = e.start("replica-2", t.TempDir())
			e.waitFor("the third replica gets partitions", 40*time.Second, func() bool {
				return len(third.owned()) > 0 && e.balanced(true)
			})
			t.Logf("scaled 2 -> 3 in %s: %s", time.Since(began).Round(time.Millisecond), e.ownersString())
		case 3:
			gone := reps[e.rng.IntN(2)]
			parts := sortedKeys(gone.owned())
			stoppedAt := time.Now()
			took := gone.stop(t)
			t.Logf("SIGTERM %s (partitions %v): exited 0 after %s", gone.name, parts, took.Round(time.Millisecond))
			last, restores := e.takeover(parts, stoppedAt, 60*time.Second)
			t.Logf("scaled 3 -> 2: %v taken over %s after the SIGTERM: %s", parts, last.Sub(stoppedAt).Round(time.Millisecond),
				strings.Join(restores, "; "))
		default:
			time.Sleep(200 * time.Millisecond)
		}
	})
	e.waitAllRows(60 * time.Second)
	e.waitFor("every partition owned by exactly one replica", 20*time.Second, func() bool { return e.balanced(true) })
	e.checkExclusive(false)
	e.stopAll()
	e.s.check(t)
}

// TestScaleChaos: three replicas, two with --instance-id and one without,
// while the stream is produced: after each slice a random replica is
// killed and restarted at once (sometimes with its state directory
// wiped), or stopped with SIGTERM and restarted. The output stays exact.
func TestScaleChaos(t *testing.T) {
	e := newScaleEnv(t, 4000)
	cur := []*replica{e.start("replica-0", t.TempDir()), e.start("replica-1", t.TempDir()), e.start("noid-2", t.TempDir())}
	e.waitFor("three replicas with partitions", 30*time.Second, func() bool { return e.balanced(true) })
	const n = 10
	e.produceSlices(e.s.recs, n, func(i int) {
		if i == n-1 {
			return
		}
		// Not while the group rebalances: kfake never expires a member
		// killed while it waits for its JoinGroup response (its session
		// timer starts only once that response is delivered), so its
		// partitions would stay assigned to it for good. The real Kafka
		// expires it after the session timeout.
		e.waitFor("a settled group", 30*time.Second, func() bool { return e.balanced(true) })
		time.Sleep(time.Duration(e.rng.IntN(400)) * time.Millisecond)
		k := e.rng.IntN(len(cur))
		r := cur[k]
		owned := sortedKeys(r.owned())
		switch a := e.rng.IntN(4); a {
		case 0:
			t.Logf("slice %d: nothing", i+1)
			return
		case 1:
			r.kill()
			t.Logf("slice %d: SIGKILL %s %v and restart (%d rows)", i+1, r.name, owned, e.s.rows(t))
		case 2:
			r.kill()
			if err := os.RemoveAll(r.dir); err != nil {
				t.Fatal(err)
			}
			t.Logf("slice %d: SIGKILL %s %v, wipe its state and restart (%d rows)", i+1, r.name, owned, e.s.rows(t))
		case 3:
			took := r.stop(t)
			t.Logf("slice %d: SIGTERM %s %v (exit 0 after %s) and restart (%d rows)", i+1, r.name, owned,
				took.Round(time.Millisecond), e.s.rows(t))
		}
		cur[k] = e.start(r.id, r.dir)
	})
	took := e.waitAllRows(90 * time.Second)
	t.Logf("all rows %s after the last slice", took.Round(time.Millisecond))
	e.waitFor("every partition owned by exactly one replica", 30*time.Second, func() bool { return e.balanced(false) })
	e.checkExclusive(true)
	e.stopAll()
	e.s.check(t)
}

// TestScaleStaleStateReturns: replica A is killed and stays away longer
// than the session timeout, so B takes over A's partitions and moves their
// state on; A comes back with its old state directory, then B is killed
// for a while, so that A gets its old partitions back: it resumes them from
// its stale databases (their checkpoints, maybe an unfinished epoch) and
// catches up from the changelog. Then B comes back with its own. The output
// stays exact.
func TestScaleStaleStateReturns(t *testing.T) {
	e := newScaleEnv(t, 4000)
	reps := e.startN(2)
	e.waitFor("two replicas with partitions", 30*time.Second, func() bool { return e.balanced(true) })
	a, b := reps[0], reps[1]
	// away kills r and waits until the others own its partitions.
	away := func(r *replica) {
		time.Sleep(time.Duration(e.rng.IntN(300)) * time.Millisecond)
		owned := sortedKeys(r.owned())
		killedAt := r.kill()
		t.Logf("SIGKILL %s %v (%d rows)", r.name, owned, e.s.rows(t))
		last, restores := e.takeover(owned, killedAt, 40*time.Second)
		t.Logf("%v taken over %s after the SIGKILL: %s", owned, last.Sub(killedAt).Round(time.Millisecond), strings.Join(restores, "; "))
	}
	// back restarts r on its state directory.
	back := func(r *replica) *replica {
		stale, _ := os.ReadDir(r.dir)
		var names []string
		for _, d := range stale {
			if d.IsDir() {
				names = append(names, d.Name())
			}
		}
		n := e.start(r.id, r.dir)
		e.waitFor(n.name+" gets partitions", 40*time.Second, func() bool { return len(n.owned()) > 0 && e.balanced(true) })
		for _, ev := range n.events() {
			if ev.Msg == msgAssigned {
				t.Logf("%s back with %v in its state directory: assigned %v, restored_users=%d took=%s", n.name, names,
					ev.parts, ev.RestoredUsers, ev.took())
			}
		}
		return n
	}
	e.produceSlices(e.s.recs, 6, func(i int) {
		switch i {
		case 0:
			e.waitFor("rows from the first slice", 30*time.Second, func() bool { return e.s.rows(t) > 0 })
			away(a)
		case 1:
			a = back(a)
		case 2:
			away(b)
		case 3:
			b = back(b)
		default:
			time.Sleep(200 * time.Millisecond)
		}
	})
	e.waitAllRows(60 * time.Second)
	e.waitFor("every partition owned by exactly one replica", 20*time.Second, func() bool { return e.balanced(true) })
	e.checkExclusive(true)
	e.stopAll()
	e.s.check(t)
}

// TestScaleZombie: a replica is frozen (SIGSTOP) mid-stream for longer
// than the session timeout, as a long GC pause, a VM freeze or a node cut
// off from Kafka would, so that the group gives its partitions to the
// other replica, which restores them and goes on. Then it is resumed
// (SIGCONT), with the epoch it was working on still in memory. It has lost
// its group session: it must write nothing more for the partitions it
// lost. Either the broker fences it, and it exits (its orchestrator
// restarts it): the group coordinator refuses the membership its next
// changelog transaction commits offsets under (the intent, before any row
// is written), or, if it was frozen inside a transaction, that transaction
// was aborted meanwhile. Or its group client reports the session lost
// first, and it drops the partitions and rejoins the group. The output
// stays exact.
func TestScaleZombie(t *testing.T) {
	e := newScaleEnv(t, 4000)
	reps := e.startN(2, "--log-level", "debug")
	e.waitFor("two replicas with partitions", 30*time.Second, func() bool { return e.balanced(true) })
	z := reps[e.rng.IntN(2)]
	var resumedAt time.Time
	e.produceSlices(e.s.recs, 6, func(i int) {
		if i != 2 {
			time.Sleep(200 * time.Millisecond)
			return
		}
		// Frozen while it processes the slice just produced.
		time.Sleep(time.Duration(e.rng.IntN(60)) * time.Millisecond)
		owned := sortedKeys(z.owned())
		z.mu.Lock()
		z.ending = true // it may exit once resumed
		z.mu.Unlock()
		stoppedAt := time.Now()
		z.p.cmd.Process.Signal(syscall.SIGSTOP)
		t.Logf("SIGSTOP %s %v (%d rows)", z.name, owned, e.s.rows(t))
		last, restores := e.takeover(owned, stoppedAt, 40*time.Second)
		t.Logf("%v taken over %s after the SIGSTOP: %s", owned, last.Sub(stoppedAt).Round(time.Millisecond), strings.Join(restores, "; "))
		// The survivor writes for a while before the zombie wakes.
		time.Sleep(time.Second)
		resumedAt = time.Now()
		z.p.cmd.Process.Signal(syscall.SIGCONT)
		t.Logf("SIGCONT %s (%d rows)", z.name, e.s.rows(t))
	})
	// rejoined is when the zombie was assigned partitions again after
	// SIGCONT (zero if it was not).
	rejoined := func() time.Time {
		for _, ev := range z.events() {
			if ev.Msg == msgAssigned && ev.Time.After(resumedAt) {
				return ev.Time
			}
		}
		return time.Time{}
	}
	deadline := time.After(20 * time.Second)
wait:
	for {
		select {
		case <-z.p.done:
			t.Logf("%s exited %s after SIGCONT: %v", z.name, time.Since(resumedAt).Round(time.Millisecond), z.p.err)
			if !strings.Contains(z.p.out.String(), "fenced off its partitions") {
				t.Errorf("%s exited, but not because the group fenced it:\n%s", z.name, tail(z.p.out.String(), 3000))
			}
			break wait
		case <-time.After(100 * time.Millisecond):
			if at := rejoined(); !at.IsZero() {
				t.Logf("%s dropped its partitions and rejoined the group %s after SIGCONT", z.name, at.Sub(resumedAt).Round(time.Millisecond))
				break wait
			}
		case <-deadline:
			t.Errorf("%s, which lost its group session, neither exited nor rejoined the group within 20s of SIGCONT; "+
				"SIGQUIT for its goroutines, then SIGKILL", z.name)
			z.p.cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-z.p.done:
			case <-time.After(5 * time.Second):
			}
			z.kill()
			// The goroutine that runs the pipeline, from the dump.
			for g := range strings.SplitSeq(z.p.out.String(), "\n\n") {
				if strings.Contains(g, "engine.Run(") {
					t.Logf("%s's engine.Run goroutine:\n%s", z.name, tail(g, 3000))
				}
			}
			break wait
		}
	}
	// Between SIGCONT and its new assignment (or its exit) the zombie
	// completed no checkpoint that wrote anything.
	back := rejoined()
	for _, ev := range z.events() {
		if !ev.Time.After(resumedAt) {
			continue
		}
		if ev.Level != "DEBUG" || ev.Msg == "checkpoint" {
			t.Logf("  %s after SIGCONT: %s", z.name, tail(ev.line, 500))
		}
		if ev.Msg == "checkpoint" && (back.IsZero() || ev.Time.Before(back)) &&
			(ev.Rows > 0 || ev.DeadLetters > 0 || ev.ChangelogUsers > 0) {
			t.Errorf("%s took a checkpoint that wrote after it lost its session: %s", z.name, ev.line)
		}
	}
	e.waitAllRows(60 * time.Second)
	e.stopAll()
	e.s.check(t)
}

// TestScaleRepartition: the input is not keyed by uuid (round robin over
// the partitions, random keys), so a user's records are on several
// partitions.
func TestScaleRepartition(t *testing.T) {
	// With --repartition the output is exact.
	t.Run("Repartitioned", testRepartitioned)
	// Without it, the misplaced records are warned about and counted.
	t.Run("Misplaced", testMisplaced)
}

// roundRobin returns the workload spread over the partitions regardless
// of the uuid, with random keys.
func roundRobin(recs []workload.Record, rng *rand.Rand) []workload.Record {
	out := slices.Clone(recs)
	for i := range out {
		out[i].Partition = int32(i % scalePartitions)
		out[i].Key = []byte(fmt.Sprintf("session-%016x", rng.Uint64()))
	}
	return out
}

// metric reads a replica's /metrics and returns the value of name.
func (r *replica) metric(name string) (float64, error) {
	addr := ""
	for _, ev := range r.events() {
		if ev.Msg == "serving metrics and health checks" {
			addr = ev.Addr
		}
	}
	if addr == "" {
		return 0, fmt.Errorf("%s has not logged its metrics address", r.name)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s in /metrics", r.name, name)
}

func testMisplaced(t *testing.T) {
	e := newScaleEnv(t, 1000)
	recs := roundRobin(e.s.recs, e.rng)
	reps := e.startN(2)
	// Both replicas in the group with partitions before the records come,
	// so that both can be asked for their count and the stop does not
	// fall into a rebalance.
	e.waitFor("both replicas owning partitions", 40*time.Second, func() bool {
		for _, r := range reps {
			if n, err := r.metric("firstseen_partitions"); err != nil || n == 0 {
				return false
			}
		}
		return true
	})
	e.produceSlices(recs, 2, nil)
	var warned *replica
	var line string
	e.waitFor("a misplaced_records warning", 40*time.Second, func() bool {
		for _, r := range reps {
			for _, ev := range r.events() {
				if ev.Level == "WARN" && ev.Misplaced > 0 && strings.Contains(ev.line, "misplaced_records") {
					warned, line = r, ev.line
					return true
				}
			}
		}
		return false
	})
	t.Logf("%s warned: %s", warned.name, tail(line, 400))
	var v float64
	e.waitFor(warned.name+"'s firstseen_misplaced_records_total > 0", 10*time.Second, func() bool {
		var err error
		if v, err = warned.metric("firstseen_misplaced_records_total"); err != nil {
			t.Logf("%v", err)
		}
		return v > 0
	})
	t.Logf("%s: firstseen_misplaced_records_total %.0f", warned.name, v)
	var total float64
	for _, r := range reps {
		n, err := r.metric("firstseen_misplaced_records_total")
		if err != nil {
			t.Error(err)
		}
		total += n
	}
	t.Logf("firstseen_misplaced_records_total over the replicas: %.0f (of %d records)", total, len(recs))
	e.stopAll()
}

func testRepartitioned(t *testing.T) {
	e := newScaleEnv(t, 3000)
	s := e.s
	recs := roundRobin(s.recs, e.rng)
	// The input's oracle: the dead letters, by input coordinates (a
	// record's reason does not depend on its partition).
	inWant := workload.Oracle(recs, operators.Config{Tolerance: 10 * time.Minute}, nil)
	reps := e.startN(3, "--repartition")
	// --repartition may not be wired yet: then the processes say so.
	e.waitFor("replicas start processing, or refuse --repartition", 30*time.Second, func() bool {
		for _, r := range reps {
			if r.p.exited() || len(r.owned()) > 0 {
				return true
			}
		}
		return false
	})
	for _, r := range reps {
		if r.p.exited() && strings.Contains(r.p.out.String(), "not wired") {
			t.Skipf("--repartition is not wired yet: %s", tail(strings.TrimSpace(r.p.out.String()), 300))
		}
	}
	e.produceSlices(recs, 6, func(i int) {
		switch i {
		case 2:
			// A replica dies mid-stream and comes back: both stages move.
			victim := reps[e.rng.IntN(len(reps))]
			victim.kill()
			t.Logf("SIGKILL %s after slice %d; restarting it", victim.name, i+1)
			e.start(victim.id, victim.dir, "--repartition")
		default:
			time.Sleep(200 * time.Millisecond)
		}
	})
	e.waitAllRows(60 * time.Second)
	e.waitFor("every partition owned by exactly one replica", 30*time.Second, func() bool { return e.balanced(true) })
	e.checkExclusive(true)
	for _, r := range e.live() {
		if v, err := r.metric("firstseen_misplaced_records_total"); err != nil || v != 0 {
			t.Errorf("%s: firstseen_misplaced_records_total %v (%v), want 0 behind --repartition", r.name, v, err)
		}
	}
	e.stopAll()

	// The processor read the re-keyed topic: the oracle is over its order
	// (the watermarks are per partition of what the processor reads).
	internal := e.group + "-repartition"
	parts := readTopic(t, s.brokers, internal)
	var rk []workload.Record
	var at []coord     // rk[i]'s coordinates in the internal topic
	var origin []coord // rk[i]'s input record
	seen := map[coord]int{}
	for p := int32(0); p < scalePartitions; p++ {
		for _, r := range parts[p] {
			o, ok := originOf(r)
			if !ok {
				t.Fatalf("%s partition %d offset %d has no origin headers", internal, p, r.Offset)
			}
			if seen[o]++; seen[o] == 2 {
				t.Errorf("input partition %d offset %d is in %s twice", o.p, o.off, internal)
			}
			rk = append(rk, workload.Record{Partition: p, Key: r.Key, Value: r.Value, Timestamp: r.Timestamp})
			at = append(at, coord{p, r.Offset})
			origin = append(origin, o)
		}
	}
	if len(seen) != len(recs) {
		t.Errorf("%s holds copies of %d input records, want %d", internal, len(seen), len(recs))
	}
	want := workload.Oracle(rk, operators.Config{Tolerance: 10 * time.Minute}, nil)
	for i := range want {
		want[i].Partition, want[i].Offset = at[i].p, at[i].off
	}
	// Rows name the record the processor read: its coordinates in the
	// internal topic, or, if the engine maps them back, the input's.
	byOrigin := rowsNameInput(t, s, at, origin)
	if byOrigin {
		t.Log("rows name the input records' coordinates")
		for i := range want {
			want[i].Partition, want[i].Offset = origin[i].p, origin[i].off
		}
	} else {
		t.Logf("rows name the records' coordinates in %s", internal)
	}
	enginetest.CheckTable(t, s.conn, s.table(), want)
	checkContent(t, s, want)
	checkDeadLettersByOrigin(t, s.brokers, []string{activity + ".dlq", internal + ".dlq"}, inWant)
}

// coord names a record: partition and offset.
type coord struct {
	p   int32
	off int64
}

// originOf returns the input record a repartitioned record was copied
// from (the last origin headers).
func originOf(r *kgo.Record) (coord, bool) {
	var o coord
	var hp, ho bool
	for _, h := range r.Headers {
		switch h.Key {
		case repartition.HeaderOriginPartition:
			v, err := strconv.Atoi(string(h.Value))
			o.p, hp = int32(v), err == nil
		case repartition.HeaderOriginOffset:
			v, err := strconv.ParseInt(string(h.Value), 10, 64)
			o.off, ho = v, err == nil
		}
	}
	return o, hp && ho
}

// rowsNameInput tells whether the table's rows name input coordinates
// (true) or the internal topic's (false), from a sample.
func rowsNameInput(t *testing.T, s *scenario, at, origin []coord) bool {
	t.Helper()
	inAt, inOrigin := map[coord]bool{}, map[coord]bool{}
	for i := range at {
		inAt[at[i]] = true
		inOrigin[origin[i]] = true
	}
	rows, err := s.conn.Query(context.Background(), "SELECT src_partition, src_offset FROM "+s.table()+" LIMIT 1000")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	a, o := 0, 0
	for rows.Next() {
		var k coord
		if err := rows.Scan(&k.p, &k.off); err != nil {
			t.Fatal(err)
		}
		if inAt[k] {
			a++
		}
		if inOrigin[k] {
			o++
		}
	}
	return o > a
}

// checkContent compares the table with want on content: the multiset of
// (uuid, event_time, is_new, late, first_seen), whatever the coordinates.
func checkContent(t *testing.T, s *scenario, want []workload.Expected) {
	t.Helper()
	rows, err := s.conn.Query(context.Background(), "SELECT uuid, event_time, is_new, late, first_seen FROM "+s.table())
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	// The table's DateTime may have a resolution of seconds (18.x).
	got := map[string]int{}
	for rows.Next() {
		var u string
		var et, fs time.Time
		var isNew, late uint8
		if err := rows.Scan(&u, &et, &isNew, &late, &fs); err != nil {
			t.Fatal(err)
		}
		got[fmt.Sprintf("%s et=%d new=%d late=%d fs=%d", u, et.Unix(), isNew, late, fs.Unix())]++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	exp := map[string]int{}
	for _, w := range want {
		if w.Reason != operators.OK {
			continue
		}
		exp[fmt.Sprintf("%s et=%d new=%d late=%d fs=%d", w.UUID, floorDiv(w.EventTime, 1000), b01(w.IsNew), b01(w.Late),
			floorDiv(w.FirstSeen, 1000))]++
	}
	bad := 0
	for k, n := range exp {
		if got[k] != n {
			if bad++; bad <= 10 {
				t.Errorf("content %s: %d rows, want %d", k, got[k], n)
			}
		}
	}
	for k, n := range got {
		if _, ok := exp[k]; !ok {
			if bad++; bad <= 10 {
				t.Errorf("content %s: %d rows, want none", k, n)
			}
		}
	}
	t.Logf("content check: %d distinct expected, %d distinct found, %d differ", len(exp), len(got), bad)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func b01(b bool) int {
	if b {
		return 1
	}
	return 0
}

// readTopic reads a topic from the start to its end (read_committed), by
// partition in offset order. A missing topic reads as empty.
func readTopic(t *testing.T, brokers []string, topic string) map[int32][]*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	adm, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ends, err := kadm.NewClient(adm).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatalf("list the end offsets of %s: %v", topic, err)
	}
	want := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil && o.Offset > 0 {
			want[o.Partition] = o.Offset
		}
	})
	out := map[int32][]*kgo.Record{}
	if len(want) == 0 {
		return out
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	next := map[int32]int64{}
	done := func() bool {
		for p, end := range want {
			if next[p] < end {
				return false
			}
		}
		return true
	}
	for !done() {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s: only up to %v of %v", topic, next, want)
		}
		fs.EachError(func(_ string, p int32, err error) { t.Logf("reading %s partition %d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			next[r.Partition] = r.Offset + 1
			if !r.Attrs.IsControl() {
				out[r.Partition] = append(out[r.Partition], r)
			}
		})
	}
	return out
}

// checkDeadLettersByOrigin checks that the dead-letter topics together
// hold every malformed input record exactly once with its reason, naming
// it by the repartitioner's origin headers or by its source headers when
// the source is the input topic.
func checkDeadLettersByOrigin(t *testing.T, brokers []string, topics []string, inWant []workload.Expected) {
	t.Helper()
	exp := map[coord]string{}
	for _, w := range inWant {
		if w.Reason != operators.OK {
			exp[coord{w.Partition, w.Offset}] = w.Reason.String()
		}
	}
	got := map[coord]string{}
	for _, topic := range topics {
		for _, rs := range readTopic(t, brokers, topic) {
			for _, r := range rs {
				h := map[string]string{}
				for _, x := range r.Headers {
					h[x.Key] = string(x.Value) // the last of a key wins
				}
				var c coord
				if o, ok := originOf(r); ok {
					c = o
				} else if h[engine.HeaderTopic] == activity {
					p, _ := strconv.Atoi(h[engine.HeaderPartition])
					off, _ := strconv.ParseInt(h[engine.HeaderOffset], 10, 64)
					c = coord{int32(p), off}
				} else {
					t.Errorf("%s: dead letter at partition %d offset %d names no input record (headers %v)", topic, r.Partition, r.Offset, h)
					continue
				}
				if _, dup := got[c]; dup {
					t.Errorf("dead letter for input partition %d offset %d twice", c.p, c.off)
				}
				got[c] = h[engine.HeaderReason]
			}
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(exp) {
		t.Errorf("dead letters differ:\n got %v\nwant %v", got, exp)
	}
	t.Logf("dead letters: %d, want %d", len(got), len(exp))
}
