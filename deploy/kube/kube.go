// Package kube holds weft's Kubernetes manifest (weft.yml) and the patch
// that keeps flannel's DaemonSet off weft's nodes. The manifest is embedded
// so that the lab sets a cluster up with exactly the objects a user
// applies; its tests check it against what weft's binaries and image
// actually accept.
package kube

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
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

// ApplyAgentRBAC creates the manifest's Namespace, ServiceAccount,
// ClusterRole and ClusterRoleBinding: the agents' identity and rights, as
// `kubectl apply -f weft.yml` gives them. The lab and the tests make
// the agents' files and processes themselves. Objects that exist are left
// as they are.
func ApplyAgentRBAC(ctx context.Context, cs kubernetes.Interface) error {
	objs, err := Objects()
	if err != nil {
		return err
	}
	for _, obj := range objs {
		var err error
		switch o := obj.(type) {
		case *corev1.Namespace:
			_, err = cs.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
		case *corev1.ServiceAccount:
			_, err = cs.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			_, err = cs.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		default:
			continue
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("weft.yml %T: %w", obj, err)
		}
	}
	return nil
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
