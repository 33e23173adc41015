package main

import "github.com/spf13/cobra"

// placeholder: replaced by the real command.
func newGenerateCmd() *cobra.Command {
	return &cobra.Command{Use: "generate", Hidden: true}
}
