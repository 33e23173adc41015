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
		if err := db.PublishSnapshot(epoch); err != nil {
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
	if _, err := os.Stat(filepath.Join(dir, snapshotsDir, "1")); err != nil {
		t.Fatal("a snapshot in use was removed")
	}
	rd.Close()
	r.Close()
	write(5, 100)
	epochs, _ := snapshotEpochs(filepath.Join(dir, snapshotsDir))
	if len(epochs) != 2 || epochs[1] != 5 {
		t.Fatalf("snapshots kept: %v, want the newest two", epochs)
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

func TestOpenForReadingWithoutProcessor(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	r, snap, err := OpenForReading(dir)
	if err != nil || snap {
		t.Fatalf("%v %v", err, snap)
	}
	r.Close()
}
