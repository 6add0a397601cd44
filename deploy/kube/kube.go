// Package kube holds weft's Kubernetes manifest (weft.yml) and the patch
// that keeps flannel's DaemonSet off weft's nodes. The manifest is embedded
// so that the lab sets a cluster up with exactly the objects a user
// applies; its tests check it against what weft's binaries and image
// actually accept.
package kube

import (
	"bufio"
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

// Manifest is deploy/kube/weft.yml.
//
//go:embed weft.yml
var Manifest []byte

// The agent's identity in the manifest.
const (
	Namespace      = "kube-weft"
	ServiceAccount = "weft"
)

// Objects decodes every object of the manifest, in its order, into the
// typed objects of client-go's scheme, strictly.
func Objects() ([]runtime.Object, error) { return decode(Manifest) }

func decode(manifest []byte) ([]runtime.Object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	// Strict: a misspelt field is an error, not a silently dropped one.
	dec := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	var out []runtime.Object
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("weft.yml document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, _, err := dec.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("weft.yml document %d: %w", i, err)
		}
		out = append(out, obj)
	}
}

// stripComments drops whole-line comments, so that a document of comments
// only is recognised as empty.
func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for line := range bytes.Lines(doc) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] == '#' {
			continue
		}
		b.Write(line)
	}
	return b.Bytes()
}
