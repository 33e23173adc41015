package main

import "github.com/spf13/cobra"

// placeholder: replaced by the real command.
func newBootstrapCmd() *cobra.Command {
	return &cobra.Command{Use: "bootstrap", Hidden: true}
}
