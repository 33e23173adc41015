package state

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/firstseen/firstseen/operators"
)

func randomUUID(r *rand.Rand) operators.UUID {
	var u operators.UUID
	for i := range u {
		u[i] = byte(r.Uint32())
	}
	return u
}

func TestCheckpointRoundTrip(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := db.LoadCheckpoint(); ok || err != nil {
		t.Fatalf("new state has a checkpoint: %v %v", ok, err)
	}
	r := rand.New(rand.NewPCG(1, 1))
	users := map[operators.UUID]int64{}
	b1, b2 := db.NewBatch(), db.NewBatch()
	for i := 0; i < 5000; i++ {
		u := randomUUID(r)
		users[u] = r.Int64N(2e12) - 1e11 // negative times too
		[]*Batch{b1, b2}[i%2].SetUser(&u, users[u])
	}
	held := []operators.Held{
		{Offset: 7, EventTime: 100, Timestamp: 90, Release: 86_400_000, UUID: randomUUID(r), Payload: []byte(`{"a":1}`)},
		{Offset: 3, EventTime: 101, Timestamp: 91, Release: 86_400_000, UUID: randomUUID(r), Payload: []byte(`{}`)},
		{Offset: 9, EventTime: -5, Timestamp: 0, Release: 0, UUID: randomUUID(r)},
	}
	for i := range held {
		b1.PutHeld(1, &held[i])
	}
	b2.PutHeld(2, &held[0])
	b2.DeleteHeld(2, held[0].Offset) // deleted in the same checkpoint: gone
	b1.PutPartition(1, PartitionCheckpoint{NextOffset: 10, Progress: operators.Progress{MaxEventTime: 101, Watermark: -599_899}})
	b2.PutPartition(2, PartitionCheckpoint{NextOffset: 0, Progress: operators.Progress{MaxEventTime: math.MinInt64, Watermark: math.MinInt64}})
	h := Header{Epoch: 42, Topic: "activity", TopicID: [16]byte{1, 2, 3, 15: 9}, Group: "g", Tolerance: 10 * time.Minute, Timezone: "Asia/Shanghai", Time: time.UnixMilli(1767225600123)}
	if err := db.Commit(h, b1, b2); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal("second Close:", err)
	}

	db, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	cp, ok, err := db.LoadCheckpoint()
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if cp.Header.Time.UnixMilli() != h.Time.UnixMilli() {
		t.Fatalf("time %v want %v", cp.Header.Time, h.Time)
	}
	cp.Header.Time = h.Time
	if cp.Header != h {
		t.Fatalf("header %+v want %+v", cp.Header, h)
	}
	if len(cp.Partitions) != 2 || cp.Partitions[1].NextOffset != 10 || cp.Partitions[1].Watermark != -599_899 ||
		cp.Partitions[2].MaxEventTime != math.MinInt64 {
		t.Fatalf("partitions %+v", cp.Partitions)
	}
	got, err := db.LoadHeld(1)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Offset != 3 || got[1].Offset != 7 || got[2].Offset != 9 ||
		string(got[1].Payload) != `{"a":1}` || got[1].UUID != held[0].UUID || got[2].EventTime != -5 {
		t.Fatalf("held %+v", got)
	}
	if g2, _ := db.LoadHeld(2); len(g2) != 0 {
		t.Fatalf("deleted held record came back: %+v", g2)
	}
	rd, err := db.NewReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	for u, fs := range users {
		if v, ok := rd.Get(&u); !ok || v != fs {
			t.Fatalf("user %v: %d %v, want %d", u, v, ok, fs)
		}
	}
	for i := 0; i < 1000; i++ {
		u := randomUUID(r)
		if _, ok := rd.Get(&u); ok {
			t.Fatal("unknown user found")
		}
	}
}

func TestReaderSeesCommitsOnlyAfterRefresh(t *testing.T) {
	db, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rd, err := db.NewReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	u := randomUUID(rand.New(rand.NewPCG(2, 2)))
	b := db.NewBatch()
	b.SetUser(&u, 5)
	if err := db.Commit(Header{Epoch: 1}, b); err != nil {
		t.Fatal(err)
	}
	if _, ok := rd.Get(&u); ok {
		t.Fatal("reader saw a commit before Refresh: its view must be stable within an epoch")
	}
	if err := rd.Refresh(); err != nil {
		t.Fatal(err)
	}
	if v, ok := rd.Get(&u); !ok || v != 5 {
		t.Fatalf("after Refresh: %d %v", v, ok)
	}
}

func TestCorruptHeaderIsAnError(t *testing.T) {
	var h Header
	for _, b := range [][]byte{nil, {FormatVersion}, {FormatVersion + 1, 0}, append(encodeHeader(nil, &Header{Topic: "x"}), 0)} {
		if err := decodeHeader(b, &h); err == nil {
			t.Errorf("%x decoded", b)
		}
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if db2, err := Open(dir, Options{}); err == nil {
		db2.Close()
		t.Fatal("a second process could open the same state")
	}
}

func BenchmarkReaderGet(b *testing.B) {
	db, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	r := rand.New(rand.NewPCG(3, 3))
	users := make([]operators.UUID, 100_000)
	batch := db.NewBatch()
	for i := range users {
		users[i] = randomUUID(r)
		if i%2 == 0 {
			batch.SetUser(&users[i], int64(i))
		}
	}
	if err := db.Commit(Header{}, batch); err != nil {
		b.Fatal(err)
	}
	rd, _ := db.NewReader()
	defer rd.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rd.Get(&users[i%len(users)]) // half hits, half misses
	}
}

// TestUserUpdatesKeepTheMinimum: first_seen never moves later, whatever
// order writers commit in (two partitions writing one user, a bootstrap).
func TestUserUpdatesKeepTheMinimum(t *testing.T) {
	db, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r := rand.New(rand.NewPCG(4, 4))
	u := randomUUID(r)
	want := int64(math.MaxInt64)
	for epoch := 0; epoch < 20; epoch++ {
		var batches []*Batch
		for i := 0; i < 3; i++ {
			v := r.Int64N(1e12) - 5e11
			want = min(want, v)
			b := db.NewBatch()
			b.SetUser(&u, v)
			batches = append(batches, b)
		}
		if err := db.Commit(Header{Epoch: uint64(epoch)}, batches...); err != nil {
			t.Fatal(err)
		}
		for _, b := range batches {
			b.Close()
		}
		rd, err := db.NewReader()
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := rd.Get(&u); !ok || got != want {
			t.Fatalf("epoch %d: first_seen %d, want the minimum %d", epoch, got, want)
		}
		if n := testing.AllocsPerRun(100, func() { rd.Get(&u) }); n != 0 && !raceEnabled {
			t.Fatalf("reading a merged key allocates %.1f times", n)
		}
		rd.Close()
		if epoch == 10 {
			if err := db.db.Flush(); err != nil { // merge operands now also in an SST
				t.Fatal(err)
			}
		}
	}
}

func TestIntentRoundTrip(t *testing.T) {
	db, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	in := Intent{Epoch: 7, Partitions: map[int32]IntentPartition{
		0: {Next: 100, Advances: []WatermarkAdvance{{At: 90, Watermark: -5}, {At: 100, Watermark: 1e12}}},
		3: {Next: 0},
	}, DeadLetterEnds: map[int32]int64{0: 12, 1: 0}}
	if err := db.WriteIntent(&in); err != nil {
		t.Fatal(err)
	}
	got, ok, err := db.LoadIntent()
	if err != nil || !ok || fmt.Sprint(got) != fmt.Sprint(in) {
		t.Fatalf("got %+v %v %v, want %+v", got, ok, err, in)
	}
	if err := db.Commit(Header{Epoch: 7}); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := db.LoadIntent(); ok {
		t.Fatal("the commit of the epoch left its intent behind")
	}
}
