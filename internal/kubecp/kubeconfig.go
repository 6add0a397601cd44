package kubecp

import (
	"context"
	"fmt"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/weft-net/weft/internal/atomicfile"
)

// clusterName names the cluster in every kubeconfig kubecp writes.
const clusterName = "weft"

// MinTokenTTL is the shortest lifetime the API server grants a token from
// the TokenRequest API.
const MinTokenTTL = 10 * time.Minute

// writeKubeconfig writes a kubeconfig with one cluster (server, trusting
// caPEM), one user and the context joining them, mode 0600: it holds a
// credential.
func writeKubeconfig(path, server string, caPEM []byte, user string, auth *clientcmdapi.AuthInfo) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[clusterName] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = auth
	ctxName := user + "@" + clusterName
	cfg.Contexts[ctxName] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: user}
	cfg.CurrentContext = ctxName
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return atomicfile.Write(path, data, 0o600)
}

// ClientCertKubeconfig writes to path a kubeconfig that authenticates with
// a new client certificate for user in groups, signed by the cluster CA
// (for example "system:node:n1" in "system:nodes", which the Node
// authorizer and NodeRestriction then treat as that node's kubelet).
func (c *ControlPlane) ClientCertKubeconfig(path, user string, groups ...string) error {
	certPEM, keyPEM, err := c.ca.ClientCert(user, groups)
	if err != nil {
		return err
	}
	return writeKubeconfig(path, c.url, c.ca.CertPEM(), user, &clientcmdapi.AuthInfo{
		ClientCertificateData: certPEM,
		ClientKeyData:         keyPEM,
	})
}

// ServiceAccountKubeconfig asks the TokenRequest API for a token of
// ServiceAccount namespace/name valid for ttl (at least MinTokenTTL) and
// writes to path a kubeconfig that uses it: a client with it has exactly
// the RBAC that ServiceAccount has, as an agent running in a pod. The
// ServiceAccount must exist. It returns when the token expires.
func (c *ControlPlane) ServiceAccountKubeconfig(ctx context.Context, namespace, name, path string, ttl time.Duration) (time.Time, error) {
	if ttl < MinTokenTTL {
		return time.Time{}, fmt.Errorf("token for serviceaccount %s/%s: ttl %v is below the API server's minimum %v", namespace, name, ttl, MinTokenTTL)
	}
	cs, err := kubernetes.NewForConfig(c.AdminConfig())
	if err != nil {
		return time.Time{}, fmt.Errorf("token for serviceaccount %s/%s: %w", namespace, name, err)
	}
	secs := int64(ttl / time.Second)
	tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &secs},
	}, metav1.CreateOptions{})
	if err != nil {
		return time.Time{}, fmt.Errorf("token for serviceaccount %s/%s: %w", namespace, name, err)
	}
	user := fmt.Sprintf("system:serviceaccount:%s:%s", namespace, name)
	if err := writeKubeconfig(path, c.url, c.ca.CertPEM(), user, &clientcmdapi.AuthInfo{Token: tr.Status.Token}); err != nil {
		return time.Time{}, err
	}
	return tr.Status.ExpirationTimestamp.Time, nil
}

// RESTConfig reads a kubeconfig written by kubecp (or any other) into a
// client config that dials as the control plane's clients do (through
// Config.DialContext when set).
func (c *ControlPlane) RESTConfig(kubeconfigPath string) (*rest.Config, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfigPath)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfigPath, err)
	}
	if c.cfg.DialContext != nil {
		rc.Dial = c.cfg.DialContext
	}
	return rc, nil
}
