package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/firstseen/firstseen/engine/workload"
	"github.com/firstseen/firstseen/sinks/clickhouse/chtest"
)

// TestMain lets the test binary stand in for firstseen-bench when the
// benchmark starts the Redis design as a child process (os.Executable).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "redis-design" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestBenchSmoke runs the whole benchmark, every phase, on a small workload
// with the real services, and checks what it reports against the oracle:
// so that `make bench` keeps working on a fresh machine.
func TestBenchSmoke(t *testing.T) {
	addr := chtest.Addr(t)
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv(chtest.EnvRequire) == "1" {
			t.Fatalf("redis-server is required (make test installs it with .ci/redis ensure): %v", err)
		}
		t.Skip("no redis-server: run .ci/redis ensure")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "firstseen")
	if out, err := exec.Command("go", "build", "-o", bin, "../firstseen").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var suffix [4]byte
	rand.Read(suffix[:])
	o := options{firstseen: bin, runs: 1, phases: allPhases, users: 3000, recordsPerUser: 5, days: 2, partitions: 2,
		seed: 7, chAddr: addr, chDatabase: "bench_test_" + hex.EncodeToString(suffix[:]), chCompression: "none", redisServer: "redis-server",
		checkpointInterval: 500 * time.Millisecond, latencyInterval: 300 * time.Millisecond,
		latencySeconds: 3 * time.Second, scaleUsers: 20_000, out: filepath.Join(dir, "out"), workDir: filepath.Join(dir, "work")}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = chtest.Conn(t, addr).Exec(context.Background(), "DROP DATABASE IF EXISTS "+o.chDatabase)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := runBench(ctx, &out, o); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	t.Log(out.String())

	b, err := os.ReadFile(filepath.Join(o.out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 1 {
		t.Fatalf("%d runs reported, want 1", len(rep.Runs))
	}
	r := rep.Runs[0]
	if r.Firstseen == nil || r.Redis == nil || r.Latency == nil || r.Scale == nil {
		t.Fatalf("a phase is missing from the report: %+v", r)
	}
	recs, err := workload.Generate(workload.Config{Users: o.users, Days: o.days, Partitions: o.partitions, Seed: o.seed,
		Start: time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -o.days)})
	if err != nil {
		t.Fatal(err)
	}
	want := newExpected(recs, o.partitions)
	for name, c := range map[string]check{"firstseen": r.Firstseen.Check, "scale": r.Scale.Check} {
		if c.Wrong() != 0 || c.Rows != want.rows || c.Expected != want.rows {
			t.Errorf("%s phase: %s; want all %d rows right", name, c, want.rows)
		}
	}
	// The Redis design writes a row for every record it can decode, once.
	if c := r.Redis.Check; c.Missing != 0 || c.Duplicated != 0 || c.Rows < want.rows {
		t.Errorf("Redis design: %s", c)
	}
	if r.Redis.RedisUsers != want.users || r.Redis.RedisPerUser <= 0 {
		t.Errorf("Redis design: %d users in Redis (%.1f bytes each), want %d", r.Redis.RedisUsers, r.Redis.RedisPerUser, want.users)
	}
	if r.Firstseen.RecordsPerSec <= 0 || r.Firstseen.CPUSeconds <= 0 || r.Firstseen.PeakRSSMiB <= 0 || r.Firstseen.BytesPerUser <= 0 {
		t.Errorf("firstseen measurements missing: %+v", r.Firstseen)
	}
	if l := r.Latency; l.Missing != 0 || l.NotWaited.Count == 0 || l.Waited.Count == 0 ||
		l.NotWaited.P50Ms <= 0 || l.NotWaited.P99Ms < l.NotWaited.P50Ms {
		t.Errorf("latency: %+v", l)
	}
	if s := r.Scale; s.UsersInState != int64(o.scaleUsers) || s.RestartFirstOutput <= 0 || s.PeakRSSMiB <= 0 {
		t.Errorf("scale: %+v", s)
	}
	for _, f := range []string{"throughput.png", "latency.png", "results.md", "cpu-run1.prof"} {
		b, err := os.ReadFile(filepath.Join(o.out, f))
		if err != nil || len(b) == 0 {
			t.Errorf("%s: %v (%d bytes)", f, err, len(b))
		}
		if filepath.Ext(f) == ".png" && !bytes.HasPrefix(b, []byte("\x89PNG")) {
			t.Errorf("%s is not a PNG", f)
		}
	}
}

func TestQuantileAndDist(t *testing.T) {
	s := make([]float64, 0, 200)
	for i := 200; i >= 1; i-- {
		s = append(s, float64(i))
	}
	d := newDist(s)
	if d.Count != 200 || d.P50Ms != 100 || d.P99Ms != 198 || d.MaxMs != 200 {
		t.Errorf("dist of 1..200 = %+v, want p50 100, p99 198, max 200", d)
	}
	if got := newDist(nil); got.Count != 0 || got.P99Ms != 0 {
		t.Errorf("empty dist = %+v", got)
	}
	xy := cdf(s, 10)
	if last := xy[len(xy)-1]; last.X != 200 || last.Y != 1 {
		t.Errorf("cdf ends at %+v, want (200, 1)", last)
	}
}
