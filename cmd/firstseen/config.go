package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	// go.yaml.in/yaml/v3: the YAML project's own continuation of
	// gopkg.in/yaml.v3, the most used Go YAML parser; its yaml.Node keeps
	// line numbers for the errors, and we need no struct mapping: pflag
	// parses and validates every value, as it does on the command line.
	"go.yaml.in/yaml/v3"
)

// Where a flag's value came from, in order of precedence.
const (
	sourceFlag    = "flag"
	sourceEnv     = "env"
	sourceFile    = "file"
	sourceDefault = "default"
)

// sourceAnnotation is the flag annotation that records its source.
const sourceAnnotation = "firstseen-source"

// setSource records where a flag's value came from.
func setSource(f *pflag.Flag, source string) {
	if f.Annotations == nil {
		f.Annotations = map[string][]string{}
	}
	f.Annotations[sourceAnnotation] = []string{source}
}

// sourceOf says where a flag's value came from.
func sourceOf(f *pflag.Flag) string {
	if s := f.Annotations[sourceAnnotation]; len(s) == 1 {
		return s[0]
	}
	if f.Changed {
		return sourceFlag
	}
	return sourceDefault
}

// addConfigFlag registers --config.
func addConfigFlag(fs *pflag.FlagSet) {
	fs.String("config", "", "YAML file of settings, keyed by flag name (like 'clickhouse-addr: ch:9000'); flags and "+
		envPrefix+"* variables win over it; also "+envName("config"))
}

// applySources completes a command's flags, those given on the command
// line first, then from FIRSTSEEN_* variables, then from the config file
// (--config or FIRSTSEEN_CONFIG), and returns every problem found.
func applySources(cmd *cobra.Command) []string {
	fs := cmd.Flags()
	fs.Visit(func(f *pflag.Flag) { setSource(f, sourceFlag) })
	problems := applyEnv(fs)
	if cf := fs.Lookup("config"); cf != nil && cf.Value.String() != "" {
		problems = append(problems, applyConfigFile(cmd, cf.Value.String())...)
	}
	return problems
}

// applyConfigFile sets the flags not set yet from the YAML mapping in
// file, and returns every problem, each naming the file, line and key.
func applyConfigFile(cmd *cobra.Command, file string) []string {
	b, err := os.ReadFile(file)
	if err != nil {
		return []string{fmt.Sprintf("--config: %v", err)}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return []string{fmt.Sprintf("config file %s: %v", file, err)}
	}
	if len(doc.Content) == 0 {
		return nil // empty
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return []string{fmt.Sprintf("config file %s:%d: want a mapping of flag names to values, like 'topic: activity'", file, root.Line)}
	}
	var problems []string
	for i := 0; i+1 < len(root.Content); i += 2 {
		if p := applyConfigKey(cmd, file, root.Content[i], root.Content[i+1]); p != "" {
			problems = append(problems, p)
		}
	}
	return problems
}

// applyConfigKey sets the flag of one key of the config file unless a
// flag or a variable set it already; it returns the problem, or "".
func applyConfigKey(cmd *cobra.Command, file string, k, v *yaml.Node) string {
	where := fmt.Sprintf("config file %s:%d", file, k.Line)
	fs := cmd.Flags()
	name := k.Value
	fl := fs.Lookup(name)
	switch {
	case k.Kind != yaml.ScalarNode:
		return where + ": a key must be a flag name"
	case name == "config":
		return where + ": config: a config file cannot name another one"
	case fl == nil:
		return where + ": " + unknownKey(cmd, name)
	}
	if _, refused := fl.Value.(*refusedPassword); refused {
		return fmt.Sprintf("%s: %s: passwords are not read from the config file: set %s, or name a file holding it with %s-file",
			where, name, envName(name), name)
	}
	val, err := configValue(v)
	if err != nil {
		return fmt.Sprintf("%s: %s: %v", where, name, err)
	}
	if fl.Changed {
		return "" // a flag or a variable wins
	}
	if err := setFlag(fs, fl, val); err != nil {
		return fmt.Sprintf("%s: %s: %v", where, name, maskValue(name, val, err))
	}
	setSource(fl, sourceFile)
	return ""
}

// setFlag sets a flag as the command line would; when the value is
// refused, the flag keeps its value (pflag may have zeroed it).
func setFlag(fs *pflag.FlagSet, fl *pflag.Flag, val string) error {
	old := fl.Value.String()
	err := fs.Set(fl.Name, val)
	if err != nil {
		_ = fl.Value.Set(old)
		fl.Changed = false
	}
	return err
}

// configValue is the text a value of the config file gives its flag: a
// scalar as written, a list of scalars joined by commas (for --brokers and
// --clickhouse-addr).
func configValue(v *yaml.Node) (string, error) {
	if v.Kind == yaml.AliasNode {
		v = v.Alias
	}
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Tag == "!!null" {
			return "", fmt.Errorf(`has no value (write "" for an empty one)`)
		}
		return v.Value, nil
	case yaml.SequenceNode:
		var items []string
		for _, it := range v.Content {
			if it.Kind != yaml.ScalarNode {
				return "", fmt.Errorf("a list may hold only plain values")
			}
			items = append(items, it.Value)
		}
		return strings.Join(items, ","), nil
	}
	return "", fmt.Errorf("want a value or a list of values, not a mapping")
}

// unknownKey explains a key that is not a flag of cmd: a flag of another
// command, or a misspelling of one of cmd's.
func unknownKey(cmd *cobra.Command, name string) string {
	self := configCommand(cmd)
	if owners := flagOwners(cmd.Root(), name); len(owners) > 0 {
		return fmt.Sprintf("%s is a flag of %s, not of %s: remove it from this command's config file", name, strings.Join(owners, ", "), self)
	}
	msg := fmt.Sprintf("unknown key %q: not a flag of %s", name, self)
	if s := closestFlag(cmd.Flags(), name); s != "" {
		msg += fmt.Sprintf(" (did you mean %s?)", s)
	}
	return msg
}

// configForAnnotation names the command whose configuration a command
// reads (config check reads run's).
const configForAnnotation = "firstseen-config-for"

// configCommand is the command whose flags the config file of cmd sets.
func configCommand(cmd *cobra.Command) string {
	if c := cmd.Annotations[configForAnnotation]; c != "" {
		return c
	}
	return cmd.CommandPath()
}

// flagOwners returns the paths of the commands under root that show the
// flag (config check, which shows run's, aside).
func flagOwners(root *cobra.Command, name string) []string {
	var owners []string
	if f := root.Flags().Lookup(name); f != nil && !f.Hidden && root.Annotations[configForAnnotation] == "" {
		owners = append(owners, root.CommandPath())
	}
	for _, c := range root.Commands() {
		owners = append(owners, flagOwners(c, name)...)
	}
	return owners
}

// closestFlag returns the visible flag of fs closest to name, if one is
// close enough to be a misspelling.
func closestFlag(fs *pflag.FlagSet, name string) string {
	norm := strings.ToLower(strings.NewReplacer("_", "-", "--", "").Replace(name))
	best, bestDist := "", max(2, len(norm)/4)+1
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		if d := editDistance(norm, f.Name); d < bestDist {
			best, bestDist = f.Name, d
		}
	})
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
