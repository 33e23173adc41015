package validate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// A KubeRelease is a Kubernetes release whose API the manifests are
// validated against. Its OpenAPI spec comes from the module zip of
// k8s.io/kubernetes at that version (api/openapi-spec/swagger.json), fetched
// with `go mod download` through the Go module proxy, checked by the
// checksum database and by Sum below, and kept in the module cache.
type KubeRelease struct {
	Version string // a tag of k8s.io/kubernetes, such as v1.30.14
	Sum     string // the module zip's go.sum hash (h1:...)
}

// KubeReleases are the oldest Kubernetes release the manifests support and
// a recent one: a field must exist in both to pass.
var KubeReleases = []KubeRelease{
	{Version: "v1.30.14", Sum: "h1:MrlKXh9uhLIJpyxOeXhcndzRVSvwiV9iJ8NgH8nqPsg="},
	{Version: "v1.37.2", Sum: "h1:A2VDEiObzkYqFTKhSsn0ZEb0RlLEXpHWj93gi2HqEwE="},
}

// OpenAPISpec returns the Swagger 2.0 spec of the release's API.
func (r KubeRelease) OpenAPISpec() ([]byte, error) {
	// Outside any module and workspace, so that neither this module's
	// go.mod nor GOFLAGS such as -mod=vendor get in the way.
	dir, err := os.MkdirTemp("", "kube-openapi-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cmd := exec.Command("go", "mod", "download", "-json", "k8s.io/kubernetes@"+r.Version)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GO111MODULE=on", "GOWORK=off", "GOFLAGS=")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, runErr := cmd.Output()
	var mod struct{ Dir, Sum, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || runErr != nil || mod.Error != "" {
		return nil, fmt.Errorf("go mod download k8s.io/kubernetes@%s: %v %s %s", r.Version, runErr, mod.Error, stderr.String())
	}
	if mod.Sum != r.Sum {
		return nil, fmt.Errorf("k8s.io/kubernetes@%s has hash %s, want %s", r.Version, mod.Sum, r.Sum)
	}
	return os.ReadFile(filepath.Join(mod.Dir, "api", "openapi-spec", "swagger.json"))
}

// SchemaLocation is the kubeconform schema location of the schemas that
// WriteSchemas writes under root: the layout of yannh/kubernetes-json-schema,
// which is also what the kubeconform command assumes for `-schema-location
// root`.
func SchemaLocation(root string) string {
	return filepath.Join(root, "{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}", "{{ .ResourceKind }}{{ .KindSuffix }}.json")
}

// WriteSchemas writes, under root, one strict, self-contained JSON schema
// for every kind of the release's API, the way openapi2jsonschema
// --kubernetes --strict --stand-alone makes kubeconform's default schemas:
//
//   - every object schema that lists its properties gets
//     additionalProperties: false, so an unknown (say, misspelled) field is
//     an error, as the API server's strict field validation makes it;
//   - an int-or-string field accepts a string or an integer, and a
//     resource quantity a string or a number, as the API server does;
//   - the definitions a kind refers to are copied into its file, so that it
//     needs no other file.
func (r KubeRelease) WriteSchemas(root string) error {
	raw, err := r.OpenAPISpec()
	if err != nil {
		return err
	}
	var spec struct {
		Definitions map[string]any `json:"definitions"`
	}
	if err := json.Unmarshal(raw, &spec); err != nil {
		return fmt.Errorf("swagger.json of %s: %v", r.Version, err)
	}
	if len(spec.Definitions) == 0 {
		return errors.New("swagger.json of " + r.Version + " has no definitions")
	}
	defs := make(map[string]any, len(spec.Definitions))
	for name, d := range spec.Definitions {
		defs[name] = strictSchema(name, d)
	}

	dir := filepath.Join(root, r.Version+"-standalone-strict")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	names := make([]string, 0, len(defs))
	for name := range defs {
		names = append(names, name)
	}
	sort.Strings(names) // io.k8s.api.* before io.k8s.apimachinery.*: the API's own kinds win a clash
	written := map[string]bool{}
	for _, name := range names {
		gvks, _ := spec.Definitions[name].(map[string]any)["x-kubernetes-group-version-kind"].([]any)
		for _, g := range gvks {
			gvk, _ := g.(map[string]any)
			group, _ := gvk["group"].(string)
			version, _ := gvk["version"].(string)
			kind, _ := gvk["kind"].(string)
			file := filepath.Join(dir, fileName(group, version, kind))
			if kind == "" || written[file] {
				continue
			}
			written[file] = true
			apiVersion := version
			if group != "" {
				apiVersion = group + "/" + version
			}
			doc, err := standalone(name, defs, apiVersion, kind)
			if err != nil {
				return err
			}
			if err := os.WriteFile(file, doc, 0o644); err != nil {
				return err
			}
		}
	}
	if len(written) == 0 {
		return errors.New("swagger.json of " + r.Version + " names no kinds")
	}
	return nil
}

// fileName is kubeconform's file name for a kind: {{ .ResourceKind }}{{
// .KindSuffix }}.json, such as statefulset-apps-v1.json or service-v1.json.
func fileName(group, version, kind string) string {
	suffix := "-" + strings.ToLower(version)
	if group != "" {
		suffix = "-" + strings.ToLower(strings.Split(group, ".")[0]) + suffix
	}
	return strings.ToLower(kind) + suffix + ".json"
}

// standalone is the schema of definition name with the definitions it
// refers to inlined, as in kubeconform's "standalone" schemas (so that a
// validation error names the offending field, not the $ref above it), and
// apiVersion and kind pinned. A definition that refers to itself (only
// CustomResourceDefinition's JSONSchemaProps does) stays a $ref, into a
// "definitions" section of the file.
func standalone(name string, defs map[string]any, apiVersion, kind string) ([]byte, error) {
	cyclic := map[string]bool{}
	var inline func(n any, stack []string) any
	inline = func(n any, stack []string) any {
		switch n := n.(type) {
		case map[string]any:
			if ref, ok := n["$ref"].(string); ok {
				target := strings.TrimPrefix(ref, "#/definitions/")
				d, ok := defs[target]
				if !ok {
					return n // the validator reports the dangling $ref
				}
				for _, s := range stack {
					if s == target {
						cyclic[target] = true
						return n
					}
				}
				return inline(d, append(stack, target))
			}
			out := make(map[string]any, len(n))
			for k, v := range n {
				out[k] = inline(v, stack)
			}
			return out
		case []any:
			out := make([]any, len(n))
			for i, v := range n {
				out[i] = inline(v, stack)
			}
			return out
		}
		return n
	}
	top := inline(defs[name], []string{name}).(map[string]any)
	if props, ok := top["properties"].(map[string]any); ok {
		props["apiVersion"] = map[string]any{"type": "string", "enum": []any{apiVersion}}
		props["kind"] = map[string]any{"type": "string", "enum": []any{kind}}
	}
	if len(cyclic) > 0 {
		// The definitions the cyclic ones reach, as they are ($refs kept).
		reached := map[string]any{}
		var reach func(n any)
		reach = func(n any) {
			switch n := n.(type) {
			case map[string]any:
				for k, v := range n {
					if ref, ok := v.(string); k == "$ref" && ok {
						target := strings.TrimPrefix(ref, "#/definitions/")
						if _, seen := reached[target]; !seen && defs[target] != nil {
							reached[target] = defs[target]
							reach(defs[target])
						}
						continue
					}
					reach(v)
				}
			case []any:
				for _, v := range n {
					reach(v)
				}
			}
		}
		for c := range cyclic {
			reached[c] = defs[c]
			reach(defs[c])
		}
		top["definitions"] = reached
	}
	return json.Marshal(top)
}

// strictSchema rewrites one OpenAPI schema (a Swagger definition or a part
// of one) as a strict JSON schema; see WriteSchemas.
func strictSchema(name string, node any) any {
	switch name {
	case "io.k8s.apimachinery.pkg.api.resource.Quantity":
		return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "number"}}}
	}
	return strictNode(node)
}

func strictNode(node any) any {
	switch n := node.(type) {
	case map[string]any:
		if f, _ := n["format"].(string); f == "int-or-string" {
			return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}}
		}
		out := make(map[string]any, len(n)+1)
		for k, v := range n {
			switch {
			case k == "description" || strings.HasPrefix(k, "x-"):
				// Documentation and Kubernetes extensions: not JSON Schema.
			case k == "properties":
				props, _ := v.(map[string]any)
				p := make(map[string]any, len(props))
				for prop, s := range props { // property names are not keywords
					p[prop] = strictNode(s)
				}
				out[k] = p
			default:
				out[k] = strictNode(v)
			}
		}
		_, hasProps := n["properties"]
		_, hasAdditional := n["additionalProperties"]
		preserve, _ := n["x-kubernetes-preserve-unknown-fields"].(bool)
		if hasProps && !hasAdditional && !preserve {
			out["additionalProperties"] = false
		}
		return out
	case []any:
		out := make([]any, len(n))
		for i, v := range n {
			out[i] = strictNode(v)
		}
		return out
	default:
		return node
	}
}
