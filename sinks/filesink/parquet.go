package filesink

// The Parquet format uses github.com/parquet-go/parquet-go: the maintained
// successor of segmentio/parquet-go (the segmentio repository is archived
// and points to it), pure Go (no cgo, unlike the Arrow C++ bindings), with
// a typed writer that turns a slice of structs into columns through a
// schema compiled once per type, so the per-row path is plain field
// copies. apache/arrow-go's pqarrow would do too, but at the cost of the
// whole Arrow runtime for ten flat columns.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/firstseen/firstseen/sinks"
)

// parquetRow is a row in a Parquet file; its tags are the schema. The
// columns are those of the JSON form.
type parquetRow struct {
	UUID      []byte `parquet:"uuid,string"`
	EventTime int64  `parquet:"event_time,timestamp(millisecond:utc)"`
	EventDate int32  `parquet:"event_date,date"`
	FirstSeen int64  `parquet:"first_seen,timestamp(millisecond:utc)"`
	IsNew     uint8  `parquet:"is_new,uint(8)"`
	Late      uint8  `parquet:"late,uint(8)"`
	Partition int32  `parquet:"src_partition"`
	Offset    int64  `parquet:"src_offset"`
	KafkaTime int64  `parquet:"kafka_time,timestamp(millisecond:utc)"`
	Payload   []byte `parquet:"payload,string"`
}

// parquetChunk is how many rows the encoder hands the writer at a time.
const parquetChunk = 1024

// parquetEncoder writes files of rows, reusing its writer and buffers.
type parquetEncoder struct {
	w     *parquet.GenericWriter[parquetRow]
	rows  []parquetRow
	uuids []byte
}

func newParquetEncoder() *parquetEncoder {
	return &parquetEncoder{
		w: parquet.NewGenericWriter[parquetRow](io.Discard, parquet.Compression(&parquet.Snappy),
			parquet.CreatedBy("firstseen", "", "")),
		rows:  make([]parquetRow, 0, parquetChunk),
		uuids: make([]byte, 0, 36*parquetChunk),
	}
}

// encode writes rows to w as one Parquet file.
func (e *parquetEncoder) encode(w io.Writer, rows []rowRef) error {
	bw := bufferedWriter{w: w}
	e.w.Reset(&bw)
	for len(rows) > 0 {
		n := min(len(rows), parquetChunk)
		e.rows, e.uuids = e.rows[:0], e.uuids[:0]
		for _, r := range rows[:n] {
			b, i := r.part, int(r.i)
			at := len(e.uuids)
			e.uuids = b.UUID[i].AppendCanonical(e.uuids)
			e.rows = append(e.rows, parquetRow{
				UUID: e.uuids[at:len(e.uuids):len(e.uuids)], EventTime: b.EventTime[i], EventDate: b.EventDate[i],
				FirstSeen: b.FirstSeen[i], IsNew: b2u(b.IsNew[i]), Late: b2u(b.Late[i]),
				Partition: b.Partition[i], Offset: b.Offset[i], KafkaTime: b.Timestamp[i], Payload: b.Payload(i),
			})
		}
		if _, err := e.w.Write(e.rows); err != nil {
			return err
		}
		rows = rows[n:]
	}
	clear(e.rows[:cap(e.rows)]) // let go of the batch's payloads
	if err := e.w.Close(); err != nil {
		return err
	}
	return bw.flush()
}

// bufferedWriter gathers the writer's small writes.
type bufferedWriter struct {
	w   io.Writer
	buf bytes.Buffer
}

func (b *bufferedWriter) Write(p []byte) (int, error) {
	n, _ := b.buf.Write(p)
	if b.buf.Len() >= flushAt {
		return n, b.flush()
	}
	return n, nil
}

func (b *bufferedWriter) flush() error {
	_, err := b.w.Write(b.buf.Bytes())
	b.buf.Reset()
	return err
}

func b2u(v bool) uint8 {
	if v {
		return 1
	}
	return 0
}

// readParquet reads a file written by the Parquet encoder. Payloads come
// back as their JSON form has them (line breaks as spaces, null when
// empty).
func readParquet(path string) ([]Line, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := parquet.NewGenericReader[parquetRow](f)
	defer r.Close()
	var out []Line
	rows := make([]parquetRow, 256)
	for {
		n, err := r.Read(rows)
		for _, pr := range rows[:n] {
			payload := []byte("null")
			if len(pr.Payload) > 0 {
				payload = bytes.Clone(pr.Payload)
				for j, c := range payload {
					if c == '\n' || c == '\r' {
						payload[j] = ' '
					}
				}
			}
			out = append(out, Line{
				UUID: string(pr.UUID), EventTime: time.UnixMilli(pr.EventTime).UTC(),
				FirstSeen: time.UnixMilli(pr.FirstSeen).UTC(), KafkaTime: time.UnixMilli(pr.KafkaTime).UTC(),
				EventDate: string(sinks.AppendDate(nil, pr.EventDate)), IsNew: pr.IsNew != 0, Late: pr.Late != 0,
				Partition: pr.Partition, Offset: pr.Offset, Payload: payload,
			})
		}
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
}
