// Package state keeps firstseen's keyed state and checkpoints in Pebble.
//
// One Pebble database holds everything a processor needs to resume: the
// first-seen time of every user, and the last checkpoint (source offsets,
// watermarks and held records). All of it is written in one synced batch per
// checkpoint, so state and positions can never disagree after a crash.
//
// Key formats (all integers big-endian, so keys sort numerically):
//
//	'u' | key group (2 bytes) | uuid (16 bytes)  -> first_seen: varint epoch ms, merged by minimum
//	'h' | partition (4 bytes) | offset (8 bytes) -> held record (see encodeHeld)
//	'p' | partition (4 bytes)                    -> partition checkpoint (see encodePartition)
//	'c'                                          -> checkpoint header (see encodeHeader)
//	'i'                                          -> intent of the epoch being written (see encodeIntent)
//
// The key group (operators.UUID.KeyGroup, 4096 groups) leads the user key so
// that state can later be split between owners by key-group ranges without
// rewriting it. The byte-level formats are in docs/state-format.md.
//
// Lookups go through an iterator with SeekPrefixGE and UseL6Filters: Pebble's
// Get skips the bloom filters of the bottom level, where a large state keeps
// nearly all its keys, and a miss (a new user) is the common expensive case.
package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"

	"github.com/firstseen/firstseen/operators"
)

// FormatVersion is written in every checkpoint header. A state directory
// written by a newer format is refused.
const FormatVersion = 1

const (
	prefixUser      = 'u'
	prefixHeld      = 'h'
	prefixPartition = 'p'
	keyHeader       = 'c'
	keyIntent       = 'i'
	userKeyLen      = 1 + 2 + 16
)

// Options tunes the database. Zero values take the defaults.
type Options struct {
	// CacheSize is the block cache in bytes (default 128 MiB).
	CacheSize int64
	// MemTableSize is the memtable size in bytes (default 8 MiB). Every
	// lookup searches the memtables, which have no filter, so bigger is not
	// better for the read-mostly first-seen workload.
	MemTableSize uint64
	// ReadOnly opens the database without taking part in writes.
	ReadOnly bool
	// Logger receives Pebble's background errors (compactions, disk). Nil
	// discards them.
	Logger *slog.Logger
}

// DB is the state database.
type DB struct {
	db    *pebble.DB
	cache *pebble.Cache
	dir   string
	// removeOnClose is a private read copy (see OpenForReading).
	removeOnClose string
}

// Open opens or creates the state database in dir.
func Open(dir string, o Options) (*DB, error) {
	if o.CacheSize == 0 {
		o.CacheSize = 128 << 20
	}
	if o.MemTableSize == 0 {
		o.MemTableSize = 8 << 20
	}
	if !o.ReadOnly {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("state dir %s: %w", dir, err)
		}
	}
	cache := pebble.NewCache(o.CacheSize)
	opts := &pebble.Options{
		Cache:                 cache,
		MemTableSize:          o.MemTableSize,
		FormatMajorVersion:    formatMajorVersion,
		ReadOnly:              o.ReadOnly,
		L0CompactionThreshold: 2,
		Logger:                pebbleLogger{o.Logger},
		Merger:                minMerger,
	}
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		opts.Levels[i].BlockSize = 32 << 10
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		cache.Unref()
		if errors.Is(err, pebble.ErrDBDoesNotExist) {
			return nil, fmt.Errorf("state dir %s holds no state", dir)
		}
		if isLockError(err) {
			return nil, fmt.Errorf("state dir %s: %w (a running firstseen holds it)", dir, ErrInUse)
		}
		return nil, fmt.Errorf("open state in %s: %w", dir, err)
	}
	return &DB{db: db, cache: cache, dir: dir}, nil
}

// Close closes the database. It is safe to call twice.
func (d *DB) Close() error {
	if d.db == nil {
		return nil
	}
	err := d.db.Close()
	d.db = nil
	d.cache.Unref()
	if d.removeOnClose != "" {
		os.RemoveAll(d.removeOnClose)
	}
	return err
}

// Dir is the database's directory.
func (d *DB) Dir() string { return d.dir }

// DiskBytes is the state's size on disk: its SST files and write-ahead
// logs (recently committed state not yet flushed to an SST). Snapshots,
// being hard links to the SSTs, are not counted.
func (d *DB) DiskBytes() int64 {
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range entries {
		if ext := filepath.Ext(e.Name()); ext != ".sst" && ext != ".log" {
			continue
		}
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}

// isLockError tells Pebble's "directory locked" error, which has no
// sentinel, from other open failures. Another process's lock is refused by
// fcntl (EAGAIN, EWOULDBLOCK or EACCES); a lock file that cannot be created
// at all (a *os.PathError) is a different problem. This process's own lock
// is reported by Pebble in words.
func isLockError(err error) bool {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return false
	}
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EACCES) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "lock held") || strings.Contains(msg, "already locked")
}

// Header is the global part of a checkpoint.
type Header struct {
	Epoch     uint64 // checkpoints taken so far; rows carry the epoch that wrote them
	Topic     string
	TopicID   [16]byte // Kafka's id of the topic: a recreated topic has a new one
	Group     string
	Tolerance time.Duration
	Timezone  string
	Time      time.Time // wall time of the commit
}

// PartitionCheckpoint is one source partition's position.
type PartitionCheckpoint struct {
	NextOffset int64 // the first offset not yet covered
	operators.Progress
}

// Checkpoint is the last committed checkpoint.
type Checkpoint struct {
	Header
	Partitions map[int32]PartitionCheckpoint
}

// LoadCheckpoint reads the last checkpoint. ok is false for a new state.
func (d *DB) LoadCheckpoint() (cp Checkpoint, ok bool, err error) {
	v, closer, err := d.db.Get([]byte{keyHeader})
	if errors.Is(err, pebble.ErrNotFound) {
		return cp, false, nil
	}
	if err != nil {
		return cp, false, err
	}
	err = decodeHeader(v, &cp.Header)
	closer.Close()
	if err != nil {
		return cp, false, err
	}
	cp.Partitions = map[int32]PartitionCheckpoint{}
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixPartition}, UpperBound: []byte{prefixPartition + 1}})
	if err != nil {
		return cp, false, err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != 5 {
			return cp, false, fmt.Errorf("state: bad partition key %x", k)
		}
		var pc PartitionCheckpoint
		if err := decodePartition(it.Value(), &pc); err != nil {
			return cp, false, err
		}
		cp.Partitions[int32(binary.BigEndian.Uint32(k[1:]))] = pc
	}
	return cp, true, it.Error()
}

// LoadHeld returns the held records of a partition in offset order.
func (d *DB) LoadHeld(partition int32) ([]operators.Held, error) {
	lo := heldKey(partition, 0)
	hi := heldKey(partition+1, 0)
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: lo[:], UpperBound: hi[:]})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []operators.Held
	for it.First(); it.Valid(); it.Next() {
		var h operators.Held
		h.Offset = int64(binary.BigEndian.Uint64(it.Key()[5:]))
		if err := decodeHeld(it.Value(), &h); err != nil {
			return nil, fmt.Errorf("state: held record %d/%d: %w", partition, h.Offset, err)
		}
		out = append(out, h)
	}
	return out, it.Error()
}

// Batch collects writes for one checkpoint. A partition's task fills its own
// batch; the checkpoint merges them.
type Batch struct {
	b   *pebble.Batch
	key [userKeyLen]byte
	buf []byte
}

// NewBatch returns an empty batch.
func (d *DB) NewBatch() *Batch { return &Batch{b: d.db.NewBatch()} }

// SetUser records first_seen for u. It is a merge by minimum: a later
// value than the stored one changes nothing.
func (b *Batch) SetUser(u *operators.UUID, firstSeen int64) {
	k := UserKey(&b.key, u)
	b.buf = binary.AppendVarint(b.buf[:0], firstSeen)
	b.b.Merge(k, b.buf, nil)
}

// PutHeld stores a held record of partition.
func (b *Batch) PutHeld(partition int32, h *operators.Held) {
	k := heldKey(partition, h.Offset)
	b.buf = encodeHeld(b.buf[:0], h)
	b.b.Set(k[:], b.buf, nil)
}

// DeleteHeld removes a released held record.
func (b *Batch) DeleteHeld(partition int32, offset int64) {
	k := heldKey(partition, offset)
	b.b.Delete(k[:], nil)
}

// PutPartition stores a partition's checkpoint.
func (b *Batch) PutPartition(partition int32, pc PartitionCheckpoint) {
	var k [5]byte
	k[0] = prefixPartition
	binary.BigEndian.PutUint32(k[1:], uint32(partition))
	b.buf = encodePartition(b.buf[:0], &pc)
	b.b.Set(k[:], b.buf, nil)
}

// Len is the number of bytes in the batch.
func (b *Batch) Len() int { return b.b.Len() }

// Close discards the batch. The batch's creator closes it, committed or
// not.
func (b *Batch) Close() { b.b.Close() }

// Commit applies the batches and the header atomically, removes the
// intent, and syncs them to disk. It does not close the batches.
func (d *DB) Commit(h Header, batches ...*Batch) error {
	out := d.db.NewBatch()
	defer out.Close()
	for _, b := range batches {
		if err := out.Apply(b.b, nil); err != nil {
			return err
		}
	}
	if err := out.Set([]byte{keyHeader}, encodeHeader(nil, &h), nil); err != nil {
		return err
	}
	if err := out.Delete([]byte{keyIntent}, nil); err != nil {
		return err
	}
	return out.Commit(pebble.Sync)
}

// WatermarkAdvance is a watermark move that came from the wall clock (an
// idle partition), not from the records: the partition's watermark became
// Watermark when its next offset was At.
type WatermarkAdvance struct {
	At        int64
	Watermark int64
}

// Intent describes an epoch whose rows are being written to the sink. It is
// synced before the first row is sent and removed by the epoch's Commit, so
// after a crash it says exactly which input the unfinished epoch covered:
// replaying that input from the previous checkpoint, with the same
// wall-clock watermark advances, gives the same rows again.
type Intent struct {
	Epoch      uint64
	Partitions map[int32]IntentPartition
	// DeadLetterEnds are the dead-letter topic's end offsets before the
	// epoch's dead letters were produced: after a crash, the records from
	// there on tell which of them already landed.
	DeadLetterEnds map[int32]int64
}

// IntentPartition is one partition's part of an intent.
type IntentPartition struct {
	Next     int64              // the epoch covers offsets below Next
	Advances []WatermarkAdvance // in order
}

// WriteIntent stores the intent and syncs it.
func (d *DB) WriteIntent(in *Intent) error {
	return d.db.Set([]byte{keyIntent}, encodeIntent(nil, in), pebble.Sync)
}

// LoadIntent reads the intent of an unfinished epoch, if any.
func (d *DB) LoadIntent() (in Intent, ok bool, err error) {
	v, closer, err := d.db.Get([]byte{keyIntent})
	if errors.Is(err, pebble.ErrNotFound) {
		return in, false, nil
	}
	if err != nil {
		return in, false, err
	}
	defer closer.Close()
	if err := decodeIntent(v, &in); err != nil {
		return in, false, err
	}
	return in, true, nil
}

// UserKey writes u's key into buf and returns it.
func UserKey(buf *[userKeyLen]byte, u *operators.UUID) []byte {
	buf[0] = prefixUser
	binary.BigEndian.PutUint16(buf[1:3], u.KeyGroup())
	copy(buf[3:], u[:])
	return buf[:]
}

func heldKey(partition int32, offset int64) [13]byte {
	var k [13]byte
	k[0] = prefixHeld
	binary.BigEndian.PutUint32(k[1:5], uint32(partition))
	binary.BigEndian.PutUint64(k[5:], uint64(offset))
	return k
}

// Reader looks up first_seen values as of the last commit it has seen. It
// belongs to one goroutine.
type Reader struct {
	db   *DB
	it   *pebble.Iterator
	key  [userKeyLen]byte
	opts pebble.IterOptions
}

// NewReader returns a reader over the latest committed state.
func (d *DB) NewReader() (*Reader, error) {
	r := &Reader{db: d, opts: pebble.IterOptions{UseL6Filters: true}}
	return r, r.Refresh()
}

// Refresh makes the reader see everything committed so far.
func (r *Reader) Refresh() error {
	if r.it != nil {
		if err := r.it.Close(); err != nil {
			return err
		}
	}
	it, err := r.db.db.NewIter(&r.opts)
	r.it = it
	return err
}

// Get returns u's first_seen.
func (r *Reader) Get(u *operators.UUID) (int64, bool) {
	k := UserKey(&r.key, u)
	if !r.it.SeekPrefixGE(k) {
		return 0, false
	}
	v, n := binary.Varint(r.it.Value())
	return v, n > 0
}

// Close releases the reader.
func (r *Reader) Close() error {
	if r.it == nil {
		return nil
	}
	err := r.it.Close()
	r.it = nil
	return err
}

// formatMajorVersion is pinned, not FormatNewest, so that upgrading Pebble
// never rewrites a state directory's format by surprise.
const formatMajorVersion = pebble.FormatValueSeparation

// pebbleLogger sends Pebble's errors to slog at error level and its
// informational chatter at debug level.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	if p.l != nil {
		p.l.Debug("pebble: " + fmt.Sprintf(format, args...))
	}
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	if p.l != nil {
		p.l.Error("pebble: " + fmt.Sprintf(format, args...))
	}
}

func (p pebbleLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("pebble: "+format, args...))
}
