package main

import "github.com/spf13/cobra"

// placeholder: replaced by the real command.
func newStateCmd() *cobra.Command {
	return &cobra.Command{Use: "state", Hidden: true}
}
