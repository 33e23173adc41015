package state

import (
	"encoding/binary"
	"errors"
	"slices"
	"time"

	"github.com/firstseen/firstseen/operators"
)

var errCorrupt = errors.New("state: corrupt value")

// encodeHeader: version uvarint | epoch uvarint | topic (uvarint len, bytes) |
// topic id (16 bytes) | group (len, bytes) | tolerance ms varint |
// timezone (len, bytes) | commit time unix ms varint.
func encodeHeader(dst []byte, h *Header) []byte {
	dst = binary.AppendUvarint(dst, FormatVersion)
	dst = binary.AppendUvarint(dst, h.Epoch)
	dst = appendString(dst, h.Topic)
	dst = append(dst, h.TopicID[:]...)
	dst = appendString(dst, h.Group)
	dst = binary.AppendVarint(dst, h.Tolerance.Milliseconds())
	dst = appendString(dst, h.Timezone)
	return binary.AppendVarint(dst, h.Time.UnixMilli())
}

func decodeHeader(b []byte, h *Header) error {
	d := decoder{b: b}
	if v := d.uvarint(); v != FormatVersion {
		if d.err != nil {
			return d.err
		}
		if v < FormatVersion {
			return errors.New("state: written by an older firstseen, which kept all partitions in one database " +
				"and wrote no changelog; move it away and start with an empty --state-dir (then bootstrap)")
		}
		return errors.New("state: written by an unknown format version; use a newer firstseen")
	}
	h.Epoch = d.uvarint()
	h.Topic = d.string()
	if d.err == nil && len(d.b) < 16 {
		d.err = errCorrupt
	}
	if d.err == nil {
		copy(h.TopicID[:], d.b[:16])
		d.b = d.b[16:]
	}
	h.Group = d.string()
	h.Tolerance = time.Duration(d.varint()) * time.Millisecond
	h.Timezone = d.string()
	h.Time = time.UnixMilli(d.varint())
	return d.done()
}

// encodePartition: next offset varint | max event time varint | watermark
// varint | changelog next varint.
func encodePartition(dst []byte, pc *PartitionCheckpoint) []byte {
	dst = binary.AppendVarint(dst, pc.NextOffset)
	dst = binary.AppendVarint(dst, pc.MaxEventTime)
	dst = binary.AppendVarint(dst, pc.Watermark)
	return binary.AppendVarint(dst, pc.ChangelogNext)
}

func decodePartition(b []byte, pc *PartitionCheckpoint) error {
	d := decoder{b: b}
	pc.NextOffset = d.varint()
	pc.MaxEventTime = d.varint()
	pc.Watermark = d.varint()
	pc.ChangelogNext = d.varint()
	return d.done()
}

// encodeHeld: event time varint | kafka timestamp varint | release varint |
// uuid 16 bytes | payload (the rest). The offset is in the key.
func encodeHeld(dst []byte, h *operators.Held) []byte {
	dst = binary.AppendVarint(dst, h.EventTime)
	dst = binary.AppendVarint(dst, h.Timestamp)
	dst = binary.AppendVarint(dst, h.Release)
	dst = append(dst, h.UUID[:]...)
	return append(dst, h.Payload...)
}

func decodeHeld(b []byte, h *operators.Held) error {
	d := decoder{b: b}
	h.EventTime = d.varint()
	h.Timestamp = d.varint()
	h.Release = d.varint()
	if d.err != nil || len(d.b) < 16 {
		return errCorrupt
	}
	copy(h.UUID[:], d.b[:16])
	h.Payload = append([]byte(nil), d.b[16:]...)
	return nil
}

// encodeIntent: epoch uvarint | writer (uvarint len, bytes) | partition count uvarint | per partition in
// ascending order: partition varint | next varint | advance count uvarint |
// per advance: at varint | watermark varint | dead-letter partition count
// uvarint | per dead-letter partition in ascending order: partition varint |
// end offset varint.
func encodeIntent(dst []byte, in *Intent) []byte {
	dst = binary.AppendUvarint(dst, in.Epoch)
	dst = appendString(dst, in.Writer)
	dst = binary.AppendUvarint(dst, uint64(len(in.Partitions)))
	parts := make([]int32, 0, len(in.Partitions))
	for p := range in.Partitions {
		parts = append(parts, p)
	}
	slices.Sort(parts)
	for _, p := range parts {
		ip := in.Partitions[p]
		dst = binary.AppendVarint(dst, int64(p))
		dst = binary.AppendVarint(dst, ip.Next)
		dst = binary.AppendUvarint(dst, uint64(len(ip.Advances)))
		for _, a := range ip.Advances {
			dst = binary.AppendVarint(dst, a.At)
			dst = binary.AppendVarint(dst, a.Watermark)
		}
	}
	return appendOffsets(dst, in.DeadLetterEnds)
}

func appendOffsets(dst []byte, m map[int32]int64) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(m)))
	parts := make([]int32, 0, len(m))
	for p := range m {
		parts = append(parts, p)
	}
	slices.Sort(parts)
	for _, p := range parts {
		dst = binary.AppendVarint(dst, int64(p))
		dst = binary.AppendVarint(dst, m[p])
	}
	return dst
}

func decodeIntent(b []byte, in *Intent) error {
	d := decoder{b: b}
	in.Epoch = d.uvarint()
	in.Writer = d.string()
	n := d.uvarint()
	if d.err != nil || n > uint64(len(b)) {
		return errCorrupt
	}
	in.Partitions = make(map[int32]IntentPartition, n)
	for range n {
		p := int32(d.varint())
		ip := IntentPartition{Next: d.varint()}
		na := d.uvarint()
		if d.err != nil || na > uint64(len(b)) {
			return errCorrupt
		}
		for range na {
			ip.Advances = append(ip.Advances, WatermarkAdvance{At: d.varint(), Watermark: d.varint()})
		}
		in.Partitions[p] = ip
	}
	nd := d.uvarint()
	if d.err != nil || nd > uint64(len(b)) {
		return errCorrupt
	}
	if nd > 0 {
		in.DeadLetterEnds = make(map[int32]int64, nd)
	}
	for range nd {
		p := int32(d.varint())
		in.DeadLetterEnds[p] = d.varint()
	}
	return d.done()
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// decoder reads varint fields and stops at the first error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil || uint64(len(d.b)) < n {
		d.err = errCorrupt
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *decoder) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = errCorrupt
	}
	return d.err
}
