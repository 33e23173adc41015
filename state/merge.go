package state

import (
	"encoding/binary"
	"io"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// minMergerName is stored in the database: a state directory can only be
// opened with a merger of the same name.
const minMergerName = "firstseen.min_varint.v1"

// minMerger keeps the smallest of a user key's first_seen values. User
// updates are written as merge operands, not sets, so that two writers of one
// user (a user whose records reach two partitions, or a bootstrap load) can
// never move first_seen later: first_seen only ever moves earlier, whatever
// order the writes land in.
var minMerger = &pebble.Merger{
	Name: minMergerName,
	Merge: func(_, value []byte) (pebble.ValueMerger, error) {
		m := minMergers.Get().(*minValueMerger)
		m.set = false
		return m, m.merge(value)
	},
}

var minMergers = sync.Pool{New: func() any { return new(minValueMerger) }}

type minValueMerger struct {
	min int64
	set bool
	buf [binary.MaxVarintLen64]byte
}

func (m *minValueMerger) merge(v []byte) error {
	x, n := binary.Varint(v)
	if n <= 0 {
		return errCorrupt
	}
	if !m.set || x < m.min {
		m.min, m.set = x, true
	}
	return nil
}

func (m *minValueMerger) MergeNewer(v []byte) error { return m.merge(v) }
func (m *minValueMerger) MergeOlder(v []byte) error { return m.merge(v) }

// Finish returns the minimum in the merger's own buffer; the closer puts the
// merger back in its pool, so a read of a merged key does not allocate.
func (m *minValueMerger) Finish(bool) ([]byte, io.Closer, error) {
	n := binary.PutVarint(m.buf[:], m.min)
	return m.buf[:n], m, nil
}

func (m *minValueMerger) Close() error {
	minMergers.Put(m)
	return nil
}
