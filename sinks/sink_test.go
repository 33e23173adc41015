package sinks

import (
	"fmt"
	"testing"

	"github.com/firstseen/firstseen/operators"
)

func TestBatchAppendAndMerge(t *testing.T) {
	var a, b, all Batch
	var r operators.Row
	for i := 0; i < 10; i++ {
		row := operators.Row{EventTime: int64(i), EventDate: int32(i), FirstSeen: -int64(i), IsNew: i%2 == 0,
			Late: i%3 == 0, Partition: int32(i % 4), Offset: int64(100 + i), Timestamp: int64(7 * i),
			Payload: fmt.Appendf(nil, `{"i":%d}`, i)}
		row.UUID[0] = byte(i)
		[]*Batch{&a, &b}[i/5].Append(&row)
	}
	all.AppendBatch(&a)
	all.AppendBatch(&b)
	if all.Len() != 10 {
		t.Fatalf("len %d", all.Len())
	}
	for i := 0; i < 10; i++ {
		all.Row(i, &r)
		if r.UUID[0] != byte(i) || r.Offset != int64(100+i) || r.IsNew != (i%2 == 0) || r.Late != (i%3 == 0) ||
			string(r.Payload) != fmt.Sprintf(`{"i":%d}`, i) || r.FirstSeen != -int64(i) || r.Timestamp != int64(7*i) {
			t.Fatalf("row %d: %+v payload %s", i, r, r.Payload)
		}
	}
	all.Reset()
	if all.Len() != 0 || all.Epoch != 0 {
		t.Fatal("Reset left rows")
	}
}

func TestBatchAppendDoesNotAllocate(t *testing.T) {
	var b Batch
	row := operators.Row{Payload: []byte(`{"page":"/a"}`)}
	fill := func() {
		b.Reset()
		for i := 0; i < 1000; i++ {
			b.Append(&row)
		}
	}
	fill()
	if n := testing.AllocsPerRun(20, fill); n != 0 {
		t.Fatalf("%.1f allocations per refill", n)
	}
}
