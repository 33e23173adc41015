package state

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/firstseen/firstseen/operators"
)

// The changelog: every change a checkpoint makes to a partition's state is
// also a record of that partition of a compacted Kafka topic, so that any
// replica can rebuild the partition's database from Kafka alone (after a
// rescale, a dead replica, or a lost volume). The engine produces the
// records (Batch.EachChangelogRecord, EncodeChangelogIntent) and reads them
// back into a Restorer; this file is their byte format, documented in
// docs/state-format.md.
//
//	key                         value
//	'u' uuid (16)               first_seen: varint ms. Only ever lower than the key's previous record,
//	                            so the record compaction keeps is the minimum.
//	'h' offset (8, big-endian)  a held record (encodeHeld); a tombstone (nil value) once released
//	'p'                         the partition's checkpoint (encodeChangelogCheckpoint)
//	'i'                         the intent of an epoch being written (encodeChangelogIntent)
//
// The records of one checkpoint are produced in one Kafka transaction
// (users, held records, then 'p'), and an intent in one of its own before
// the epoch's rows go to the sink; a restore reads committed records only.
// A partition has an unfinished epoch when its last 'i' record came after its
// last 'p' record.
const (
	changelogUser       = 'u'
	changelogHeld       = 'h'
	changelogCheckpoint = 'p'
	changelogIntent     = 'i'
	changelogVersion    = 1
)

// encodeChangelogCheckpoint: version uvarint | epoch uvarint | writer
// (uvarint len, bytes) | next offset varint | max event time varint |
// watermark varint.
func encodeChangelogCheckpoint(dst []byte, epoch uint64, writer string, pc *PartitionCheckpoint) []byte {
	dst = binary.AppendUvarint(dst, changelogVersion)
	dst = binary.AppendUvarint(dst, epoch)
	dst = appendString(dst, writer)
	dst = binary.AppendVarint(dst, pc.NextOffset)
	dst = binary.AppendVarint(dst, pc.MaxEventTime)
	return binary.AppendVarint(dst, pc.Watermark)
}

func decodeChangelogCheckpoint(b []byte, pc *PartitionCheckpoint) error {
	d := decoder{b: b}
	if v := d.uvarint(); d.err == nil && v != changelogVersion {
		return fmt.Errorf("state: changelog checkpoint of unknown version %d; use a newer firstseen", v)
	}
	d.uvarint()
	d.string()
	pc.NextOffset = d.varint()
	pc.MaxEventTime = d.varint()
	pc.Watermark = d.varint()
	return d.done()
}

// ChangelogUserSize bounds the bytes of a user record's key and value.
const ChangelogUserSize = 1 + 16 + binary.MaxVarintLen64

// AppendChangelogUser appends a user record to dst, key then value, and
// returns the two: key 'u' uuid, value first_seen as a varint. It is what
// a checkpoint writes for a user, and what a bootstrap writes.
func AppendChangelogUser(dst []byte, u *operators.UUID, firstSeen int64) (key, value []byte) {
	at := len(dst)
	dst = append(dst, changelogUser)
	dst = append(dst, u[:]...)
	dst = binary.AppendVarint(dst, firstSeen)
	return dst[at : at+17 : at+17], dst[at+17:]
}

// EncodeChangelogIntent returns the changelog record (key, value) of an
// intent for one partition: version uvarint, then the intent as the 'i'
// key of the database holds it (encodeIntent).
func EncodeChangelogIntent(in *Intent) (key, value []byte) {
	value = binary.AppendUvarint(nil, changelogVersion)
	return []byte{changelogIntent}, encodeIntent(value, in)
}

// EachChangelogRecord calls fn with every changelog record of the batch:
// users, held records and their deletions (value nil), then the partition's
// checkpoint. The slices are valid during the call. epoch and writer go
// into the checkpoint record.
func (b *Batch) EachChangelogRecord(epoch uint64, writer string, fn func(key, value []byte)) {
	var buf [ChangelogUserSize]byte
	for i := range b.users {
		u := b.users[i].uuid()
		fn(AppendChangelogUser(buf[:0], &u, b.users[i].t))
	}
	for d := b.clog; len(d) > 0; {
		kn, n := binary.Uvarint(d)
		d = d[n:]
		k := d[:kn]
		d = d[kn:]
		vn, n := binary.Varint(d)
		d = d[n:]
		var v []byte
		if vn >= 0 {
			v = d[:vn]
			d = d[vn:]
		}
		fn(k, v)
	}
	if b.cp != nil {
		fn([]byte{changelogCheckpoint}, encodeChangelogCheckpoint(nil, epoch, writer, b.cp))
	}
}

// logHeld records a held record's change for the changelog (value nil: a
// deletion).
func (b *Batch) logHeld(offset int64, value []byte, deleted bool) {
	var k [9]byte
	k[0] = changelogHeld
	binary.BigEndian.PutUint64(k[1:], uint64(offset))
	b.clog = binary.AppendUvarint(b.clog, uint64(len(k)))
	b.clog = append(b.clog, k[:]...)
	if deleted {
		b.clog = binary.AppendVarint(b.clog, -1)
		return
	}
	b.clog = binary.AppendVarint(b.clog, int64(len(value)))
	b.clog = append(b.clog, value...)
}

// RestoreStats describe a restore.
type RestoreStats struct {
	Records int64 // changelog records applied
	Users   int64 // user records among them
	Held    int   // held record changes among them
	// Unfinished is set when the partition's last epoch was being written
	// when its writer stopped: its intent is now in the database.
	Unfinished bool
}

// Restorer applies a partition's changelog records, in offset order, to the
// partition's database. Users go through a bulk Loader (sorted SSTs,
// ingested at Finish), the rest into one batch; Finish makes it all durable
// with ChangelogNext, so an interrupted restore leaves the database as it
// was and the next one starts from the same place. It belongs to one
// goroutine.
type Restorer struct {
	db        *DB
	partition int32
	loader    *Loader
	b         *pebble.Batch
	cp        PartitionCheckpoint
	haveCP    bool
	sawCP     bool   // a checkpoint record was applied
	intent    []byte // the value of the last 'i' record after the last 'p' record
	stats     RestoreStats
	held      operators.Held
}

// NewRestorer starts a restore of partition's changelog into d, whose
// checkpoint (if any) it starts from.
func (d *DB) NewRestorer(partition int32) (*Restorer, error) {
	cp, ok, err := d.LoadCheckpoint()
	if err != nil {
		return nil, err
	}
	l, err := d.NewLoader("")
	if err != nil {
		return nil, err
	}
	r := &Restorer{db: d, partition: partition, loader: l, b: d.db.NewBatch()}
	if pc, found := cp.Partitions[partition]; ok && found {
		r.cp, r.haveCP = pc, true
	} else {
		r.cp.MaxEventTime, r.cp.Watermark = operators.NoWatermark, operators.NoWatermark
	}
	return r, nil
}

// Checkpoint is the partition's checkpoint as restored so far, and whether
// there is one.
func (r *Restorer) Checkpoint() (PartitionCheckpoint, bool) { return r.cp, r.haveCP }

// Apply applies one changelog record.
func (r *Restorer) Apply(key, value []byte) error {
	r.stats.Records++
	if len(key) == 0 {
		return fmt.Errorf("state: changelog record with an empty key: %w", errCorrupt)
	}
	switch key[0] {
	case changelogUser:
		if len(key) != 17 {
			return fmt.Errorf("state: changelog user key of %d bytes: %w", len(key), errCorrupt)
		}
		t, n := binary.Varint(value)
		if n <= 0 || n != len(value) {
			return fmt.Errorf("state: changelog user value: %w", errCorrupt)
		}
		r.stats.Users++
		return r.loader.Add((*operators.UUID)(key[1:]), t)
	case changelogHeld:
		if len(key) != 9 {
			return fmt.Errorf("state: changelog held key of %d bytes: %w", len(key), errCorrupt)
		}
		r.stats.Held++
		k := heldKey(r.partition, int64(binary.BigEndian.Uint64(key[1:])))
		if value == nil {
			return r.b.Delete(k[:], nil)
		}
		if err := decodeHeld(value, &r.held); err != nil {
			return err
		}
		return r.b.Set(k[:], value, nil)
	case changelogCheckpoint:
		next := r.cp.ChangelogNext
		if err := decodeChangelogCheckpoint(value, &r.cp); err != nil {
			return err
		}
		r.cp.ChangelogNext, r.haveCP, r.sawCP, r.intent = next, true, true, nil
		return nil
	case changelogIntent:
		d := decoder{b: value}
		if v := d.uvarint(); d.err != nil || v != changelogVersion {
			return fmt.Errorf("state: changelog intent of unknown version; use a newer firstseen")
		}
		var in Intent
		if err := decodeIntent(d.b, &in); err != nil {
			return err
		}
		r.intent = append(r.intent[:0], d.b...)
		return nil
	}
	return fmt.Errorf("state: changelog record of unknown kind %q; use a newer firstseen", key[0])
}

// Finish makes the restored records durable, with the partition's
// checkpoint saying the database now reflects the changelog up to
// changelogNext, and h as the header. An unfinished epoch's intent is
// stored as the database's intent.
func (r *Restorer) Finish(ctx context.Context, changelogNext int64, h Header) (RestoreStats, error) {
	defer r.b.Close()
	if _, err := r.loader.Finish(ctx); err != nil {
		return r.stats, err
	}
	r.cp.ChangelogNext = changelogNext
	if err := r.b.Set(partitionKey(r.partition), encodePartition(nil, &r.cp), nil); err != nil {
		return r.stats, err
	}
	switch {
	case r.intent != nil:
		r.stats.Unfinished = true
		if err := r.b.Set([]byte{keyIntent}, r.intent, nil); err != nil {
			return r.stats, err
		}
	case r.sawCP:
		if err := r.b.Delete([]byte{keyIntent}, nil); err != nil {
			return r.stats, err
		}
	}
	if err := r.b.Set([]byte{keyHeader}, encodeHeader(nil, &h), nil); err != nil {
		return r.stats, err
	}
	return r.stats, r.b.Commit(pebble.Sync)
}

// Abort ends a restore without applying anything.
func (r *Restorer) Abort() {
	r.loader.Abort()
	r.b.Close()
}

func partitionKey(p int32) []byte {
	k := make([]byte, 5)
	k[0] = prefixPartition
	binary.BigEndian.PutUint32(k[1:], uint32(p))
	return k
}
