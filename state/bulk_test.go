package state

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firstseen/firstseen/operators"
)

func openTestDB(t *testing.T, dir string) *DB {
	t.Helper()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// bulkLoad loads m with the given tuning and returns the stats.
func bulkLoad(t *testing.T, db *DB, tune func(*Loader), recs ...loadRec) LoadStats {
	t.Helper()
	l, err := db.NewLoader("")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Abort()
	if tune != nil {
		tune(l)
	}
	for i := range recs {
		if err := l.Add(&recs[i].u, recs[i].t); err != nil {
			t.Fatal(err)
		}
	}
	st, err := l.Finish(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.dir); !os.IsNotExist(err) {
		t.Errorf("loader directory %s still there after Finish: %v", l.dir, err)
	}
	return st
}

// dump reads the whole user state through EachUser.
func dump(t *testing.T, db *DB) map[operators.UUID]int64 {
	t.Helper()
	m := map[operators.UUID]int64{}
	var prev []byte
	err := db.EachUser(func(u operators.UUID, fs int64) error {
		var k [userKeyLen]byte
		key := UserKey(&k, &u)
		if prev != nil && string(prev) >= string(key) {
			return fmt.Errorf("EachUser out of key order at %s", u)
		}
		prev = append(prev[:0], key...)
		if _, dup := m[u]; dup {
			return fmt.Errorf("user %s twice", u)
		}
		m[u] = fs
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestLoadMergeRule(t *testing.T) {
	db := openTestDB(t, t.TempDir())
	r := rand.New(rand.NewPCG(7, 7))
	a, b, c, d := randomUUID(r), randomUUID(r), randomUUID(r), randomUUID(r)
	batch := db.NewBatch()
	batch.SetUser(&a, 5000)
	batch.SetUser(&b, 5000)
	batch.SetUser(&c, 5000)
	if err := db.Commit(Header{}, batch); err != nil {
		t.Fatal(err)
	}
	batch.Close()

	// a earlier, b later, c equal, d new with duplicates (min 300).
	st := bulkLoad(t, db, nil,
		loadRec{a, 4000}, loadRec{b, 6000}, loadRec{c, 5000}, loadRec{d, 700}, loadRec{d, 300}, loadRec{d, 900}, loadRec{a, 4500})
	want := LoadStats{Read: 7, Distinct: 4, New: 1, Lowered: 1, Unchanged: 2, Before: 3, SSTFiles: st.SSTFiles, SSTBytes: st.SSTBytes}
	if st != want || st.Duplicates() != 3 || st.After() != 4 || st.SSTFiles != 1 {
		t.Errorf("stats %+v, want %+v, 1 SST", st, want)
	}
	rd, err := db.NewReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	for u, w := range map[*operators.UUID]int64{&a: 4000, &b: 5000, &c: 5000, &d: 300} {
		if got, ok := rd.Get(u); !ok || got != w {
			t.Errorf("%s: %d %v, want %d", u, got, ok, w)
		}
	}

	// The same load again changes nothing and writes nothing.
	st = bulkLoad(t, db, nil,
		loadRec{a, 4000}, loadRec{b, 6000}, loadRec{c, 5000}, loadRec{d, 700}, loadRec{d, 300}, loadRec{d, 900}, loadRec{a, 4500})
	if st.New != 0 || st.Lowered != 0 || st.Unchanged != 4 || st.Before != 4 || st.SSTFiles != 0 {
		t.Errorf("second load: %+v, want 0 new, 0 lowered, 4 unchanged, no SST", st)
	}
	if n, err := db.Users(); n != 4 || err != nil {
		t.Errorf("Users() = %d, %v; want 4", n, err)
	}
}

func TestLoadSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	want := map[operators.UUID]int64{}
	var recs []loadRec
	for range 3000 {
		u := randomUUID(r)
		want[u] = 1 + r.Int64N(operators.MaxEventTime)
		recs = append(recs, loadRec{u, want[u]})
	}
	bulkLoad(t, db, nil, recs...)
	db.Close()
	db = openTestDB(t, dir)
	if got := dump(t, db); len(got) != len(want) {
		t.Fatalf("after reopen %d users, want %d", len(got), len(want))
	} else {
		for u, w := range want {
			if got[u] != w {
				t.Fatalf("%s: %d, want %d", u, got[u], w)
			}
		}
	}
}

// TestLoadRandomAgainstOracle compares loads with a brute-force model: the
// state is the per-user minimum of everything ever written, whatever path
// (checkpoint batches, earlier loads) wrote it. Small thresholds make every
// load spill, split buckets by key group and rotate SST files.
func TestLoadRandomAgainstOracle(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 11))
	for round := range 6 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			db := openTestDB(t, t.TempDir())
			oracle := map[operators.UUID]int64{}
			var pool []operators.UUID
			pick := func() operators.UUID {
				if len(pool) > 0 && r.IntN(3) > 0 {
					return pool[r.IntN(len(pool))]
				}
				u := randomUUID(r)
				pool = append(pool, u)
				return u
			}
			randTime := func() int64 {
				if r.IntN(4) == 0 {
					return operators.MinEventTime + r.Int64N(3)
				}
				return 1 + r.Int64N(operators.MaxEventTime)
			}
			for step := range 4 {
				if r.IntN(2) == 0 {
					// Existing state from checkpoints (memtable, then flushed by later ingests).
					b := db.NewBatch()
					for range r.IntN(3000) {
						u, fs := pick(), randTime()
						b.SetUser(&u, fs)
						if old, ok := oracle[u]; !ok || fs < old {
							oracle[u] = fs
						}
					}
					if err := db.Commit(Header{Epoch: uint64(step)}, b); err != nil {
						t.Fatal(err)
					}
					b.Close()
				}
				n := r.IntN(20000)
				if step == 0 && round == 0 {
					n = 0 // an empty load
				}
				recs := make([]loadRec, n)
				inLoad := map[operators.UUID]int64{}
				for i := range recs {
					recs[i] = loadRec{pick(), randTime()}
					if old, ok := inLoad[recs[i].u]; !ok || recs[i].t < old {
						inLoad[recs[i].u] = recs[i].t
					}
				}
				var want LoadStats
				want.Read, want.Distinct, want.Before = int64(n), int64(len(inLoad)), int64(len(oracle))
				for u, fs := range inLoad {
					old, ok := oracle[u]
					switch {
					case !ok:
						want.New++
						oracle[u] = fs
					case fs < old:
						want.Lowered++
						oracle[u] = fs
					default:
						want.Unchanged++
					}
				}
				tune := func(l *Loader) {
					l.MemRecords = 1 + r.IntN(5000)
					if r.IntN(3) == 0 {
						l.UnitRecords = 150 + r.IntN(500) // some buckets split by key group
					}
					l.Workers = 1 + r.IntN(3)
					l.SSTSize = int64(r.IntN(2)) // 0: default; 1: a new SST every 4096 keys
				}
				st := bulkLoad(t, db, tune, recs...)
				want.SSTFiles, want.SSTBytes = st.SSTFiles, st.SSTBytes
				if st != want {
					t.Fatalf("step %d: stats %+v, want %+v", step, st, want)
				}
				if (st.New+st.Lowered == 0) != (st.SSTFiles == 0) {
					t.Fatalf("step %d: %d SSTs for %d writes", step, st.SSTFiles, st.New+st.Lowered)
				}
				got := dump(t, db)
				if len(got) != len(oracle) {
					t.Fatalf("step %d: %d users, oracle %d", step, len(got), len(oracle))
				}
				for u, w := range oracle {
					if got[u] != w {
						t.Fatalf("step %d: %s = %d, oracle %d", step, u, got[u], w)
					}
				}
				if n, err := db.Users(); err != nil || n != st.After() {
					t.Fatalf("step %d: Users() = %d, %v; stats say %d", step, n, err, st.After())
				}
			}
		})
	}
}

func TestLoaderAbortAppliesNothing(t *testing.T) {
	db := openTestDB(t, t.TempDir())
	l, err := db.NewLoader("")
	if err != nil {
		t.Fatal(err)
	}
	l.MemRecords = 10 // spill
	r := rand.New(rand.NewPCG(1, 2))
	for range 100 {
		u := randomUUID(r)
		if err := l.Add(&u, 1000); err != nil {
			t.Fatal(err)
		}
	}
	l.Abort()
	l.Abort()
	if _, err := os.Stat(l.dir); !os.IsNotExist(err) {
		t.Errorf("loader directory still there: %v", err)
	}
	u := randomUUID(r)
	if err := l.Add(&u, 1); !errors.Is(err, ErrLoaderDone) {
		t.Errorf("Add after Abort: %v", err)
	}
	if _, err := l.Finish(context.Background()); !errors.Is(err, ErrLoaderDone) {
		t.Errorf("Finish after Abort: %v", err)
	}
	if n, err := db.Users(); n != 0 || err != nil {
		t.Errorf("Users() = %d, %v after Abort", n, err)
	}
}

func TestLoaderRefusesOutOfRangeTimes(t *testing.T) {
	db := openTestDB(t, t.TempDir())
	l, err := db.NewLoader(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Abort()
	var u operators.UUID
	for _, fs := range []int64{0, -1, operators.MaxEventTime + 1} {
		if err := l.Add(&u, fs); err == nil {
			t.Errorf("Add(%d) accepted", fs)
		}
	}
	for _, fs := range []int64{operators.MinEventTime, operators.MaxEventTime} {
		if err := l.Add(&u, fs); err != nil {
			t.Errorf("Add(%d): %v", fs, err)
		}
	}
}

func TestLoaderFinishHonoursCancel(t *testing.T) {
	db := openTestDB(t, t.TempDir())
	l, err := db.NewLoader("")
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 5))
	for range 1000 {
		u := randomUUID(r)
		l.Add(&u, 1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Finish(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Finish with a cancelled context: %v", err)
	}
	if n, _ := db.Users(); n != 0 {
		t.Errorf("%d users after a cancelled load", n)
	}
}

func TestLoaderAddDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	db := openTestDB(t, t.TempDir())
	l, err := db.NewLoader("")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Abort()
	l.MemRecords = 1 << 12
	r := rand.New(rand.NewPCG(1, 1))
	us := make([]operators.UUID, 1<<14)
	for i := range us {
		us[i] = randomUUID(r)
	}
	for i := range us { // grow the buffers and open the spill files
		l.Add(&us[i], 1)
	}
	i := 0
	allocs := testing.AllocsPerRun(1<<14, func() {
		l.Add(&us[i%len(us)], 2)
		i++
	})
	if allocs != 0 {
		t.Errorf("Add allocates %.2f times per call", allocs)
	}
}

func TestBulkIsLockedWhileOpen(t *testing.T) {
	dir := t.TempDir()
	db := openTestDB(t, dir)
	_, err := Open(dir, Options{})
	if err == nil {
		t.Fatal("second Open of a state directory succeeded")
	}
	if !IsLocked(err) || !strings.Contains(err.Error(), dir) {
		t.Errorf("IsLocked(%v) = false, or the directory is not named", err)
	}
	if IsLocked(errors.New("corrupt")) || IsLocked(nil) {
		t.Error("IsLocked true for an unrelated error")
	}
	db.Close()
	db2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	db2.Close()
}

func TestLoadLeftoversDoNotDisturbPebble(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := db.NewLoader("")
	if err != nil {
		t.Fatal(err)
	}
	l.MemRecords = 1
	var u operators.UUID
	l.Add(&u, 1) // spilled: a file in the leftover directory
	leftover := l.dir
	db.Close() // as if killed: l never finished
	db = openTestDB(t, dir)
	if _, err := os.Stat(filepath.Join(leftover, "bucket-"+fmt.Sprintf("%02d", u.KeyGroup()/groupsPerBucket))); err != nil {
		t.Fatalf("no spill file: %v", err)
	}
	if err := db.RemoveLoadLeftovers(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Errorf("leftover %s not removed: %v", leftover, err)
	}
	if n, _ := db.Users(); n != 0 {
		t.Errorf("%d users from an unfinished load", n)
	}
}
