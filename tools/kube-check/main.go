// kube-check decodes Kubernetes manifests strictly into the k8s.io/api types, as the API server
// does (sigs.k8s.io/json, case-sensitive): an unknown or misspelt field, a field in the wrong case,
// a duplicate key or a value of the wrong type fails. It prints the decoded objects as one JSON array, so that checks run on what
// Kubernetes reads rather than on the YAML text.
//
//	kube-check deploy/k8s/*.yaml
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// The kinds the deployment uses, by apiVersion and kind.
func newObject(apiVersion, kind string) (any, bool) {
	switch apiVersion + "/" + kind {
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, true
	case "v1/Service":
		return &corev1.Service{}, true
	case "v1/Secret":
		return &corev1.Secret{}, true
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, true
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	}
	return nil, false
}

var separator = regexp.MustCompile(`(?m)^---\s*$`)

func decode(path string) ([]any, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var objects []any
	for i, document := range separator.Split(string(text), -1) {
		var kind typeMeta
		if err := yaml.Unmarshal([]byte(document), &kind); err != nil {
			return nil, fmt.Errorf("%s, document %d: %w", path, i+1, err)
		}
		if kind == (typeMeta{}) && isEmpty(document) {
			continue // comments only
		}
		object, known := newObject(kind.APIVersion, kind.Kind)
		if !known {
			return nil, fmt.Errorf("%s, document %d: unsupported kind %q %q", path, i+1, kind.APIVersion, kind.Kind)
		}
		if err := decodeStrictly(document, object); err != nil {
			return nil, fmt.Errorf("%s, document %d (%s): %w", path, i+1, kind.Kind, err)
		}
		objects = append(objects, object)
	}
	return objects, nil
}

func decodeStrictly(document string, object any) error {
	data, err := yaml.YAMLToJSONStrict([]byte(document))
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(data, object)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

func isEmpty(document string) bool {
	var fields map[string]any
	return yaml.Unmarshal([]byte(document), &fields) == nil && len(fields) == 0
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kube-check FILE.yaml...")
		os.Exit(2)
	}
	objects := []any{}
	for _, path := range os.Args[1:] {
		decoded, err := decode(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kube-check:", err)
			os.Exit(1)
		}
		objects = append(objects, decoded...)
	}
	out, err := json.Marshal(objects)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-check:", err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}
