package workload

import "github.com/firstseen/firstseen/operators"

// Partition is operators.Partition: the partition Kafka's default
// partitioner chooses for key.
func Partition(key []byte, partitions int) int32 { return operators.Partition(key, partitions) }
