package validate

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/yannh/kubeconform/pkg/validator"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// An Object is one rendered Kubernetes object, as decoded YAML.
type Object = map[string]any

// Render builds the kustomization in dir as `kubectl apply -k dir` would,
// and returns the YAML stream and its objects.
func Render(dir string) ([]byte, []Object, error) {
	opts := krusty.MakeDefaultOptions()
	opts.Reorder = krusty.ReorderOptionLegacy // kubectl's order: Namespaces first, then ConfigMaps, Secrets, ...
	k := krusty.MakeKustomizer(opts)
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		return nil, nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	var objs []Object
	for _, r := range m.Resources() {
		o, err := r.Map()
		if err != nil {
			return nil, nil, fmt.Errorf("kustomize build %s: %s: %w", dir, r.CurId(), err)
		}
		objs = append(objs, o)
	}
	return out, objs, nil
}

// A KubeValidator validates objects against the strict schemas of one
// Kubernetes release, written by WriteSchemas under a root directory.
type KubeValidator struct {
	release string
	v       validator.Validator
}

// NewKubeValidator returns a kubeconform validator that reads the schemas
// of release from root, in strict mode (duplicate keys are errors too), and
// that treats a kind without a schema as an error.
func NewKubeValidator(root string, release KubeRelease) (*KubeValidator, error) {
	v, err := validator.New([]string{SchemaLocation(root)}, validator.Opts{
		KubernetesVersion:    strings.TrimPrefix(release.Version, "v"),
		Strict:               true,
		IgnoreMissingSchemas: false,
	})
	if err != nil {
		return nil, err
	}
	return &KubeValidator{release: release.Version, v: v}, nil
}

// Validate validates every object of a YAML stream and returns a line per
// problem, naming the object, the field and the release; none if all are
// valid.
func (kv *KubeValidator) Validate(name string, stream []byte) []string {
	var problems []string
	for _, res := range kv.v.Validate(name, io.NopCloser(bytes.NewReader(stream))) {
		what := "an object"
		if sig, err := res.Resource.Signature(); err == nil && sig != nil {
			what = fmt.Sprintf("%s %s/%s", sig.Version, sig.Kind, sig.Name)
		}
		switch res.Status {
		case validator.Valid, validator.Empty:
		case validator.Invalid:
			for _, ve := range res.ValidationErrors {
				path := ve.Path
				if path == "" {
					path = "/"
				}
				problems = append(problems, fmt.Sprintf("%s: %s: %s: %s (Kubernetes %s schema)", name, what, path, ve.Msg, kv.release))
			}
			if len(res.ValidationErrors) == 0 {
				problems = append(problems, fmt.Sprintf("%s: %s: %v (Kubernetes %s schema)", name, what, res.Err, kv.release))
			}
		default: // Error, Skipped: no schema for the kind, unparsable YAML
			problems = append(problems, fmt.Sprintf("%s: %s: %v (Kubernetes %s)", name, what, res.Err, kv.release))
		}
	}
	return problems
}
