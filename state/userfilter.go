package state

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/firstseen/firstseen/operators"
)

// userFilter is an in-memory filter of every user in the state, in front of
// Pebble for Reader.Get. "Absent" is certain, so the lookup of a new user
// (the first record of every user is one) costs one cache line instead of a
// Pebble seek; "maybe" (every known user, and about 0.5% of the others)
// goes on to Pebble as before.
//
// Pebble's own bloom filters cannot do this cheaply: a seek reaches a
// level's filter only after positioning a merging iterator, finding the
// file and loading its reader: about 1 µs of CPU per miss, with 1M users
// (BenchmarkReaderGetEpochs, filter=false against filter=true) as with 10M.
//
// The filter is a split-block bloom filter (Putze et al.; the layout of
// Parquet's): a key sets one bit in each of the eight 32-bit words of one
// 32-byte block, so a lookup reads one cache line. At 12 bits per key the
// false-positive rate is about 0.5%. The blocks are grouped by key group,
// in key order, and a key's block is chosen by a hash among its group's:
// a scan of the state in key order (the build) and a commit's sorted users
// write the filter front to back instead of all over it (the scan of 10M
// users spent 200 ns a key in cache misses when blocks were chosen by hash
// alone, under load). It is sized when it is built (from the state's size)
// and grows by adding parts of twice the capacity when the state outgrows
// it; a lookup tests every part, usually one or two.
//
// It only ever contains committed users (DB.Commit adds them just before
// its commit; a bulk load drops the filter), plus false positives, so it
// never changes an answer: a user it calls absent is absent from every view
// of the state a Reader can have. Users are never deleted.
//
// Concurrency: adds (Commit, the build) hold mu; readers test without a
// lock. Bits are set with atomic operations once the filter is published
// to readers, and read with atomic loads; the list of parts is replaced,
// never modified.
type userFilter struct {
	parts atomic.Pointer[[]*filterPart]
	mu    sync.Mutex // serializes adds and growth
}

const filterBitsPerKey = 12

// filterMinUsers is the smallest capacity a part is built with (a
// variable for tests).
var filterMinUsers int64 = 1 << 20

type filterPart struct {
	words     []uint32 // blocks of 8 words, groupBlocks per key group
	perGroup  uint64   // blocks per key group
	capacity  int64
	count     int64 // keys added; under userFilter.mu
	published bool  // readers may test it: set bits atomically
}

func newFilterPart(capacity int64) *filterPart {
	capacity = max(capacity, filterMinUsers)
	blocks := uint64(capacity*filterBitsPerKey+255) / 256
	perGroup := max(1, (blocks+operators.MaxKeyGroups-1)/operators.MaxKeyGroups)
	return &filterPart{words: make([]uint32, perGroup*operators.MaxKeyGroups*8), perGroup: perGroup, capacity: capacity}
}

func newUserFilter(capacity int64) *userFilter {
	f := &userFilter{}
	parts := []*filterPart{newFilterPart(capacity)}
	f.parts.Store(&parts)
	return f
}

var filterSalt = [8]uint32{0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d, 0x705495c7, 0x2df1424b, 0x9efc4947, 0x5c6bfb31}

// userHash mixes all 16 bytes of u (time-ordered uuids have predictable
// leading bytes).
func userHash(u *operators.UUID) uint64 {
	a := binary.LittleEndian.Uint64(u[:8])
	b := binary.LittleEndian.Uint64(u[8:])
	h := (a ^ 0x9e3779b97f4a7c15) * 0xff51afd7ed558ccd
	h ^= h >> 32
	h = (h ^ b) * 0xc4ceb9fe1a85ec53
	return h ^ h>>29
}

// filterKey is what the filter knows of a user: its key group and hash.
type filterKey struct {
	h  uint64
	kg uint16
}

func (p *filterPart) block(k filterKey) []uint32 {
	i := uint64(k.kg)*p.perGroup + (k.h>>32)*p.perGroup>>32
	return p.words[i*8 : i*8+8 : i*8+8]
}

func (p *filterPart) mayContain(k filterKey) bool {
	blk := p.block(k)
	lo := uint32(k.h)
	for i := range 8 {
		bit := uint32(1) << ((lo * filterSalt[i]) >> 27)
		if atomic.LoadUint32(&blk[i])&bit == 0 {
			return false
		}
	}
	return true
}

// add sets k's bits; under userFilter.mu.
func (p *filterPart) add(k filterKey) {
	blk := p.block(k)
	lo := uint32(k.h)
	if p.published {
		for i := range 8 {
			atomic.OrUint32(&blk[i], uint32(1)<<((lo*filterSalt[i])>>27))
		}
	} else {
		for i := range 8 { // no reader yet: 128 ns a key with atomics, at 10M users
			blk[i] |= uint32(1) << ((lo * filterSalt[i]) >> 27)
		}
	}
	p.count++
}

// mayContain reports whether the user may be in the state. false is
// certain.
func (f *userFilter) mayContain(k filterKey) bool {
	for _, p := range *f.parts.Load() {
		if p.mayContain(k) {
			return true
		}
	}
	return false
}

// add adds users to the filter.
func (f *userFilter) add(keys []filterKey) {
	f.mu.Lock()
	defer f.mu.Unlock()
	parts := *f.parts.Load()
	last := parts[len(parts)-1]
	for _, k := range keys {
		if last.count >= last.capacity {
			var total int64
			for _, p := range parts {
				total += p.capacity
			}
			last = newFilterPart(2 * total)
			last.published = parts[0].published
			parts = append(parts[:len(parts):len(parts)], last)
			f.parts.Store(&parts)
		}
		last.add(k)
	}
}

// publish makes the filter's adds safe for readers.
func (f *userFilter) publish() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range *f.parts.Load() {
		p.published = true
	}
}

// bytes is the filter's memory.
func (f *userFilter) bytes() int64 {
	var n int64
	for _, p := range *f.parts.Load() {
		n += int64(len(p.words)) * 4
	}
	return n
}

// EnableUserFilter makes every Reader consult an in-memory filter of all
// users before Pebble. The filter is built in the background, by one scan
// of the user keys (2.6 s of CPU at 10M users, BenchmarkUserFilterBuild),
// so that a restart processes records at once; until it
// is ready, readers use Pebble alone, as without it. Calling it again does
// nothing. The processor enables it; the data tools, which look up a few
// users, do not. A bulk load into this DB (Loader.Finish) drops it.
//
// Its memory is about 1.5 to 2 bytes per user: 12 bits per key, sized from
// the state's size on disk with some room to grow (21 MB for 10M users).
func (d *DB) EnableUserFilter() {
	d.filterMu.Lock()
	defer d.filterMu.Unlock()
	if d.filterW.Load() != nil {
		return
	}
	// Under commitMu, so that every commit is either seen by the scan's
	// iterator or adds its users to f itself.
	d.commitMu.Lock()
	defer d.commitMu.Unlock()
	m := d.db.Metrics()
	size := m.MemTable.Size
	for _, l := range m.Levels {
		size += uint64(l.TablesSize)
	}
	// A user takes at least about 20 bytes in an SST, so this over-estimates
	// the users by a third or more: the filter's room to grow.
	f := newUserFilter(int64(size / 20))
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixUser}, UpperBound: []byte{prefixUser + 1}})
	if err != nil {
		d.filterErr = err
		return
	}
	d.filterW.Store(f)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	d.filterStop = func() { cancel(); <-done }
	d.filterDone = done
	go func() {
		defer close(done)
		start := time.Now()
		err := f.build(ctx, it)
		d.filterMu.Lock()
		defer d.filterMu.Unlock()
		if err != nil {
			d.filterErr = err
			d.filterW.Store(nil)
			if ctx.Err() == nil && d.log != nil {
				d.log.Warn("building the in-memory user filter failed; new users are looked up in Pebble, which is slower", "err", err)
			}
			return
		}
		if d.filterW.Load() != f {
			return // dropped meanwhile
		}
		f.publish()
		d.filter.Store(f)
		if d.log != nil {
			d.log.Debug("user filter ready", "took", time.Since(start), "bytes", f.bytes())
		}
	}()
}

// build adds the users of it to the filter and closes it. It holds mu a
// key group at a time, so that commits meanwhile wait little.
func (f *userFilter) build(ctx context.Context, it *pebble.Iterator) error {
	const chunk = 4096
	keys := make([]filterKey, 0, chunk)
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != userKeyLen {
			it.Close()
			return fmt.Errorf("state: bad user key %x", k)
		}
		keys = append(keys, filterKey{h: userHash((*operators.UUID)(k[3:])), kg: binary.BigEndian.Uint16(k[1:3])})
		if len(keys) == chunk {
			f.add(keys)
			keys = keys[:0]
			if ctx.Err() != nil {
				it.Close()
				return ctx.Err()
			}
		}
	}
	f.add(keys)
	return errors.Join(it.Error(), it.Close())
}

// WaitUserFilter waits until the filter EnableUserFilter started is
// ready, and returns the error that stopped it, if any.
func (d *DB) WaitUserFilter() error {
	d.filterMu.Lock()
	done := d.filterDone
	d.filterMu.Unlock()
	if done != nil {
		<-done
	}
	d.filterMu.Lock()
	defer d.filterMu.Unlock()
	return d.filterErr
}

// dropUserFilter stops a build and makes readers go to Pebble for every
// user again.
func (d *DB) dropUserFilter() {
	d.filterMu.Lock()
	stop := d.filterStop
	d.filterStop = nil
	d.filterMu.Unlock()
	if stop != nil {
		stop()
	}
	d.filterMu.Lock()
	defer d.filterMu.Unlock()
	d.filterW.Store(nil)
	d.filter.Store(nil)
	d.filterDone = nil
}

// UserFilterBytes is the memory of the user filter (0 when none is ready).
func (d *DB) UserFilterBytes() int64 {
	if f := d.filter.Load(); f != nil {
		return f.bytes()
	}
	return 0
}
