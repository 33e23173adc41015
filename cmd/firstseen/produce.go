package main

import "github.com/spf13/cobra"

// placeholder: replaced by the real command.
func newProduceCmd() *cobra.Command {
	return &cobra.Command{Use: "produce", Hidden: true}
}
