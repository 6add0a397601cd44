package kubestore

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// coreClient is the part of the core/v1 API the store calls, over a REST
// client whose scheme knows core/v1 alone. client-go's Clientset would
// link and register every API group of Kubernetes (some fifty) at start-up:
// in weftd that was ~40 MiB of resident binary pages and heap, in etcd
// mode too, for four calls.
type coreClient struct {
	rc *rest.RESTClient
}

// newCoreClient returns a core/v1 client for cfg, which it does not
// modify. Content types are cfg's (the store asks for protobuf).
func newCoreClient(cfg *rest.Config) (*coreClient, error) {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("core/v1 scheme: %w", err)
	}
	c := rest.CopyConfig(cfg)
	c.APIPath = "/api"
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &coreClient{rc: rc}, nil
}

func (c *coreClient) getNode(ctx context.Context, name string) (*corev1.Node, error) {
	n := &corev1.Node{}
	err := c.rc.Get().Resource("nodes").Name(name).Do(ctx).Into(n)
	return n, err
}

// patchNodeStatus sends a strategic-merge patch to the node's status
// subresource: the only write flannel's ClusterRole grants.
func (c *coreClient) patchNodeStatus(ctx context.Context, name string, patch []byte) error {
	return c.rc.Patch(types.StrategicMergePatchType).Resource("nodes").Name(name).SubResource("status").
		Body(patch).Do(ctx).Error()
}

// readyz asks the API server whether it serves: its /readyz includes
// etcd's health, and the default RBAC (system:public-info-viewer) lets
// every caller read it. It costs the server no object read, which matters
// with thousands of agents asking every few seconds.
func (c *coreClient) readyz(ctx context.Context) error {
	return c.rc.Get().AbsPath("/readyz").Do(ctx).Error()
}

func (c *coreClient) getPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	p := &corev1.Pod{}
	err := c.rc.Get().Namespace(namespace).Resource("pods").Name(name).Do(ctx).Into(p)
	return p, err
}

// nodeListWatch lists and watches every node, as the generated node
// informer does.
func (c *coreClient) nodeListWatch() *cache.ListWatch {
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			l := &corev1.NodeList{}
			err := c.rc.Get().Resource("nodes").VersionedParams(&o, metav1.ParameterCodec).
				Timeout(timeoutOf(o)).Do(ctx).Into(l)
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.Watch = true
			return c.rc.Get().Resource("nodes").VersionedParams(&o, metav1.ParameterCodec).
				Timeout(timeoutOf(o)).Watch(ctx)
		},
	}
}

// timeoutOf is the request timeout the reflector asked for, as the
// generated clients compute it.
func timeoutOf(o metav1.ListOptions) time.Duration {
	if o.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*o.TimeoutSeconds) * time.Second
}
