package state

// Bulk loading of first_seen values (firstseen bootstrap).
//
// A Loader never writes one user at a time. It buckets the added values by
// key-group range (64 buckets of 64 key groups, so a bucket is a contiguous
// range of user keys), spilling them to files of 24-byte records when they
// no longer fit in memory. Finish then takes the buckets in key order, one at
// a time per worker: it sorts a bucket, keeps each user's minimum, walks the
// existing state of the bucket's key range beside it (a merge-join) to sort
// users into new, lowered and unchanged, and writes only the new and lowered
// ones, as min-merge operands, to SST files. The SSTs of different buckets
// never overlap, and one db.Ingest applies all of them atomically: a load is
// either entirely in the state or not at all.
//
// Because the values are merge operands combined by the minimum, a load can
// never move a user's first_seen later, even if a writer committed an
// earlier value after the merge-join read the state.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/firstseen/firstseen/operators"
)

const (
	loadBuckets     = 64
	groupsPerBucket = operators.MaxKeyGroups / loadBuckets
	// loadRecordSize is a spilled record: uuid (16 bytes), first_seen
	// (8 bytes, little endian).
	loadRecordSize = 16 + 8
	// loadDirPrefix names a Loader's temporary directory.
	loadDirPrefix = "load-tmp-"

	defaultMemRecords  = 2 << 20   // 48 MiB of records before spilling
	defaultUnitRecords = 2 << 20   // about 100 MiB of sort buffers per worker
	defaultSSTSize     = 128 << 20 // as Pebble's default target for L6 files
	smallLoad          = 256 << 10 // loads below this many values use one worker
)

// LoadStats describes a finished load.
type LoadStats struct {
	Read      int64 // values added
	Distinct  int64 // distinct users among them
	New       int64 // users the state did not have
	Lowered   int64 // users whose first_seen moved earlier
	Unchanged int64 // users whose stored first_seen was already at or before the loaded one
	Before    int64 // users in the state before the load
	SSTFiles  int   // SST files ingested
	SSTBytes  int64 // their size
}

// Duplicates is the number of added values that repeated a user.
func (s LoadStats) Duplicates() int64 { return s.Read - s.Distinct }

// After is the number of users in the state after the load.
func (s LoadStats) After() int64 { return s.Before + s.New }

func (s *LoadStats) add(o *LoadStats) {
	s.Distinct += o.Distinct
	s.New += o.New
	s.Lowered += o.Lowered
	s.Unchanged += o.Unchanged
	s.Before += o.Before
	s.SSTFiles += o.SSTFiles
	s.SSTBytes += o.SSTBytes
}

// ErrLoaderDone is returned by a Loader used after Finish or Abort.
var ErrLoaderDone = errors.New("state: loader already finished or aborted")

// Loader loads first_seen values in bulk; see the top of this file. It
// belongs to one goroutine. Create it with DB.NewLoader, then Add values,
// then Finish (or Abort). A deferred Abort after Finish does nothing.
type Loader struct {
	// Tuning, to set before the first Add; zero values take the defaults.

	// MemRecords is how many values are held in memory before all of them
	// are spilled to the temporary directory (default 2Mi, 48 MiB).
	MemRecords int
	// UnitRecords is the most values one worker sorts in memory at once
	// (default 2Mi: about 100 MiB of buffers). A bigger bucket is split
	// into one file per key group first.
	UnitRecords int
	// Workers is how many buckets are processed at the same time (default
	// min(2, GOMAXPROCS), and 1 for loads of less than 256Ki values).
	Workers int
	// SSTSize is the size at which an SST file is closed and the next one
	// started (default 128 MiB).
	SSTSize int64
	// OnWrite, when set, is called with every user the load writes (new,
	// or lowered): what a changelog must receive for the load to reach
	// other replicas. It is called from the load's workers, concurrently.
	OnWrite func(u *operators.UUID, firstSeen int64) error

	db      *DB
	dir     string
	buckets [loadBuckets]loadBucket
	inMem   int
	spilled bool
	read    int64
	done    bool
	enc     []byte
}

type loadRec struct {
	u operators.UUID
	t int64
}

type loadBucket struct {
	recs []loadRec
	f    *os.File // spill file; nil until the first spill
	n    int64    // records in f
}

// NewLoader starts a bulk load. Its temporary files go to a new directory
// inside tmpDir ("" means the state directory), removed by Finish and
// Abort. tmpDir should be on the state's file system, so that the SSTs are
// linked into the state rather than copied.
func (d *DB) NewLoader(tmpDir string) (*Loader, error) {
	if tmpDir == "" {
		tmpDir = d.dir
	}
	dir, err := os.MkdirTemp(tmpDir, loadDirPrefix)
	if err != nil {
		return nil, fmt.Errorf("state: loader: %w", err)
	}
	return &Loader{db: d, dir: dir}, nil
}

// RemoveLoadLeftovers deletes the temporary directories that loads of a
// killed process left in the state directory. Call it before starting a
// Loader of your own: it removes every loader directory there.
func (d *DB) RemoveLoadLeftovers() error {
	dirs, err := filepath.Glob(filepath.Join(d.dir, loadDirPrefix+"*"))
	if err != nil {
		return err
	}
	for _, dir := range dirs {
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	return nil
}

var errLoadTime = errors.New("state: first_seen outside the accepted event-time range")

// Add adds a first_seen value of u. Values of the same user are combined by
// their minimum. firstSeen must be within operators.MinEventTime and
// operators.MaxEventTime. Add does not allocate once the buffers have grown.
func (l *Loader) Add(u *operators.UUID, firstSeen int64) error {
	if l.done {
		return ErrLoaderDone
	}
	if firstSeen < operators.MinEventTime || firstSeen > operators.MaxEventTime {
		return errLoadTime
	}
	b := &l.buckets[u.KeyGroup()/groupsPerBucket]
	b.recs = append(b.recs, loadRec{u: *u, t: firstSeen})
	l.read++
	l.inMem++
	if l.inMem >= orDefault(l.MemRecords, defaultMemRecords) {
		return l.spill()
	}
	return nil
}

// Read is the number of values added so far.
func (l *Loader) Read() int64 { return l.read }

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// spill appends every bucket's in-memory records to its file.
func (l *Loader) spill() error {
	l.spilled = true
	for i := range l.buckets {
		b := &l.buckets[i]
		if len(b.recs) == 0 {
			continue
		}
		if b.f == nil {
			f, err := os.Create(filepath.Join(l.dir, fmt.Sprintf("bucket-%02d", i)))
			if err != nil {
				return fmt.Errorf("state: loader spill: %w", err)
			}
			b.f = f
		}
		if err := writeRecords(b.f, b.recs, &l.enc); err != nil {
			return fmt.Errorf("state: loader spill: %w", err)
		}
		b.n += int64(len(b.recs))
		b.recs = b.recs[:0]
	}
	l.inMem = 0
	return nil
}

func writeRecords(w io.Writer, recs []loadRec, buf *[]byte) error {
	const chunk = 1 << 20 / loadRecordSize
	for len(recs) > 0 {
		n := min(len(recs), chunk)
		b := (*buf)[:0]
		for i := range recs[:n] {
			b = append(b, recs[i].u[:]...)
			b = binary.LittleEndian.AppendUint64(b, uint64(recs[i].t))
		}
		*buf = b
		if _, err := w.Write(b); err != nil {
			return err
		}
		recs = recs[n:]
	}
	return nil
}

// Abort discards everything added. Nothing reaches the state.
func (l *Loader) Abort() {
	if l.done {
		return
	}
	l.done = true
	l.cleanup()
}

func (l *Loader) cleanup() {
	for i := range l.buckets {
		b := &l.buckets[i]
		if b.f != nil {
			b.f.Close()
			b.f = nil
		}
		b.recs = nil
	}
	os.RemoveAll(l.dir)
}

// loadUnit is a key-group range [lo, hi) to process, with its records in
// memory, in a file, or both.
type loadUnit struct {
	lo, hi uint16
	mem    []loadRec
	path   string
	n      int64 // records in the file
}

// Finish sorts what was added, writes the new and lowered users to SSTs and
// ingests them in one atomic step. On error nothing is applied. The
// temporary directory is removed either way.
func (l *Loader) Finish(ctx context.Context) (LoadStats, error) {
	if l.done {
		return LoadStats{}, ErrLoaderDone
	}
	l.done = true
	defer l.cleanup()
	stats := LoadStats{Read: l.read}

	var units [loadBuckets]loadUnit
	if l.spilled {
		if err := l.spill(); err != nil {
			return stats, err
		}
	}
	for i := range l.buckets {
		b := &l.buckets[i]
		units[i] = loadUnit{lo: uint16(i * groupsPerBucket), hi: uint16((i + 1) * groupsPerBucket), n: b.n}
		if !l.spilled {
			units[i].mem = b.recs // else all of it is in the files, and the buffers can go
		}
		if b.f != nil {
			units[i].path = b.f.Name()
			if err := b.f.Close(); err != nil {
				return stats, fmt.Errorf("state: loader spill: %w", err)
			}
			b.f = nil
		}
		b.recs = nil // the units own them now
	}

	wopts := l.db.sstWriterOptions()
	// Each worker takes a contiguous range of buckets, so that its SSTs
	// cover a contiguous key range and never overlap another worker's.
	nw := min(orDefault(l.Workers, min(2, runtime.GOMAXPROCS(0))), loadBuckets)
	if l.Workers <= 0 && l.read < smallLoad {
		nw = 1 // one SST file rather than one per worker
	}
	workers := make([]*loadWorker, nw)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, nw)
	for w := range workers {
		lw := &loadWorker{l: l, id: w, wopts: wopts, ctx: ctx}
		workers[w] = lw
		first, last := w*loadBuckets/nw, (w+1)*loadBuckets/nw
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = lw.run(units[first:last])
			if errs[w] != nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	var paths []string
	for w, lw := range workers {
		if errs[w] != nil && !errors.Is(errs[w], context.Canceled) {
			return stats, errs[w]
		}
		stats.add(&lw.stats)
		paths = append(paths, lw.paths...)
	}
	if err := errors.Join(errs...); err != nil {
		return stats, err
	}
	if len(paths) == 0 {
		return stats, nil
	}
	// Readers of this DB must not trust a filter that lacks the loaded
	// users.
	l.db.dropUserFilter()
	// The ingest is one atomic step; it is not interrupted half-way.
	if err := l.db.db.Ingest(context.WithoutCancel(ctx), paths); err != nil {
		return stats, fmt.Errorf("state: ingest %d SSTs: %w", len(paths), err)
	}
	return stats, nil
}

// sstWriterOptions are those with which Pebble itself writes the bottom
// level of this state (Open's options): same comparer, merger, bloom
// filters, block size and compression, and the newest table format the
// state's format major version accepts.
func (d *DB) sstWriterOptions() sstable.WriterOptions {
	opts := &pebble.Options{Merger: minMerger, FormatMajorVersion: formatMajorVersion}
	setTableOptions(opts)
	opts.EnsureDefaults()
	last := len(opts.Levels) - 1
	return opts.MakeWriterOptions(last, d.db.FormatMajorVersion().MaxTableFormat())
}

// loadWorker processes a contiguous range of units in key order.
type loadWorker struct {
	l     *Loader
	id    int
	ctx   context.Context
	wopts sstable.WriterOptions

	buf, sorted []loadRec
	groups      []uint16
	counts      []int
	raw         []byte
	chunk       []loadRec

	sst     *sstable.Writer
	sstPath string
	sstKeys int
	paths   []string
	stats   LoadStats
	key     [userKeyLen]byte
	val     [binary.MaxVarintLen64]byte
}

func (w *loadWorker) run(units []loadUnit) error {
	for i := range units {
		if err := w.unit(&units[i]); err != nil {
			w.abortSST()
			return err
		}
	}
	return w.closeSST()
}

func (w *loadWorker) unit(u *loadUnit) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	total := int64(len(u.mem)) + u.n
	if total > int64(orDefault(w.l.UnitRecords, defaultUnitRecords)) && u.hi-u.lo > 1 {
		return w.split(u)
	}
	src := u.mem
	if u.path != "" {
		w.buf = append(w.buf[:0], u.mem...)
		if err := w.readFile(u.path); err != nil {
			return err
		}
		src = w.buf
		u.mem = nil
		os.Remove(u.path) // free the disk early; the directory goes at the end anyway
	}
	if len(src) == 0 {
		return w.join(u.lo, u.hi, nil, nil)
	}
	sorted, ends := w.sort(src, u.lo, u.hi)
	u.mem = nil
	return w.join(u.lo, u.hi, sorted, ends)
}

// readFile appends the records of a spill file to w.buf.
func (w *loadWorker) readFile(path string) error {
	return w.eachChunk(path, func(recs []loadRec) error {
		w.buf = append(w.buf, recs...)
		return nil
	})
}

// eachChunk decodes a spill file in chunks of about 1 MiB and calls fn
// with each; the slice is reused.
func (w *loadWorker) eachChunk(path string, fn func([]loadRec) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("state: loader: %w", err)
	}
	defer f.Close()
	const chunk = (1 << 20) / loadRecordSize
	if cap(w.raw) < chunk*loadRecordSize {
		w.raw = make([]byte, chunk*loadRecordSize)
		w.chunk = make([]loadRec, 0, chunk)
	}
	for {
		n, err := io.ReadFull(f, w.raw)
		if n%loadRecordSize != 0 {
			return fmt.Errorf("state: loader: %s: truncated record", path)
		}
		recs := w.chunk[:0]
		for b := w.raw[:n]; len(b) > 0; b = b[loadRecordSize:] {
			var r loadRec
			copy(r.u[:], b[:16])
			r.t = int64(binary.LittleEndian.Uint64(b[16:24]))
			recs = append(recs, r)
		}
		if len(recs) > 0 {
			if err := fn(recs); err != nil {
				return err
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("state: loader: %w", err)
		}
	}
}

// split distributes a unit that is too big for memory into smaller
// key-group ranges (64 of them, or one per key group), each in its own
// file, and processes them in order.
func (w *loadWorker) split(u *loadUnit) error {
	width := int(u.hi - u.lo)
	parts := min(width, 64)
	step := (width + parts - 1) / parts
	parts = (width + step - 1) / step
	files := make([]*os.File, parts)
	subs := make([]loadUnit, parts)
	outs := make([][]loadRec, parts)
	defer func() {
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
	}()
	const flushAt = 4096
	var enc []byte
	flush := func(p int) error {
		if files[p] == nil {
			f, err := os.Create(filepath.Join(w.l.dir, fmt.Sprintf("split-%04d-%04d", u.lo, int(u.lo)+p*step)))
			if err != nil {
				return fmt.Errorf("state: loader split: %w", err)
			}
			files[p] = f
		}
		if err := writeRecords(files[p], outs[p], &enc); err != nil {
			return fmt.Errorf("state: loader split: %w", err)
		}
		subs[p].n += int64(len(outs[p]))
		outs[p] = outs[p][:0]
		return nil
	}
	route := func(recs []loadRec) error {
		for i := range recs {
			p := int(recs[i].u.KeyGroup()-u.lo) / step
			outs[p] = append(outs[p], recs[i])
			if len(outs[p]) == flushAt {
				if err := flush(p); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := route(u.mem); err != nil {
		return err
	}
	u.mem = nil
	if u.path != "" {
		if err := w.eachChunk(u.path, route); err != nil {
			return err
		}
		os.Remove(u.path)
	}
	for p := range parts {
		if len(outs[p]) > 0 {
			if err := flush(p); err != nil {
				return err
			}
		}
		lo := int(u.lo) + p*step
		subs[p].lo, subs[p].hi = uint16(lo), uint16(min(lo+step, int(u.hi)))
		if files[p] != nil {
			subs[p].path = files[p].Name()
			if err := files[p].Close(); err != nil {
				return fmt.Errorf("state: loader split: %w", err)
			}
			files[p] = nil
		}
	}
	for p := range subs {
		if err := w.unit(&subs[p]); err != nil {
			return err
		}
	}
	return nil
}

// sort orders src by user key: a counting sort on (key group, first uuid
// byte), then each (usually tiny) group by uuid. It returns the sorted
// records and, per group, the end of the group in them. A unit spans at
// most 64 key groups, so there are at most 16384 groups.
func (w *loadWorker) sort(src []loadRec, lo, hi uint16) ([]loadRec, []int) {
	ngroups := int(hi-lo) << 8
	w.counts = slices.Grow(w.counts[:0], ngroups+1)[:ngroups+1]
	clear(w.counts)
	counts := w.counts
	w.groups = slices.Grow(w.groups[:0], len(src))[:len(src)]
	groups := w.groups
	for i := range src {
		g := uint16(src[i].u.KeyGroup()-lo)<<8 | uint16(src[i].u[0])
		groups[i] = g
		counts[g+1]++
	}
	for g := 1; g <= ngroups; g++ {
		counts[g] += counts[g-1]
	}
	w.sorted = slices.Grow(w.sorted[:0], len(src))[:len(src)]
	out := w.sorted
	for i := range src {
		g := groups[i]
		out[counts[g]] = src[i]
		counts[g]++
	}
	// counts[g] is now the end of group g.
	start := 0
	for g := 0; g < ngroups; g++ {
		end := counts[g]
		if end-start > 1 {
			sortByUUID(out[start:end])
		}
		start = end
	}
	return out, counts[:ngroups]
}

func sortByUUID(r []loadRec) {
	if len(r) <= 12 {
		for i := 1; i < len(r); i++ {
			for j := i; j > 0 && cmpUUID(&r[j].u, &r[j-1].u) < 0; j-- {
				r[j], r[j-1] = r[j-1], r[j]
			}
		}
		return
	}
	slices.SortFunc(r, func(a, b loadRec) int { return cmpUUID(&a.u, &b.u) })
}

func cmpUUID(a, b *operators.UUID) int {
	if x, y := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(b[:8]); x != y {
		if x < y {
			return -1
		}
		return 1
	}
	x, y := binary.BigEndian.Uint64(a[8:]), binary.BigEndian.Uint64(b[8:])
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

func userBound(kg uint16) []byte {
	b := make([]byte, 3)
	b[0] = prefixUser
	binary.BigEndian.PutUint16(b[1:], kg)
	return b
}

// join walks the sorted records beside the state's users of key groups
// [lo, hi), counts every existing user, and writes the new and lowered
// users. ends[g] is the end of group g of 256 per key group.
func (w *loadWorker) join(lo, hi uint16, sorted []loadRec, ends []int) error {
	it, err := w.l.db.db.NewIter(&pebble.IterOptions{LowerBound: userBound(lo), UpperBound: userBound(hi)})
	if err != nil {
		return err
	}
	st := &w.stats
	valid := it.First()
	key := w.key[:]
	key[0] = prefixUser
	start := 0
	for g, end := range ends {
		if end == start {
			continue
		}
		binary.BigEndian.PutUint16(key[1:3], lo+uint16(g>>8))
		recs := sorted[start:end]
		start = end
		for i := 0; i < len(recs); {
			u, t := &recs[i].u, recs[i].t
			j := i + 1
			for ; j < len(recs) && recs[j].u == *u; j++ {
				t = min(t, recs[j].t)
			}
			i = j
			st.Distinct++
			copy(key[3:], u[:])
			for valid && bytes.Compare(it.Key(), key) < 0 {
				st.Before++
				valid = it.Next()
			}
			if valid && bytes.Equal(it.Key(), key) {
				st.Before++
				v, err := it.ValueAndErr()
				if err != nil {
					it.Close()
					return err
				}
				old, n := binary.Varint(v)
				if n <= 0 {
					it.Close()
					return fmt.Errorf("state: user %s: %w", u.String(), errCorrupt)
				}
				valid = it.Next()
				if t >= old {
					st.Unchanged++
					continue
				}
				st.Lowered++
			} else {
				st.New++
			}
			if err := w.write(key, t); err != nil {
				it.Close()
				return err
			}
		}
	}
	for valid {
		st.Before++
		valid = it.Next()
	}
	return errors.Join(it.Error(), it.Close())
}

func (w *loadWorker) write(key []byte, t int64) error {
	if w.l.OnWrite != nil {
		if err := w.l.OnWrite((*operators.UUID)(key[3:]), t); err != nil {
			return err
		}
	}
	if w.sst == nil {
		w.sstPath = filepath.Join(w.l.dir, fmt.Sprintf("w%d-%06d.sst", w.id, len(w.paths)))
		f, err := vfs.Default.Create(w.sstPath, vfs.WriteCategoryUnspecified)
		if err != nil {
			return fmt.Errorf("state: loader: %w", err)
		}
		w.sst = sstable.NewWriter(objstorageprovider.NewFileWritable(f), w.wopts)
		w.sstKeys = 0
	}
	n := binary.PutVarint(w.val[:], t)
	if err := w.sst.Merge(key, w.val[:n]); err != nil {
		return fmt.Errorf("state: loader: write %s: %w", w.sstPath, err)
	}
	w.sstKeys++
	if w.sstKeys%4096 == 0 && int64(w.sst.Raw().EstimatedSize()) >= int64(orDefault(int(w.l.SSTSize), defaultSSTSize)) {
		return w.closeSST()
	}
	return nil
}

func (w *loadWorker) closeSST() error {
	if w.sst == nil {
		return nil
	}
	err := w.sst.Close()
	w.sst = nil
	if err != nil {
		return fmt.Errorf("state: loader: write %s: %w", w.sstPath, err)
	}
	fi, err := os.Stat(w.sstPath)
	if err != nil {
		return fmt.Errorf("state: loader: %w", err)
	}
	w.paths = append(w.paths, w.sstPath)
	w.stats.SSTFiles++
	w.stats.SSTBytes += fi.Size()
	return nil
}

func (w *loadWorker) abortSST() {
	if w.sst != nil {
		w.sst.Close()
		w.sst = nil
	}
}

// Users counts the users in the state. It reads every user key.
func (d *DB) Users() (count int64, err error) {
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixUser}, UpperBound: []byte{prefixUser + 1}})
	if err != nil {
		return 0, err
	}
	for valid := it.First(); valid; valid = it.Next() {
		count++
	}
	return count, errors.Join(it.Error(), it.Close())
}

// EachUser calls fn for every user in key order (key group, then uuid) with
// the user's first_seen, until fn returns an error, which EachUser returns.
func (d *DB) EachUser(fn func(u operators.UUID, firstSeen int64) error) error {
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixUser}, UpperBound: []byte{prefixUser + 1}})
	if err != nil {
		return err
	}
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		if len(k) != userKeyLen {
			it.Close()
			return fmt.Errorf("state: bad user key %x", k)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return err
		}
		t, n := binary.Varint(v)
		if n <= 0 {
			it.Close()
			return fmt.Errorf("state: user key %x: %w", k, errCorrupt)
		}
		var u operators.UUID
		copy(u[:], k[3:])
		if err := fn(u, t); err != nil {
			it.Close()
			return err
		}
	}
	return errors.Join(it.Error(), it.Close())
}

// IsLocked tells whether err, from Open, means that the state directory is
// in use: opened by another process, or by another handle in this one.
func IsLocked(err error) bool { return errors.Is(err, ErrInUse) }
