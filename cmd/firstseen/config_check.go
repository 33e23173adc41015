package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// newConfigCmd is 'firstseen config', the parent of 'config check'.
func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Check the configuration of 'firstseen run'",
		Args:  noArgs,
	}
	cmd.AddCommand(newConfigCheckCmd())
	return cmd
}

// newConfigCheckCmd is 'firstseen config check'.
func newConfigCheckCmd() *cobra.Command {
	var (
		o       runOptions
		sourced []string // problems of the variables and the config file
	)
	cmd := &cobra.Command{
		Use:   "check [--config FILE] [run's flags]",
		Short: "Check the configuration 'firstseen run' would use, offline, and print it",
		Long: `config check takes run's flags, FIRSTSEEN_* variables and config file (--config
or FIRSTSEEN_CONFIG) as run would, checks them all without connecting to
Kafka or ClickHouse, and prints the effective configuration as YAML: every
flag of run with its value and where the value came from (flag, env, file or
default). It reads the files the flags name (TLS certificates and keys,
password files), so an unreadable one is reported. Passwords are never
printed: only whether one is set, and from where.

It reports every problem, not only the first. Exit status: 0 when the
configuration is valid, 2 (with the list of problems on standard error) when
it is not.`,
		Example: `  firstseen config check --config /etc/firstseen/firstseen.yaml
  FIRSTSEEN_CONFIG=firstseen.yaml firstseen config check --topic activity-test`,
		Args:        noArgs,
		Annotations: map[string]string{configForAnnotation: "firstseen run"},
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			sourced = applySources(cmd)
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, problems := o.validate()
			problems = append(sourced, problems...)
			printEffective(cmd.OutOrStdout(), cmd.Flags(), &o.f.sec)
			for _, w := range o.warnings() {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			if err := problemsError(problems); err != nil {
				return err
			}
			fmt.Fprintln(cmd.ErrOrStderr(), "the configuration is valid")
			return nil
		},
	}
	o.addFlags(cmd.Flags())
	return cmd
}

// printEffective writes every visible flag of fs as YAML, with its source
// as a comment, and whether the passwords are set.
func printEffective(w io.Writer, fs *pflag.FlagSet, sec *securityFlags) {
	type line struct{ kv, source string }
	var lines []line
	width := 0
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden || f.Name == "help" {
			return
		}
		kv := yamlPair(f)
		source := sourceOf(f)
		if source == sourceEnv {
			source += " " + envName(f.Name)
		}
		lines = append(lines, line{kv, source})
		width = max(width, len(kv))
	})
	fmt.Fprintln(w, "# the effective configuration of 'firstseen run'; after each value, where it came from")
	for _, l := range lines {
		fmt.Fprintf(w, "%-*s  # %s\n", width, l.kv, l.source)
	}
	fmt.Fprintln(w, "# passwords, never shown:")
	fmt.Fprintf(w, "#   kafka: %s\n", passwordState(sec.kafkaPassword, sec.saslMechanism != ""))
	fmt.Fprintf(w, "#   clickhouse: %s\n", passwordState(sec.chPassword, true))
}

// yamlPair is a flag as a one-line YAML mapping entry; a secret's value is
// masked.
func yamlPair(f *pflag.Flag) string {
	v := f.Value.String()
	if isSecret(f.Name) && v != "" {
		v = "***"
	}
	val := &yaml.Node{Kind: yaml.ScalarNode, Value: v}
	switch f.Value.Type() {
	case "bool", "int", "int64", "uint", "uint64", "float64":
	default:
		val.Tag = "!!str"
	}
	b, err := yaml.Marshal(&yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{{Kind: yaml.ScalarNode, Value: f.Name}, val}})
	if err != nil {
		return f.Name + ": " + fmt.Sprintf("%q", v)
	}
	return strings.TrimRight(string(b), "\n")
}

// passwordState says whether a password is set and where from.
func passwordState(s secret, used bool) string {
	switch {
	case s.from == "":
		return "not set"
	case !used:
		return "set (" + s.from + "), but unused without --kafka-sasl-mechanism"
	}
	return "set, from " + s.from
}
