package operators

// murmur2 is the 32-bit MurmurHash2 of b as the Apache Kafka Java client
// computes it for key partitioning (Utils.murmur2): seed 0x9747b28c, the
// input read in little-endian 4-byte words, the 1-3 trailing bytes folded in
// unsigned, then the final avalanche.
func murmur2(b []byte) uint32 {
	const (
		seed = 0x9747b28c
		m    = 0x5bd1e995
		r    = 24
	)
	h := uint32(seed) ^ uint32(len(b))
	n := len(b) &^ 3
	for i := 0; i < n; i += 4 {
		k := uint32(b[i]) | uint32(b[i+1])<<8 | uint32(b[i+2])<<16 | uint32(b[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	switch len(b) & 3 {
	case 3:
		h ^= uint32(b[n+2]) << 16
		fallthrough
	case 2:
		h ^= uint32(b[n+1]) << 8
		fallthrough
	case 1:
		h ^= uint32(b[n])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}

// Partition returns the partition Kafka's default partitioner chooses for a
// record with key among partitions partitions: the key's murmur2 hash with
// the sign bit cleared, modulo partitions. It matches the Java client's
// default partitioner and franz-go's StickyKeyPartitioner(nil) for non-nil
// keys. (Both send records with a nil key to a sticky, arbitrary partition
// instead; Partition hashes a nil key like an empty one.) partitions must be
// positive.
func Partition(key []byte, partitions int) int32 {
	if partitions <= 0 {
		panic("operators: Partition with a non-positive number of partitions")
	}
	return int32(int64(murmur2(key)&0x7fffffff) % int64(partitions))
}

// PartitionOf is the partition of u's records when they are keyed by its
// canonical form (lower-case, dashed), as `firstseen produce` and the
// repartitioner key them: Partition of those 36 bytes. It does not allocate.
// Every record of a user is on this partition exactly when producers key by
// the canonical uuid; firstseen keeps each partition's users apart, so a
// record elsewhere is one whose user's state may be split (see
// docs/scaling.md).
func PartitionOf(u *UUID, partitions int) int32 {
	var buf [36]byte
	return Partition(u.AppendCanonical(buf[:0]), partitions)
}
