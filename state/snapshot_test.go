package state

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/firstseen/firstseen/operators"
)

func TestSnapshotsForReadersWhileHeld(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	u := operators.UUID{1}
	write := func(epoch uint64, fs int64) {
		b := db.NewBatch()
		defer b.Close()
		b.SetUser(&u, fs)
		if err := db.Commit(Header{Epoch: epoch, Topic: "t"}, b); err != nil {
			t.Fatal(err)
		}
		if err := db.PublishSnapshot(); err != nil {
			t.Fatal(err)
		}
	}
	write(1, 500)
	// The processor holds the state: a reader gets the snapshot.
	r, snap, err := OpenForReading(dir)
	if err != nil || !snap {
		t.Fatalf("OpenForReading: %v snapshot=%v", err, snap)
	}
	rd, _ := r.NewReader()
	if v, ok := rd.Get(&u); !ok || v != 500 {
		t.Fatalf("snapshot has %d %v", v, ok)
	}
	// Newer snapshots; the one the reader holds must survive.
	write(2, 400)
	write(3, 300)
	write(4, 200)
	if names, _ := snapshotNames(filepath.Join(dir, snapshotsDir)); len(names) != 3 {
		t.Fatalf("snapshots %v: the one in use must survive beside the newest two", names)
	}
	rd.Close()
	r.Close()
	write(5, 100)
	if names, _ := snapshotNames(filepath.Join(dir, snapshotsDir)); len(names) != 2 {
		t.Fatalf("snapshots kept: %v, want the newest two", names)
	}
	r, snap, err = OpenForReading(dir)
	if err != nil || !snap {
		t.Fatal(err)
	}
	defer r.Close()
	rd, _ = r.NewReader()
	defer rd.Close()
	if v, _ := rd.Get(&u); v != 100 {
		t.Fatalf("newest snapshot has %d, want 100", v)
	}
	cp, ok, err := r.LoadCheckpoint()
	if err != nil || !ok || cp.Epoch != 5 {
		t.Fatalf("snapshot checkpoint %+v %v %v", cp, ok, err)
	}
}

// TestReaderDoesNotLockTheState: a reader of a free state works from a
// private copy, so a processor or bootstrap can take the state meanwhile.
func TestReaderDoesNotLockTheState(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	u := operators.UUID{7}
	b := db.NewBatch()
	b.SetUser(&u, 42)
	if err := db.Commit(Header{Epoch: 1}, b); err != nil {
		t.Fatal(err)
	}
	b.Close()
	db.Close()
	r, snap, err := OpenForReading(dir)
	if err != nil || snap {
		t.Fatalf("%v %v", err, snap)
	}
	w, err := Open(dir, Options{}) // a processor starting while the reader reads
	if err != nil {
		t.Fatalf("the reader keeps the state locked: %v", err)
	}
	w.Close()
	rd, _ := r.NewReader()
	if v, ok := rd.Get(&u); !ok || v != 42 {
		t.Fatalf("read copy has %d %v", v, ok)
	}
	rd.Close()
	copyDir := r.removeOnClose
	r.Close()
	if _, err := os.Stat(copyDir); !os.IsNotExist(err) {
		t.Fatalf("the read copy %s was not removed", copyDir)
	}
}
