package state

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/firstseen/firstseen/operators"
)

// TestUserFilterHasNoFalseNegatives: every committed user, those present
// when the filter was built and those committed since, passes the filter,
// also after it grew past its capacity; and few unknown users do.
func TestUserFilterHasNoFalseNegatives(t *testing.T) {
	db, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r := rand.New(rand.NewPCG(5, 5))
	var users []operators.UUID
	commit := func(n int) {
		b := db.NewBatch()
		for range n {
			u := randomUUID(r)
			users = append(users, u)
			b.SetUser(&u, 1)
		}
		if err := db.Commit(Header{}, b); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	defer func(m int64) { filterMinUsers = m }(filterMinUsers)
	filterMinUsers = 1000
	commit(2000) // before the filter
	db.EnableUserFilter()
	if err := db.WaitUserFilter(); err != nil {
		t.Fatal(err)
	}
	f := db.filter.Load()
	for range 10 { // past the first part's capacity
		commit(5000)
	}
	if parts := len(*f.parts.Load()); parts < 2 {
		t.Fatalf("the filter did not grow: %d part(s) for %d users", parts, len(users))
	}
	rd, err := db.NewReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	for i := range users {
		if !f.mayContain(filterKey{userHash(&users[i]), users[i].KeyGroup()}) {
			t.Fatalf("user %d of %d is not in the filter", i, len(users))
		}
	}
	for i := 0; i < len(users); i += 97 {
		if v, ok := rd.Get(&users[i]); !ok || v != 1 {
			t.Fatalf("user %d: %d %v", i, v, ok)
		}
	}
	fp := 0
	const probes = 200_000
	for range probes {
		u := randomUUID(r)
		if f.mayContain(filterKey{userHash(&u), u.KeyGroup()}) {
			fp++
		}
	}
	if rate := float64(fp) / probes; rate > 0.02 {
		t.Fatalf("false-positive rate %.3f", rate)
	}
	t.Logf("%d users, %d parts, %d bytes, false positives %.4f", len(users), len(*f.parts.Load()), f.bytes(),
		float64(fp)/probes)
}

// TestBulkLoadDropsTheFilter: users loaded by a Loader into a DB whose
// filter is enabled are found, not refused by a filter that lacks them.
func TestBulkLoadDropsTheFilter(t *testing.T) {
	db, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.EnableUserFilter()
	if err := db.WaitUserFilter(); err != nil {
		t.Fatal(err)
	}
	l, err := db.NewLoader("")
	if err != nil {
		t.Fatal(err)
	}
	u := randomUUID(rand.New(rand.NewPCG(6, 6)))
	if err := l.Add(&u, 7); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Finish(context.Background()); err != nil {
		t.Fatal(err)
	}
	rd, err := db.NewReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if v, ok := rd.Get(&u); !ok || v != 7 {
		t.Fatalf("loaded user: %d %v", v, ok)
	}
	db.EnableUserFilter() // rebuilt from the state
	if err := db.WaitUserFilter(); err != nil {
		t.Fatal(err)
	}
	if v, ok := rd.Get(&u); !ok || v != 7 {
		t.Fatalf("loaded user after the filter was rebuilt: %d %v", v, ok)
	}
}

// TestSortUsers: the order of sortUsers is the byte order of user keys,
// for both of its paths (small and counting sort).
func TestSortUsers(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for _, n := range []int{0, 1, 100, 5 * operators.MaxKeyGroups} {
		users := make([]userEntry, n)
		for i := range users {
			u := randomUUID(r)
			if i > 0 && r.IntN(10) == 0 {
				u = users[i-1].uuid() // duplicates stay adjacent
			}
			b := Batch{}
			b.SetUser(&u, int64(i))
			users[i] = b.users[0]
		}
		sortUsers(users)
		var prev [userKeyLen]byte
		for i := range users {
			u := users[i].uuid()
			var k [userKeyLen]byte
			UserKey(&k, &u)
			if i > 0 && string(k[:]) < string(prev[:]) {
				t.Fatalf("n=%d: entry %d out of key order", n, i)
			}
			prev = k
		}
	}
}

// TestCommitMergesUsersOfSeveralBatches: a user in two partitions' batches
// of one checkpoint keeps the minimum.
func TestCommitMergesUsersOfSeveralBatches(t *testing.T) {
	db, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r := rand.New(rand.NewPCG(8, 8))
	want := map[operators.UUID]int64{}
	var batches []*Batch
	for range 3 {
		batches = append(batches, db.NewBatch())
	}
	for i := 0; i < 30_000; i++ {
		u := randomUUID(r)
		for _, b := range batches {
			if r.IntN(2) == 0 {
				v := r.Int64N(1e12)
				b.SetUser(&u, v)
				if w, ok := want[u]; !ok || v < w {
					want[u] = v
				}
			}
		}
	}
	if err := db.Commit(Header{Epoch: 1}, batches...); err != nil {
		t.Fatal(err)
	}
	rd, err := db.NewReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	for u, v := range want {
		if got, ok := rd.Get(&u); !ok || got != v {
			t.Fatalf("%v: %d %v, want %d", u, got, ok, v)
		}
	}
}

// TestUserFilterFalsePositiveRate fills a filter part to its capacity.
func TestUserFilterFalsePositiveRate(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	f := newUserFilter(1 << 20)
	p := (*f.parts.Load())[0]
	keys := make([]filterKey, 0, p.capacity)
	for range p.capacity {
		u := randomUUID(r)
		keys = append(keys, filterKey{userHash(&u), u.KeyGroup()})
	}
	f.add(keys)
	if n := len(*f.parts.Load()); n != 1 {
		t.Fatalf("%d parts", n)
	}
	for _, k := range keys {
		if !f.mayContain(k) {
			t.Fatal("false negative")
		}
	}
	fp := 0
	const probes = 1 << 20
	for range probes {
		u := randomUUID(r)
		if f.mayContain(filterKey{userHash(&u), u.KeyGroup()}) {
			fp++
		}
	}
	rate := float64(fp) / probes
	t.Logf("%d keys in %d bytes: false positives %.4f", len(keys), f.bytes(), rate)
	if rate > 0.01 {
		t.Fatalf("false-positive rate %.4f at capacity", rate)
	}
}
