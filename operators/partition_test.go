package operators

import (
	"math/rand/v2"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

func TestMurmur2KafkaVectors(t *testing.T) {
	// From Apache Kafka's UtilsTest.testMurmur2 (the Java client's
	// Utils.murmur2 returns a signed int).
	for in, want := range map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc":                      479470107,
		"\x0c\x2a\x38\x18\x6d\x6f": 274204207,
	} {
		if got := int32(murmur2([]byte(in))); got != want {
			t.Errorf("murmur2(%q) = %d, want %d", in, got, want)
		}
		// Kafka's toPositive(murmur2(key)) % n
		for _, n := range []int{1, 3, 4, 7, 12, 100} {
			if got, want := Partition([]byte(in), n), (want&0x7fffffff)%int32(n); got != want {
				t.Errorf("Partition(%q, %d) = %d, want %d", in, n, got, want)
			}
		}
	}
}

func TestPartitionOfIsTheCanonicalKeysPartition(t *testing.T) {
	part := kgo.StickyKeyPartitioner(nil).ForTopic("t")
	r := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		var u UUID
		for j := range u {
			u[j] = byte(r.Uint32())
		}
		n := 1 + r.IntN(64)
		want := part.Partition(&kgo.Record{Key: []byte(u.String())}, n)
		if got := PartitionOf(&u, n); int(got) != want {
			t.Fatalf("PartitionOf(%s, %d) = %d, franz-go says %d", u, n, got, want)
		}
	}
}

func TestPartitionOfDoesNotAllocate(t *testing.T) {
	u := UUID{1, 2, 3}
	if n := testing.AllocsPerRun(100, func() { PartitionOf(&u, 12) }); n != 0 {
		t.Errorf("PartitionOf allocates %.0f times", n)
	}
}
