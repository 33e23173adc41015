package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Snapshots let `firstseen state` look inside a state that a running
// processor holds locked. After a checkpoint, the processor publishes a
// Pebble checkpoint (hard links to the SSTs, so nearly free on disk) as
// <state-dir>/snapshots/<epoch>. Readers open the newest one; each snapshot
// is a complete, consistent database of its own. The publisher keeps the
// newest two and never removes one a reader holds (its directory lock).

const snapshotsDir = "snapshots"

// PublishSnapshot writes the current committed state as a snapshot named
// after epoch and removes older snapshots no reader holds.
func (d *DB) PublishSnapshot(epoch uint64) error {
	root := filepath.Join(d.dir, snapshotsDir)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	final := filepath.Join(root, strconv.FormatUint(epoch, 10))
	if _, err := os.Stat(final); err == nil {
		return nil // already published
	}
	tmp := final + ".tmp"
	os.RemoveAll(tmp)
	if err := d.db.Checkpoint(tmp, pebble.WithFlushedWAL()); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("snapshot to %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	epochs, err := snapshotEpochs(root)
	if err != nil {
		return err
	}
	for _, e := range epochs[:max(0, len(epochs)-2)] {
		dir := filepath.Join(root, strconv.FormatUint(e, 10))
		lock, err := pebble.LockDirectory(dir, vfs.Default)
		if err != nil {
			continue // a reader has it open
		}
		os.RemoveAll(dir)
		lock.Close()
	}
	return nil
}

// snapshotEpochs lists the published snapshots, oldest first.
func snapshotEpochs(root string) ([]uint64, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, e := range entries {
		if n, err := strconv.ParseUint(e.Name(), 10, 64); err == nil && e.IsDir() {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

// ErrInUse is returned by Open when another process holds the state.
var ErrInUse = errors.New("the state is in use by another process")

// OpenForReading opens the state in dir for reading. When a running
// processor holds it, it opens the newest snapshot instead; snapshot is
// then true.
func OpenForReading(dir string) (db *DB, snapshot bool, err error) {
	db, err = Open(dir, Options{ReadOnly: true})
	if err == nil || !errors.Is(err, ErrInUse) {
		return db, false, err
	}
	root := filepath.Join(dir, snapshotsDir)
	epochs, lerr := snapshotEpochs(root)
	if lerr != nil || len(epochs) == 0 {
		return nil, false, fmt.Errorf("state dir %s is in use by a running firstseen process and has no snapshot yet "+
			"(run publishes one at its first checkpoint, then every --snapshot-interval)", dir)
	}
	for i := len(epochs) - 1; i >= 0; i-- {
		db, err = Open(filepath.Join(root, strconv.FormatUint(epochs[i], 10)), Options{ReadOnly: true})
		if err == nil {
			return db, true, nil
		}
	}
	return nil, false, err
}
