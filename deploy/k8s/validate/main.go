// Command validate decodes K2's Kubernetes manifests into the real Kubernetes API types,
// strictly (an unknown or misspelt field is an error), and loads docker-compose.yml with
// compose-go, which checks it against the Compose specification's JSON schema.
//
//	go run ./deploy/k8s/validate -compose docker-compose.yml deploy/k8s/*.yaml
//
// It prints one line per object it accepted and exits 1 at the first one it does not.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// kustomization is the part of kustomize's Kustomization K2 uses (no Go types of it here).
type kustomization struct {
	metav1.TypeMeta `json:",inline"`
	Resources       []string `json:"resources"`
}

func decode(kind string) (any, error) {
	switch kind {
	case "Deployment":
		return &appsv1.Deployment{}, nil
	case "Service":
		return &corev1.Service{}, nil
	case "ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "Secret":
		return &corev1.Secret{}, nil
	case "PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "Job":
		return &batchv1.Job{}, nil
	case "Kustomization":
		return &kustomization{}, nil
	}
	return nil, fmt.Errorf("no type for kind %q", kind)
}

func validateManifest(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for i, doc := range bytes.Split(data, []byte("\n---")) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			return fmt.Errorf("%s, document %d: %w", path, i+1, err)
		}
		obj, err := decode(meta.Kind)
		if err != nil {
			return fmt.Errorf("%s, document %d: %w", path, i+1, err)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return fmt.Errorf("%s, document %d (%s): %w", path, i+1, meta.Kind, err)
		}
		if m, ok := obj.(metav1.Object); ok {
			fmt.Printf("ok %s %s/%s\n", path, meta.Kind, m.GetName())
		} else {
			fmt.Printf("ok %s %s\n", path, meta.Kind)
		}
	}
	return nil
}

func validateCompose(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	details := types.ConfigDetails{
		WorkingDir:  filepath.Dir(abs),
		ConfigFiles: []types.ConfigFile{{Filename: abs, Content: data}},
		Environment: types.Mapping{},
	}
	project, err := loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName("k2", true)
		o.SkipResolveEnvironment = true
	})
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fmt.Printf("ok %s compose project %s: %s\n", path, project.Name, strings.Join(project.ServiceNames(), ", "))
	return nil
}

func main() {
	compose := flag.String("compose", "", "a docker-compose.yml to check against the Compose specification")
	flag.Parse()
	if *compose != "" {
		if err := validateCompose(*compose); err != nil {
			fmt.Fprintln(os.Stderr, "invalid:", err)
			os.Exit(1)
		}
	}
	for _, path := range flag.Args() {
		if err := validateManifest(path); err != nil {
			fmt.Fprintln(os.Stderr, "invalid:", err)
			os.Exit(1)
		}
	}
}
