package doctor

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	authv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weft-net/weft/internal/agentopts"
	"github.com/weft-net/weft/internal/lease/kubestore"
)

// kubeEnvNames are the variables of weftd's environment the Kubernetes
// store reads, kept by scanProcs beside the FLANNELD_* ones.
var kubeEnvNames = []string{"NODE_NAME", "POD_NAME", "POD_NAMESPACE", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}

// The service account's files in a pod, as rest.InClusterConfig reads them.
const (
	saTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	saCAFile    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

// kubeSource is where gatherKube takes the agent's identity from: the
// running weftd (agent, nil when none), else doctor's own environment.
type kubeSource struct {
	agent    *Process
	procRoot string
	getenv   func(string) string
}

func (k kubeSource) env(name string) (string, string) {
	if k.agent != nil {
		for _, kv := range k.agent.KubeEnv {
			if v, ok := strings.CutPrefix(kv, name+"="); ok && v != "" {
				return v, fmt.Sprintf("weftd pid %d's %s", k.agent.PID, name)
			}
		}
		return "", ""
	}
	if v := k.getenv(name); v != "" {
		return v, "doctor's " + name
	}
	return "", ""
}

// restConfig builds the client the agent builds, with its credentials:
// its kubeconfig or --kube-api-url, else its pod's service account, read
// through /proc/<pid>/root when weftd runs in a container (doctor on the
// host), or doctor's own when doctor runs in the pod.
func (k kubeSource) restConfig(o agentopts.Options) (*rest.Config, string, error) {
	switch {
	case o.KubeconfigFile != "":
		cfg, err := kubestore.ClientConfig(o.KubeAPIURL, o.KubeconfigFile)
		return cfg, "kubeconfig " + o.KubeconfigFile, err
	case o.KubeAPIURL != "":
		cfg, err := kubestore.ClientConfig(o.KubeAPIURL, "")
		return cfg, "--kube-api-url (no credentials)", err
	}
	host, _ := k.env("KUBERNETES_SERVICE_HOST")
	port, _ := k.env("KUBERNETES_SERVICE_PORT")
	if k.agent != nil && host != "" && port != "" {
		root := filepath.Join(k.procRoot, strconv.Itoa(k.agent.PID), "root")
		cfg := &rest.Config{
			Host:            "https://" + net.JoinHostPort(host, port),
			BearerTokenFile: filepath.Join(root, saTokenFile),
			TLSClientConfig: rest.TLSClientConfig{CAFile: filepath.Join(root, saCAFile)},
		}
		if _, err := os.Stat(cfg.BearerTokenFile); err != nil {
			return nil, "", fmt.Errorf("weftd pid %d's service account token: %w", k.agent.PID, err)
		}
		return cfg, fmt.Sprintf("weftd pid %d's service account", k.agent.PID), nil
	}
	cfg, err := kubestore.ClientConfig("", "")
	return cfg, "the in-cluster service account", err
}

// gatherKube reads the Kubernetes side with the agent's credentials. It
// only reads (a SelfSubjectAccessReview changes nothing).
func gatherKube(ctx context.Context, o agentopts.Options, src kubeSource, timeout time.Duration) *KubeFacts {
	k := &KubeFacts{ConfigSource: o.NetConfigPath}
	if k.ConfigSource == "" {
		k.ConfigSource = kubestore.DefaultNetConfigPath
	}
	k.Config, k.ConfigErr = os.ReadFile(k.ConfigSource)

	cfg, creds, err := src.restConfig(o)
	k.Credentials = creds
	if err != nil {
		k.Err = err
		return k
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "weft-doctor"
	cfg.Timeout = timeout
	k.Server = cfg.Host
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		k.Err = fmt.Errorf("kubernetes client: %w", err)
		return k
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		k.VersionErr = err
		return k
	}
	k.Version = v.GitVersion

	var viaPod bool
	k.NodeName, k.NodeNameFrom = src.env("NODE_NAME")
	if k.NodeName == "" {
		pod, _ := src.env("POD_NAME")
		podNS, _ := src.env("POD_NAMESPACE")
		viaPod = pod != "" && podNS != ""
		switch {
		case !viaPod && src.agent != nil:
			k.NodeNameErr = fmt.Errorf("weftd pid %d has no NODE_NAME in its environment, nor both POD_NAME and POD_NAMESPACE", src.agent.PID)
		case !viaPod:
			k.NodeNameErr = fmt.Errorf("no weftd here to read NODE_NAME from, and doctor's environment has none (nor both POD_NAME and POD_NAMESPACE)")
		default:
			k.NodeName, k.NodeNameFrom, k.NodeNameErr = nodeOfPod(ctx, cs, podNS, pod)
		}
	}
	k.Access = accessReviews(ctx, cs, neededAccess(viaPod))
	if k.NodeName != "" {
		n, err := cs.CoreV1().Nodes().Get(ctx, k.NodeName, metav1.GetOptions{})
		if err != nil {
			k.NodeErr = err
		} else {
			k.Node = n
		}
	}
	// The lease set: one list, as the agent's informer starts with.
	list, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		k.NodesErr = err
	} else {
		k.Nodes = list.Items
	}
	return k
}

func nodeOfPod(ctx context.Context, cs kubernetes.Interface, ns, name string) (string, string, error) {
	p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", "", fmt.Errorf("get pod %s/%s to learn the node name: %w", ns, name, err)
	}
	if p.Spec.NodeName == "" {
		return "", "", fmt.Errorf("pod %s/%s has no spec.nodeName", ns, name)
	}
	return p.Spec.NodeName, fmt.Sprintf("pod %s/%s's spec.nodeName", ns, name), nil
}

func accessReviews(ctx context.Context, cs kubernetes.Interface, want []Access) []Access {
	out := make([]Access, 0, len(want))
	for _, a := range want {
		r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authv1.SelfSubjectAccessReview{
			Spec: authv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authv1.ResourceAttributes{
				Verb: a.Verb, Resource: a.Resource, Subresource: a.Subresource,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			a.Err = err
		} else {
			a.Allowed, a.Reason = r.Status.Allowed, r.Status.Reason
			if a.Reason == "" {
				a.Reason = r.Status.EvaluationError
			}
		}
		out = append(out, a)
	}
	return out
}
