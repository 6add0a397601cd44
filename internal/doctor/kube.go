package doctor

import (
	corev1 "k8s.io/api/core/v1"
)

// KubeFacts are what the Kubernetes API shows the agent's credentials
// (--kube-subnet-mgr): the API server, this node's Node object, every
// node (the lease set), and what the agent may do.
type KubeFacts struct {
	// Server is the API server the credentials name; Credentials says
	// where they came from (a kubeconfig, --kube-api-url, a service
	// account). Err is set when no client could be built.
	Server      string
	Credentials string
	Err         error
	// Version is the API server's (GET /version); VersionErr when it did
	// not answer.
	Version    string
	VersionErr error

	// NodeName is this node's name and NodeNameFrom where it was read
	// (weftd's NODE_NAME, or its pod's spec.nodeName); NodeNameErr when
	// neither tells.
	NodeName     string
	NodeNameFrom string
	NodeNameErr  error
	// Node is this node's Node object (GET, as the agent's nodes get).
	Node    *corev1.Node
	NodeErr error
	// Nodes are every Node (LIST); NodesErr when the list failed.
	Nodes    []corev1.Node
	NodesErr error

	// Access are the agent's rights, each asked with a
	// SelfSubjectAccessReview.
	Access []Access

	// The net-conf.json (--net-config-path).
	ConfigSource string
	Config       []byte
	ConfigErr    error
}

// Access is one SelfSubjectAccessReview's answer.
type Access struct {
	Verb, Resource, Subresource string
	Allowed                     bool
	Reason                      string // the authorizer's, when given
	Err                         error  // the review could not be made
}

// Permission is the access in RBAC's words: "nodes/status patch".
func (a Access) Permission() string {
	r := a.Resource
	if a.Subresource != "" {
		r += "/" + a.Subresource
	}
	return r + " " + a.Verb
}

// neededAccess is what weftd's Kubernetes store does with its
// ClusterRole: watch nodes (get, list, watch) and patch its own node's
// annotations and NetworkUnavailable condition (nodes/status patch); pods
// get only when it learns its node from its pod (no NODE_NAME).
func neededAccess(viaPod bool) []Access {
	a := []Access{
		{Verb: "get", Resource: "nodes"},
		{Verb: "list", Resource: "nodes"},
		{Verb: "watch", Resource: "nodes"},
		{Verb: "patch", Resource: "nodes", Subresource: "status"},
	}
	if viaPod {
		a = append(a, Access{Verb: "get", Resource: "pods"})
	}
	return a
}
