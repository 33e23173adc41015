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
// A processor puts an in-memory filter of all users in front of that
// (DB.EnableUserFilter, userfilter.go), so that a new user costs one cache
// line, not a Pebble seek.
package state

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/sstable"

	"github.com/firstseen/firstseen/operators"
)

// FormatVersion is written in every checkpoint header. A state directory
// written by a newer format is refused.
const FormatVersion = 2

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
	// CacheSize is the block cache in bytes (default 64 MiB). It is
	// outside the Go heap (cgo) but in the process's RSS. Few lookups reach
	// Pebble in a processor (its tasks' caches and the user filter answer
	// most), and the blocks of a 1M-user state (28 MB) fit whole; with 10M
	// users (280 MB) it holds the index and filter blocks and a quarter of
	// the data blocks, and a lookup that misses it reads one 4 KiB block
	// from the OS page cache.
	CacheSize int64
	// MemTableSize is the memtable size in bytes (default 8 MiB). Lookups
	// that reach Pebble search the memtables, which have no filter, and a
	// catching-up processor's checkpoints are larger than MemTableSize/2
	// anyway (they bypass the memtable as flushable batches), so bigger
	// is not better.
	MemTableSize uint64
	// Cache, when set, is a block cache shared with other databases (a
	// processor's partitions share one); CacheSize is then ignored.
	Cache *Cache
	// ReadOnly opens the database without taking part in writes.
	ReadOnly bool
	// Logger receives Pebble's background errors (compactions, disk). Nil
	// discards them.
	Logger *slog.Logger
}

// Cache is a block cache that several databases share.
type Cache struct{ c *pebble.Cache }

// NewCache returns a block cache of size bytes. Release it with Unref; the
// databases opened with it hold their own references.
func NewCache(size int64) *Cache { return &Cache{pebble.NewCache(size)} }

// Unref releases the caller's reference.
func (c *Cache) Unref() { c.c.Unref() }

// DB is the state database.
type DB struct {
	db    *pebble.DB
	cache *pebble.Cache
	dir   string
	// removeOnClose is a private read copy (see OpenForReading).
	removeOnClose string
	// flushAfter: a commit of at least this many bytes is flushed at once.
	flushAfter uint64
	log        *slog.Logger

	// filter is the user filter readers consult (nil: none, or not built
	// yet; see EnableUserFilter); filterW is the one commits add to, set
	// when the build's scan starts, so that no commit is missed.
	filter, filterW atomic.Pointer[userFilter]
	filterMu        sync.Mutex // guards the fields below and filter changes
	filterStop      func()     // stops the build and waits for it
	filterDone      chan struct{}
	filterErr       error
	// commitMu orders commits and the start of a filter build.
	commitMu sync.Mutex
}

// Open opens or creates the state database in dir.
func Open(dir string, o Options) (*DB, error) {
	if o.CacheSize == 0 {
		o.CacheSize = 64 << 20
	}
	if o.MemTableSize == 0 {
		o.MemTableSize = 8 << 20
	}
	if !o.ReadOnly {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("state dir %s: %w", dir, err)
		}
	}
	var cache *pebble.Cache
	if o.Cache != nil {
		cache = o.Cache.c
		cache.Ref()
	} else {
		cache = pebble.NewCache(o.CacheSize)
	}
	opts := &pebble.Options{
		Cache:              cache,
		MemTableSize:       o.MemTableSize,
		FormatMajorVersion: formatMajorVersion,
		ReadOnly:           o.ReadOnly,
		// Each checkpoint of a catching-up processor commits 100k-400k new
		// users, one L0 file each, and every L0 file overlaps all of the
		// level below (uuids are random), so each L0 compaction rewrites
		// that whole level. Compacting when 8 files are in L0 instead of 2:
		// 1M new users cost 2.7 µs of CPU a user instead of 3.2-4.0 with
		// their flushes and compactions (BenchmarkCommitEpochs/base=0M,
		// FIRSTSEEN_BENCH_OPTIONS=l0=2 for the other), and flushes and
		// compactions wrote 113 MB instead of 389 MB for 1.5M users in 15
		// commits; with 10M users in the state, 5M more cost 6.7 µs a user
		// instead of 7.1. Lookups that reach Pebble cost the same either way
		// (BenchmarkReaderGetEpochs, filter=false: 2.6-2.9 µs, half of them
		// new users), and few do (the processor's cache and user filter
		// answer most).
		// 16 wrote less still, but made lookups that reach Pebble slower.
		// The stop threshold keeps a catch-up from stalling on L0.
		L0CompactionThreshold: 8,
		L0StopWritesThreshold: 32,
		Logger:                pebbleLogger{o.Logger},
		Merger:                minMerger,
	}
	setTableOptions(opts)
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
	return &DB{db: db, cache: cache, dir: dir, flushAfter: o.MemTableSize / 4, log: o.Logger}, nil
}

// testOptions, when set by a test or benchmark, adjusts the Pebble options
// of Open and of the bulk loader (see FIRSTSEEN_BENCH_OPTIONS in
// bench_test.go).
var testOptions func(*pebble.Options)

// setTableOptions sets how SST files are written, for Pebble's flushes and
// compactions and for the bulk loader alike. They can change without a new
// state format: Pebble reads tables written with any of them.
//
//   - 4 KiB blocks, not compressed. A point lookup reads and checks a whole
//     block when it is not in the block cache, and decompresses it. With 10M
//     users bulk-loaded, a lookup of a known user in a just-opened state
//     costs 9-10 µs of CPU with a 128 MiB cache (14-16 µs with the former
//     32 KiB Snappy blocks) and 13-15 µs with the 64 MiB default
//     (BenchmarkReaderGetBulk; FIRSTSEEN_BENCH_OPTIONS=bs=32768,comp=snappy
//     for the former); with every block cached, the binary search within a
//     32 KiB block was 40% of a lookup (BenchmarkReaderGet profile). Random
//     uuids and first_seen times do not compress: without compression the
//     state takes 28.2 bytes a user after a bulk load of 10M users (27.6
//     with Snappy), the 1M users of the end-to-end benchmark 27.7.
//   - Bloom filters of 10 bits a key on every level: Pebble's filters skip
//     the tables that lack a known user, and answer for new users while the
//     processor's user filter is being built (EnableUserFilter), or in the
//     data tools, which do not build one.
func setTableOptions(opts *pebble.Options) {
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		opts.Levels[i].BlockSize = 4 << 10
		opts.Levels[i].Compression = func() *sstable.CompressionProfile { return sstable.NoCompression }
	}
	if testOptions != nil {
		testOptions(opts)
	}
}

// Close closes the database. It is safe to call twice.
func (d *DB) Close() error {
	if d.db == nil {
		return nil
	}
	if d.log != nil {
		m := d.db.Metrics()
		var files int64
		for _, l := range m.Levels {
			files += l.TablesCount
		}
		d.log.Debug("state memory at close", "block_cache_bytes", m.BlockCache.Size,
			"block_cache_hit_rate", float64(m.BlockCache.Hits)/float64(max(1, m.BlockCache.Hits+m.BlockCache.Misses)),
			"memtable_bytes", m.MemTable.Size, "zombie_memtable_bytes", m.MemTable.ZombieSize,
			"user_filter_bytes", d.UserFilterBytes(), "sst_files", files, "l0_files", m.Levels[0].TablesCount)
	}
	d.dropUserFilter() // stops a build, which reads the database
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
	// ChangelogNext is the first offset of the partition's changelog that
	// this database does not reflect: a restore reads from there.
	ChangelogNext int64
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
//
// User updates are kept aside rather than written to the Pebble batch
// one by one: Commit sorts the users of all batches together and writes
// them in key order (see Commit).
type Batch struct {
	b     *pebble.Batch
	users []userEntry
	buf   []byte
	clog  []byte               // held records' changes for the changelog (see logHeld)
	cp    *PartitionCheckpoint // set by PutPartition
}

// userEntry is a user update, with the user key's sort order in its
// fields: key group, then the uuid as two big-endian halves.
type userEntry struct {
	hi, lo uint64
	t      int64
	kg     uint16
}

func (e *userEntry) uuid() (u operators.UUID) {
	binary.BigEndian.PutUint64(u[:8], e.hi)
	binary.BigEndian.PutUint64(u[8:], e.lo)
	return u
}

// NewBatch returns an empty batch.
func (d *DB) NewBatch() *Batch { return &Batch{b: d.db.NewBatch()} }

// ReserveUsers makes room for n more SetUser calls.
func (b *Batch) ReserveUsers(n int) { b.users = slices.Grow(b.users, n) }

// SetUser records first_seen for u. It is a merge by minimum: a later
// value than the stored one changes nothing.
func (b *Batch) SetUser(u *operators.UUID, firstSeen int64) {
	b.users = append(b.users, userEntry{
		hi: binary.BigEndian.Uint64(u[:8]), lo: binary.BigEndian.Uint64(u[8:]), t: firstSeen, kg: u.KeyGroup(),
	})
}

// PutHeld stores a held record of partition.
func (b *Batch) PutHeld(partition int32, h *operators.Held) {
	k := heldKey(partition, h.Offset)
	b.buf = encodeHeld(b.buf[:0], h)
	b.b.Set(k[:], b.buf, nil)
	b.logHeld(h.Offset, b.buf, false)
}

// DeleteHeld removes a released held record.
func (b *Batch) DeleteHeld(partition int32, offset int64) {
	k := heldKey(partition, offset)
	b.b.Delete(k[:], nil)
	b.logHeld(offset, nil, true)
}

// PutPartition stores a partition's checkpoint.
func (b *Batch) PutPartition(partition int32, pc PartitionCheckpoint) {
	var k [5]byte
	k[0] = prefixPartition
	binary.BigEndian.PutUint32(k[1:], uint32(partition))
	b.buf = encodePartition(b.buf[:0], &pc)
	b.b.Set(k[:], b.buf, nil)
	b.cp = &pc
}

// SetChangelogNext sets the changelog position in the partition checkpoint
// put by PutPartition (after the changelog records were produced).
func (b *Batch) SetChangelogNext(partition int32, next int64) {
	if b.cp == nil {
		return
	}
	pc := *b.cp
	pc.ChangelogNext = next
	b.buf = encodePartition(b.buf[:0], &pc)
	b.b.Set(partitionKey(partition), b.buf, nil)
}

// Len is about the number of bytes in the batch.
func (b *Batch) Len() int { return b.b.Len() + len(b.users)*(userKeyLen+8) + len(b.clog) }

// Changed says whether the batch changes users or held records.
func (b *Batch) Changed() bool { return len(b.users) > 0 || len(b.clog) > 0 }

// Users is the number of user updates in the batch.
func (b *Batch) Users() int { return len(b.users) }

// Close discards the batch. The batch's creator closes it, committed or
// not.
func (b *Batch) Close() {
	b.b.Close()
	b.users, b.clog, b.cp = nil, nil, nil
}

// Commit applies the batches and the header atomically, removes the
// intent, and syncs them to disk. It does not close the batches.
//
// The users of all batches are sorted by key and written after the other
// keys (all of which sort before 'u'), so the one Pebble batch is in key
// order: a checkpoint of more than MemTableSize/2 becomes a flushable
// batch, which Pebble sorts, and sorting a sorted batch is linear. Unsorted
// (map order), that sort cost 0.8 µs per user (3M users in 11 commits:
// 11.9 s of CPU unsorted, 5.7 s sorted, with flushes and compactions; the
// setup of BenchmarkCommitEpochs), and a smaller batch inserted into the
// memtable in key order is cheaper too.
//
// A commit large enough to bypass the memtable (Pebble makes a flushable
// batch of one that needs more than MemTableSize/2 of memtable, about 20k
// users at 8 MiB, and flushes it at once in the background) is flushed
// before Commit returns (flushAfter: a quarter of MemTableSize in batch
// bytes), so that readers refreshed after it search an SST with bloom
// filters, rather than keep the batch in memory for an epoch and
// binary-search it on every lookup that reaches Pebble (4.4 s of the
// 27.6 s end-to-end benchmark before).
func (d *DB) Commit(h Header, batches ...*Batch) error {
	d.commitMu.Lock()
	defer d.commitMu.Unlock()
	out := d.db.NewBatch()
	defer out.Close()
	n := 0
	for _, b := range batches {
		if err := out.Apply(b.b, nil); err != nil {
			return err
		}
		n += len(b.users)
	}
	if err := out.Set([]byte{keyHeader}, encodeHeader(nil, &h), nil); err != nil {
		return err
	}
	if err := out.Delete([]byte{keyIntent}, nil); err != nil {
		return err
	}
	users := make([]userEntry, 0, n)
	for _, b := range batches {
		users = append(users, b.users...)
	}
	sortUsers(users)
	var key [userKeyLen]byte
	var val []byte
	f := d.filterW.Load()
	var fkeys []filterKey
	if f != nil {
		fkeys = make([]filterKey, 0, len(users))
	}
	for i := 0; i < len(users); i++ {
		e := users[i]
		for i+1 < len(users) && users[i+1].kg == e.kg && users[i+1].hi == e.hi && users[i+1].lo == e.lo {
			i++ // one user from two partitions: the minimum
			e.t = min(e.t, users[i].t)
		}
		u := e.uuid()
		key[0] = prefixUser
		binary.BigEndian.PutUint16(key[1:3], e.kg)
		copy(key[3:], u[:])
		val = binary.AppendVarint(val[:0], e.t)
		if err := out.Merge(key[:], val, nil); err != nil {
			return err
		}
		if f != nil {
			fkeys = append(fkeys, filterKey{h: userHash(&u), kg: e.kg})
		}
	}
	// Into the filter before the commit: a reader must never see a user in
	// Pebble that the filter calls absent. If the commit fails, the users
	// are false positives.
	if f != nil {
		f.add(fkeys)
	}
	large := uint64(out.Len()) >= d.flushAfter
	if err := out.Commit(pebble.Sync); err != nil {
		return err
	}
	if large {
		// The commit is durable: a failed flush only leaves lookups slower
		// until Pebble flushes by itself, so it is no checkpoint failure.
		if err := d.db.Flush(); err != nil && d.log != nil {
			d.log.Warn("flushing the state after a checkpoint failed", "err", err)
		}
	}
	return nil
}

// sortUsers sorts users in key order: key group, then uuid. A counting
// sort by key group, then each group by uuid: at 110k users per commit
// that is about 40 ns per user, where one slices.SortFunc over all of them
// took 260 ns (BenchmarkCommitEpochs profile).
func sortUsers(users []userEntry) {
	byUUID := func(a, b userEntry) int {
		if c := cmp.Compare(a.hi, b.hi); c != 0 {
			return c
		}
		return cmp.Compare(a.lo, b.lo)
	}
	if len(users) < 4*operators.MaxKeyGroups {
		slices.SortFunc(users, func(a, b userEntry) int {
			if c := cmp.Compare(a.kg, b.kg); c != 0 {
				return c
			}
			return byUUID(a, b)
		})
		return
	}
	var ends [operators.MaxKeyGroups + 1]int
	for i := range users {
		ends[users[i].kg+1]++
	}
	for g := 1; g <= operators.MaxKeyGroups; g++ {
		ends[g] += ends[g-1]
	}
	starts := ends // ends[g] is where group g starts
	sorted := make([]userEntry, len(users))
	for i := range users {
		g := users[i].kg
		sorted[starts[g]] = users[i]
		starts[g]++
	}
	for g := 0; g < operators.MaxKeyGroups; g++ {
		slices.SortFunc(sorted[ends[g]:ends[g+1]], byUUID)
	}
	copy(users, sorted)
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
	Epoch uint64
	// Writer names the process that wrote the epoch (its instance id): the
	// sink tells its requests by writer and epoch.
	Writer     string
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
//
// Once the user filter is ready, lookups skip the bloom filters of the
// bottom level: the user filter has answered for new users, so a lookup
// that reaches Pebble is nearly always of a known user, which the bottom
// level's filter would only confirm (4% of a lookup's CPU in
// BenchmarkReaderGetEpochs).
func (r *Reader) Refresh() error {
	if r.it != nil {
		if err := r.it.Close(); err != nil {
			return err
		}
	}
	r.opts.UseL6Filters = r.db.filter.Load() == nil
	it, err := r.db.db.NewIter(&r.opts)
	r.it = it
	return err
}

// Get returns u's first_seen.
func (r *Reader) Get(u *operators.UUID) (int64, bool) {
	kg := u.KeyGroup()
	if f := r.db.filter.Load(); f != nil && !f.mayContain(filterKey{h: userHash(u), kg: kg}) {
		return 0, false
	}
	r.key[0] = prefixUser
	binary.BigEndian.PutUint16(r.key[1:3], kg)
	copy(r.key[3:], u[:])
	k := r.key[:]
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
