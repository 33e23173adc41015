package state

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/sstable"

	"github.com/firstseen/firstseen/operators"
)

// benchUser is user i of the benchmarks' states: random-looking uuids that
// need not be stored.
func benchUser(i uint64) operators.UUID {
	var u operators.UUID
	binary.LittleEndian.PutUint64(u[:8], splitmix(i))
	binary.LittleEndian.PutUint64(u[8:], splitmix(i^0xdeadbeefcafebabe))
	return u
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// commitEpochs adds users [from, to) to db the way a catching-up
// processor does: one checkpoint commit per epoch of epochMin plus up to
// epochSpread new users.
func commitEpochs(tb testing.TB, db *DB, r *rand.Rand, from, to, epochMin, epochSpread uint64) {
	for done := from; done < to; {
		n := min(to-done, epochMin+r.Uint64N(epochSpread))
		b := db.NewBatch()
		for i := done; i < done+n; i++ {
			u := benchUser(i)
			b.SetUser(&u, 1_600_000_000_000+r.Int64N(200_000_000_000))
		}
		for p := int32(0); p < 4; p++ {
			b.PutPartition(p, PartitionCheckpoint{NextOffset: int64(done)})
		}
		if err := db.Commit(Header{}, b); err != nil {
			tb.Fatal(err)
		}
		b.Close()
		done += n
	}
}

// waitCompactions waits until Pebble has no flush or compaction running.
func waitCompactions(db *DB) {
	for idle := 0; idle < 3; {
		m := db.db.Metrics()
		if m.Compact.NumInProgress == 0 && m.Flush.NumInProgress == 0 {
			idle++
		} else {
			idle = 0
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var (
	epochStatesMu sync.Mutex
	epochStates   = map[uint64]*DB{}
)

// epochState is a state of n users built by commits of 100k-400k new
// users each, shared by the benchmarks of one run.
func epochState(b *testing.B, n uint64) *DB {
	epochStatesMu.Lock()
	defer epochStatesMu.Unlock()
	if db := epochStates[n]; db != nil {
		return db
	}
	dir, err := os.MkdirTemp("", "firstseen-bench-state-")
	if err != nil {
		b.Fatal(err)
	}
	db, err := Open(dir, Options{CacheSize: benchCacheSize})
	if err != nil {
		b.Fatal(err)
	}
	commitEpochs(b, db, rand.New(rand.NewPCG(7, 7)), 0, n, 100_000, 300_000)
	waitCompactions(db)
	epochStates[n] = db // removed by TestMain
	return db
}

// FIRSTSEEN_BENCH_OPTIONS varies Pebble's options in the benchmarks, to
// measure the choices of Open and setTableOptions: comma-separated
// bs=<block size>, ibs=<index block size>, comp=none|snappy|minlz, l0=<L0CompactionThreshold>,
// l0stop=<L0StopWritesThreshold>, mem=<MemTableSize MiB>,
// cache=<Options.CacheSize MiB>, lbase=<LBaseMaxBytes MiB>. For example
// FIRSTSEEN_BENCH_OPTIONS=bs=32768,comp=snappy,l0=2 is the options before
// they were tuned.
func benchOptions() {
	spec := os.Getenv("FIRSTSEEN_BENCH_OPTIONS")
	if spec == "" {
		return
	}
	kv := map[string]int64{}
	var comp *sstable.CompressionProfile
	for _, f := range strings.Split(spec, ",") {
		k, v, _ := strings.Cut(f, "=")
		switch {
		case k == "comp" && v == "none":
			comp = sstable.NoCompression
		case k == "comp" && v == "snappy":
			comp = sstable.SnappyCompression
		case k == "comp" && v == "minlz":
			comp = sstable.MinLZCompression
		default:
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				panic("FIRSTSEEN_BENCH_OPTIONS: " + f)
			}
			kv[k] = n
		}
	}
	testOptions = func(o *pebble.Options) {
		for i := range o.Levels {
			if v, ok := kv["bs"]; ok {
				o.Levels[i].BlockSize = int(v)
			}
			if v, ok := kv["ibs"]; ok {
				o.Levels[i].IndexBlockSize = int(v)
			}
			if comp != nil {
				o.Levels[i].Compression = func() *sstable.CompressionProfile { return comp }
			}
		}
		if v, ok := kv["l0"]; ok {
			o.L0CompactionThreshold = int(v)
		}
		if v, ok := kv["l0stop"]; ok {
			o.L0StopWritesThreshold = int(v)
		}
		if v, ok := kv["mem"]; ok {
			o.MemTableSize = uint64(v) << 20
		}
		if v, ok := kv["lbase"]; ok {
			o.LBaseMaxBytes = v << 20
		}
	}
	benchCacheSize = kv["cache"] << 20
}

// benchCacheSize is the block cache of the benchmarks' states (0: the
// default).
var benchCacheSize int64

func TestMain(m *testing.M) {
	benchOptions()
	code := m.Run()
	if bulkDir != "" {
		os.RemoveAll(bulkDir)
	}
	for _, db := range epochStates {
		dir := db.Dir()
		db.Close()
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// BenchmarkReaderGetEpochs looks up users in a state built by checkpoint
// commits of 100k-400k new users each, as a catching-up processor builds
// it: half of the lookups are users in the state, half new ones; with the
// user filter a processor enables, and with Pebble alone. 1M users; 10M too
// with FIRSTSEEN_BENCH_10M=1 (building it takes a few minutes).
func BenchmarkReaderGetEpochs(b *testing.B) {
	sizes := []uint64{1_000_000}
	if os.Getenv("FIRSTSEEN_BENCH_10M") == "1" {
		sizes = append(sizes, 10_000_000)
	}
	for _, n := range sizes {
		for _, filter := range []bool{false, true} {
			b.Run(fmt.Sprintf("users=%dM/filter=%v", n/1_000_000, filter), func(b *testing.B) {
				db := epochState(b, n)
				if filter {
					db.EnableUserFilter()
					if err := db.WaitUserFilter(); err != nil {
						b.Fatal(err)
					}
				} else {
					db.dropUserFilter()
				}
				rd, err := db.NewReader()
				if err != nil {
					b.Fatal(err)
				}
				defer rd.Close()
				r := rand.New(rand.NewPCG(9, 9))
				keys := make([]operators.UUID, 1<<16)
				for i := range keys {
					if i%2 == 0 {
						keys[i] = benchUser(r.Uint64N(n))
					} else {
						keys[i] = benchUser(n + r.Uint64N(1<<40))
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					rd.Get(&keys[i&(len(keys)-1)])
				}
			})
		}
	}
}

// BenchmarkCommitEpochs is the write side of 1M new users: checkpoint
// commits of 80k-140k users each (the 5M-record benchmark's), into an
// empty state, and into one of 10M bulk-loaded users with
// FIRSTSEEN_BENCH_10M=1. cpu-ns/user is the process's CPU time per user,
// with Pebble's flushes and compactions, until they are done.
func BenchmarkCommitEpochs(b *testing.B) {
	bases := []uint64{0}
	if os.Getenv("FIRSTSEEN_BENCH_10M") == "1" {
		bases = append(bases, 10_000_000)
	}
	for _, base := range bases {
		b.Run(fmt.Sprintf("base=%dM", base/1_000_000), func(b *testing.B) {
			var cpu time.Duration
			const users = 1_000_000
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				db, err := Open(b.TempDir(), Options{CacheSize: benchCacheSize})
				if err != nil {
					b.Fatal(err)
				}
				if base > 0 {
					l, err := db.NewLoader("")
					if err != nil {
						b.Fatal(err)
					}
					for j := uint64(0); j < base; j++ {
						u := benchUser(1<<50 + j)
						l.Add(&u, 1_600_000_000_000)
					}
					if _, err := l.Finish(b.Context()); err != nil {
						b.Fatal(err)
					}
					waitCompactions(db)
				}
				r := rand.New(rand.NewPCG(uint64(i), 8))
				b.StartTimer()
				c0 := cpuTime()
				commitEpochs(b, db, r, 0, users, 80_000, 60_000)
				waitCompactions(db)
				cpu += cpuTime() - c0
				b.StopTimer()
				db.Close()
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*users), "cpu-ns/user")
			b.ReportMetric(0, "ns/op")
		})
	}
}

var (
	bulkOnce sync.Once
	bulkDir  string
)

// bulkState is the directory of a closed state of 10M users loaded by a
// Loader (as `firstseen bootstrap` does), shared by the benchmarks of one
// run.
func bulkState(b *testing.B) string {
	if os.Getenv("FIRSTSEEN_BENCH_10M") != "1" {
		b.Skip("set FIRSTSEEN_BENCH_10M=1 to run")
	}
	bulkOnce.Do(func() {
		dir, err := os.MkdirTemp("", "firstseen-bench-bulk-")
		if err != nil {
			b.Fatal(err)
		}
		db, err := Open(dir, Options{})
		if err != nil {
			b.Fatal(err)
		}
		l, err := db.NewLoader("")
		if err != nil {
			b.Fatal(err)
		}
		r := rand.New(rand.NewPCG(3, 3))
		for i := uint64(0); i < 10_000_000; i++ {
			u := benchUser(i)
			l.Add(&u, 1_600_000_000_000+r.Int64N(200_000_000_000))
		}
		if _, err := l.Finish(b.Context()); err != nil {
			b.Fatal(err)
		}
		if err := db.Close(); err != nil {
			b.Fatal(err)
		}
		bulkDir = dir
	})
	if bulkDir == "" {
		b.Fatal("no bulk state")
	}
	return bulkDir
}

// BenchmarkReaderGetBulk looks up known users in a state of 10M users
// freshly opened (an empty block cache), the way a restarted processor
// looks up each active user once before its cache has it. cpu-ns/op counts
// all of the process's CPU, I/O system calls included.
// FIRSTSEEN_BENCH_10M=1.
func BenchmarkReaderGetBulk(b *testing.B) {
	dir := bulkState(b)
	db, err := Open(dir, Options{CacheSize: benchCacheSize})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	rd, err := db.NewReader()
	if err != nil {
		b.Fatal(err)
	}
	defer rd.Close()
	r := rand.New(rand.NewPCG(4, 4))
	b.ResetTimer()
	c0 := cpuTime()
	for i := 0; i < b.N; i++ {
		u := benchUser(r.Uint64N(10_000_000))
		if _, ok := rd.Get(&u); !ok {
			b.Fatal("a loaded user is missing")
		}
	}
	b.ReportMetric(float64((cpuTime()-c0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// BenchmarkUserFilterBuild opens the state of 10M users and builds its user
// filter (what a processor does in the background when it starts). An op
// is the whole build. FIRSTSEEN_BENCH_10M=1.
func BenchmarkUserFilterBuild(b *testing.B) {
	dir := bulkState(b)
	var cpu time.Duration
	for i := 0; i < b.N; i++ {
		c0 := cpuTime()
		db, err := Open(dir, Options{CacheSize: benchCacheSize})
		if err != nil {
			b.Fatal(err)
		}
		db.EnableUserFilter()
		if err := db.WaitUserFilter(); err != nil {
			b.Fatal(err)
		}
		cpu += cpuTime() - c0
		b.ReportMetric(float64(db.UserFilterBytes()), "filter-bytes")
		db.Close()
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/1e7, "cpu-ns/user")
}
