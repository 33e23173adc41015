package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Snapshots let `firstseen state` look inside a state that a running
// processor holds locked. When it starts and then after a checkpoint every
// --snapshot-interval, the processor publishes a Pebble checkpoint (hard
// links to the SSTs, so nearly free on disk) as <state-dir>/snapshots/<time>,
// named by the publication time in nanoseconds. Readers open the newest one;
// each snapshot is a complete, consistent database of its own. The
// publisher keeps the newest two and never removes one a reader holds (its
// directory lock).
//
// When no processor holds the state, a reader does not keep the live
// directory locked either (a long export would otherwise stop a `run` or
// `bootstrap` from starting): it takes a private checkpoint of it, lets go
// of the live directory at once, and reads the copy.

const snapshotsDir = "snapshots"

// PublishSnapshot writes the current committed state as a new snapshot and
// removes older snapshots no reader holds.
func (d *DB) PublishSnapshot() error {
	root := filepath.Join(d.dir, snapshotsDir)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	final := filepath.Join(root, strconv.FormatInt(time.Now().UnixNano(), 10))
	tmp := final + ".tmp"
	os.RemoveAll(tmp)
	if err := d.db.Checkpoint(tmp, pebble.WithFlushedWAL()); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("snapshot to %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	names, err := snapshotNames(root)
	if err != nil {
		return err
	}
	for _, e := range names[:max(0, len(names)-2)] {
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

// snapshotNames lists the published snapshots, oldest first.
func snapshotNames(root string) ([]uint64, error) {
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

// OpenForReading opens the state in dir for reading, without keeping it
// locked: from a private checkpoint when it is free, from the newest
// published snapshot when a running processor holds it (snapshot is then
// true). Close removes the private checkpoint.
func OpenForReading(dir string) (db *DB, snapshot bool, err error) {
	if m, _ := filepath.Glob(filepath.Join(dir, "marker.manifest.*")); len(m) == 0 {
		return nil, false, fmt.Errorf("state dir %s holds no state", dir)
	}
	// Opened writable only to take the checkpoint (Pebble cannot checkpoint
	// a read-only handle); nothing is written but what Pebble writes on open.
	live, err := Open(dir, Options{})
	if err == nil {
		defer live.Close()
		tmp, err := os.MkdirTemp(dir, "read-")
		if err != nil {
			return nil, false, err
		}
		copyDir := filepath.Join(tmp, "db")
		if err := live.db.Checkpoint(copyDir); err != nil {
			os.RemoveAll(tmp)
			return nil, false, fmt.Errorf("state dir %s: copy for reading: %w", dir, err)
		}
		db, err := Open(copyDir, Options{ReadOnly: true})
		if err != nil {
			os.RemoveAll(tmp)
			return nil, false, err
		}
		db.removeOnClose = tmp
		return db, false, nil
	}
	if !errors.Is(err, ErrInUse) {
		return nil, false, err
	}
	root := filepath.Join(dir, snapshotsDir)
	names, lerr := snapshotNames(root)
	if lerr != nil || len(names) == 0 {
		return nil, false, fmt.Errorf("state dir %s is in use by a running firstseen process and has no snapshot yet "+
			"(run publishes one when it starts, then every --snapshot-interval)", dir)
	}
	for i := len(names) - 1; i >= 0; i-- {
		db, err = Open(filepath.Join(root, strconv.FormatUint(names[i], 10)), Options{ReadOnly: true})
		if err == nil {
			return db, true, nil
		}
	}
	return nil, false, err
}
