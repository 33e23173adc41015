package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kfake"
)

func newDevBrokerCmd() *cobra.Command {
	var (
		port       int
		dataDir    string
		topics     []string
		partitions int
		syncWrites bool
	)
	cmd := &cobra.Command{
		Use:   "dev-broker",
		Short: "Run a single-node Kafka-protocol broker (franz-go's kfake) for development, tests and benchmarks",
		Long: `dev-broker serves the Kafka wire protocol on 127.0.0.1 from a single process,
with franz-go's kfake. It is for development, the crash tests and the
benchmark, where the broker must be a separate process that can be killed
and restarted: with --data-dir its topics and committed offsets survive a
restart. It is not a production Kafka.`,
		Args:    noArgs,
		PreRunE: preRun,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if port <= 0 || port > 65535 {
				return usageError{fmt.Errorf("--port %d: want 1-65535", port)}
			}
			if partitions <= 0 {
				return usageError{fmt.Errorf("--partitions %d: want at least 1", partitions)}
			}
			opts := []kfake.Opt{kfake.NumBrokers(1), kfake.Ports(port), kfake.DefaultNumPartitions(partitions),
				kfake.AllowAutoTopicCreation()}
			if len(topics) > 0 {
				opts = append(opts, kfake.SeedTopics(int32(partitions), topics...))
			}
			if dataDir != "" {
				opts = append(opts, kfake.DataDir(dataDir))
			}
			if syncWrites {
				opts = append(opts, kfake.SyncWrites())
			}
			c, err := kfake.NewCluster(opts...)
			if err != nil {
				return fmt.Errorf("start the broker on port %d: %w", port, err)
			}
			defer c.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "listening on %s\n", c.ListenAddrs()[0])
			ch := make(chan os.Signal, 1)
			signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
			s := <-ch
			slog.Info("stopping the broker", "signal", s.String())
			return nil
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&port, "port", 9092, "port to listen on, on 127.0.0.1")
	fs.StringVar(&dataDir, "data-dir", "", "directory that keeps topics and offsets across restarts (default: in memory)")
	fs.StringSliceVar(&topics, "topic", nil, "topic to create at start (repeatable)")
	fs.IntVar(&partitions, "partitions", 4, "partitions of the created and auto-created topics")
	fs.BoolVar(&syncWrites, "sync-writes", false, "fsync every write to --data-dir (slower; survives machine crashes)")
	return cmd
}
