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

// A joined batch reads as its parts one after the other, and lets go of
// them on Reset.
func TestBatchJoin(t *testing.T) {
	var parts [3]Batch
	var r operators.Row
	sizes := []int{4, 0, 3}
	k := 0
	for p, n := range sizes {
		for range n {
			row := operators.Row{Partition: int32(p), Offset: int64(k), Payload: fmt.Appendf(nil, `{"k":%d}`, k)}
			parts[p].Append(&row)
			k++
		}
	}
	var j, inner Batch
	inner.Join(&parts[1], &parts[2])
	j.Join(&parts[0])
	j.Join(&inner) // joins of joins are flattened
	j.Epoch = 9
	if j.Len() != 7 || len(j.Parts()) != 3 || j.Bytes() != parts[0].Bytes()+parts[2].Bytes() {
		t.Fatalf("Len %d, %d parts, Bytes %d", j.Len(), len(j.Parts()), j.Bytes())
	}
	for i := range j.Len() {
		j.Row(i, &r)
		if r.Offset != int64(i) || string(j.Payload(i)) != fmt.Sprintf(`{"k":%d}`, i) {
			t.Fatalf("row %d: %+v payload %s", i, r, j.Payload(i))
		}
	}
	var flat Batch
	flat.AppendBatch(&j)
	if flat.Len() != 7 || len(flat.Parts()) != 1 || string(flat.Payload(6)) != `{"k":6}` {
		t.Fatalf("AppendBatch of a joined batch: %d rows", flat.Len())
	}
	defer func() {
		if recover() == nil {
			t.Error("Append to a joined batch did not panic")
		}
		j.Reset()
		if j.Len() != 0 || len(j.Parts()) != 1 || j.Parts()[0] != &j || parts[0].Len() != 4 {
			t.Errorf("after Reset: Len %d, parts %d; part 0 has %d rows", j.Len(), len(j.Parts()), parts[0].Len())
		}
	}()
	j.Append(&r)
}

// Once a huge fill is followed by a much smaller one, Reset lets go of the
// memory; a steady size keeps its memory.
func TestBatchResetCapsMemory(t *testing.T) {
	var b Batch
	row := operators.Row{Payload: make([]byte, 100)}
	fill := func(n int) {
		b.Reset()
		for range n {
			b.Append(&row)
		}
	}
	fill(200_000)
	fill(10)
	b.Reset()
	if cap(b.UUID) > keepRows || cap(b.payloads) > keepBytes {
		t.Fatalf("kept room for %d rows, %d bytes after a fill of 10", cap(b.UUID), cap(b.payloads))
	}
	fill(100_000)
	c := cap(b.UUID)
	fill(100_000)
	if cap(b.UUID) != c {
		t.Fatalf("a steady size reallocated: capacity %d, then %d", c, cap(b.UUID))
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

// BenchmarkAppend measures Append into a batch of 100k rows (ns/op is per
// row): reused, as the tasks' batches are in steady state, and fresh, as
// while they grow.
func BenchmarkAppend(b *testing.B) {
	row := operators.Row{EventTime: 1767225600123, EventDate: 20454, FirstSeen: 1767225600000, IsNew: true,
		Offset: 42, Timestamp: 1767225600200,
		Payload: []byte(`{"event":"page_view","page":"/products/42","referrer":"https://example.com/search?q=shoes","session":"a1b2c3d4e5f6"}`)}
	const n = 100_000
	for _, fresh := range []bool{false, true} {
		name := "reused"
		if fresh {
			name = "fresh"
		}
		b.Run(name, func(b *testing.B) {
			var batch Batch
			b.ReportAllocs()
			for i := 0; i < b.N; i += n {
				if fresh {
					batch = Batch{}
				} else {
					batch.Reset()
				}
				for range n {
					batch.Append(&row)
				}
			}
		})
	}
}
