package kubestore

import (
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/internal/lease/kubeannot"
)

func TestPodCIDRs(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tt := range []struct {
		spec   corev1.NodeSpec
		v4, v6 netip.Prefix
		err    string
	}{
		{spec: corev1.NodeSpec{}},
		{spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24"}, v4: p("10.244.1.0/24")},
		{spec: corev1.NodeSpec{PodCIDR: "fd00:0:0:1::/64"}, v6: p("fd00:0:0:1::/64")},
		{spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00:0:0:1::/64"}},
			v4: p("10.244.1.0/24"), v6: p("fd00:0:0:1::/64")},
		{spec: corev1.NodeSpec{PodCIDRs: []string{"fd00:0:0:1::/64", "10.244.1.0/24"}}, v4: p("10.244.1.0/24"), v6: p("fd00:0:0:1::/64")},
		// Host bits are dropped, as net.ParseCIDR does.
		{spec: corev1.NodeSpec{PodCIDR: "10.244.1.7/24"}, v4: p("10.244.1.0/24")},
		{spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24", "fd00::/64", "10.244.2.0/24"}}, err: "more than one"},
		{spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24", "10.244.2.0/24"}}, err: "two IPv4"},
		{spec: corev1.NodeSpec{PodCIDRs: []string{"fd00:1::/64", "fd00:2::/64"}}, err: "two IPv6"},
		{spec: corev1.NodeSpec{PodCIDR: "banana"}, err: `"banana"`},
	} {
		v4, v6, err := podCIDRs(tt.spec)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%+v: err %v, want %q", tt.spec, err, tt.err)
			}
			continue
		}
		if err != nil || v4 != tt.v4 || v6 != tt.v6 {
			t.Errorf("%+v: %v %v %v, want %v %v", tt.spec, v4, v6, err, tt.v4, tt.v6)
		}
	}
}

func TestNodeLease(t *testing.T) {
	k, _ := kubeannot.NewKeys(kubeannot.DefaultPrefix)
	node := func(ann map[string]string, cidrs ...string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: ann}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
	}
	pub := map[string]string{k.KubeSubnetManager: "true", k.BackendType: "host-gw", k.BackendData: "null",
		k.PublicIP: "192.0.2.1", k.BackendV6Data: "null", k.PublicIPv6: "2001:db8::1"}

	l, err := nodeLease(k, node(pub, "10.244.1.0/24", "fd00:0:0:1::/64"), families{v4: true, v6: true})
	if err != nil {
		t.Fatal(err)
	}
	if l.Key() != "10.244.1.0-24&fd00:0:0:1::-64" || l.Attrs.PublicIP.String() != "192.0.2.1" || l.Attrs.PublicIPv6.String() != "2001:db8::1" ||
		l.Attrs.BackendData != nil || !l.Expiration.IsZero() {
		t.Errorf("dual-stack lease %+v", l)
	}
	l, err = nodeLease(k, node(pub, "10.244.1.0/24", "fd00:0:0:1::/64"), families{v4: true})
	if err != nil || l.IPv6Subnet.IsValid() || l.Attrs.PublicIPv6 != nil {
		t.Errorf("IPv4 only: %+v %v", l, err)
	}
	if _, err := nodeLease(k, node(nil, "10.244.1.0/24"), families{v4: true}); err != errNotManaged {
		t.Errorf("nil annotations: %v, want errNotManaged", err)
	}
	if _, err := nodeLease(k, node(pub), families{v4: true}); err == nil || !strings.Contains(err.Error(), "no IPv4 podCIDR") {
		t.Errorf("no podCIDR: %v", err)
	}
	if _, err := nodeLease(k, node(pub, "10.244.1.0/24"), families{v4: true, v6: true}); err == nil || !strings.Contains(err.Error(), "no IPv6 podCIDR") {
		t.Errorf("no IPv6 podCIDR: %v", err)
	}
}

func TestInside(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tt := range []struct {
		n, s string
		want bool
	}{
		{"10.244.0.0/16", "10.244.3.0/24", true},
		{"10.244.0.0/16", "10.244.0.0/16", true},
		{"10.244.0.0/16", "10.0.0.0/8", false},
		{"10.244.0.0/16", "10.245.0.0/24", false},
		{"fd00::/48", "fd00:0:0:1::/64", true},
		{"fd00::/48", "fd01::/64", false},
	} {
		if got := inside(p(tt.n), p(tt.s)); got != tt.want {
			t.Errorf("inside(%s, %s) = %v", tt.n, tt.s, got)
		}
	}
	if inside(netip.Prefix{}, p("10.0.0.0/24")) {
		t.Error("inside an invalid network")
	}
}

func TestOptionsFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	var o Options
	if err := o.FromEnv(env(map[string]string{"NODE_NAME": "n1", "POD_NAME": "p", "POD_NAMESPACE": "ns",
		"EVENT_QUEUE_DEPTH": "17", "CONT_WHEN_CACHE_NOT_READY": "true"})); err != nil {
		t.Fatal(err)
	}
	if o.NodeName != "n1" || o.PodName != "p" || o.PodNamespace != "ns" || o.EventQueueDepth != 17 || !o.ContinueWhenCacheNotReady {
		t.Errorf("options %+v", o)
	}
	for _, v := range []string{"True", "1", "yes", "false"} {
		o := Options{}
		_ = o.FromEnv(env(map[string]string{"CONT_WHEN_CACHE_NOT_READY": v}))
		if o.ContinueWhenCacheNotReady {
			t.Errorf("CONT_WHEN_CACHE_NOT_READY=%s continues", v)
		}
	}
	for _, v := range []string{"0", "-3"} {
		o := Options{}
		if err := o.FromEnv(env(map[string]string{"EVENT_QUEUE_DEPTH": v})); err != nil {
			t.Fatal(err)
		}
		if d := o.withDefaults().EventQueueDepth; d != DefaultEventQueueDepth {
			t.Errorf("EVENT_QUEUE_DEPTH=%s: depth %d", v, d)
		}
	}
	err := (&Options{}).FromEnv(env(map[string]string{"EVENT_QUEUE_DEPTH": "5k"}))
	if err == nil || !strings.Contains(err.Error(), "EVENT_QUEUE_DEPTH") {
		t.Errorf("EVENT_QUEUE_DEPTH=5k: %v", err)
	}
}

func TestStripKeepsOnlyWhatTheAgentReads(t *testing.T) {
	k, _ := kubeannot.NewKeys(kubeannot.DefaultPrefix)
	s := &Store{keys: k}
	full := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: "n1", UID: "u1", ResourceVersion: "42",
			Labels:        map[string]string{"kubernetes.io/hostname": "n1"},
			Annotations:   map[string]string{k.PublicIP: "192.0.2.1", "node.alpha.kubernetes.io/ttl": "0"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}},
		},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}, ProviderID: "x",
			Taints: []corev1.Taint{{Key: "k", Effect: corev1.TaintEffectNoSchedule}}},
		Status: corev1.NodeStatus{
			Images:     []corev1.ContainerImage{{Names: []string{"registry.example/big:1"}, SizeBytes: 1 << 30}},
			Capacity:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2")},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.1"}},
		},
	}
	got, err := s.strip(full)
	if err != nil {
		t.Fatal(err)
	}
	want := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "u1", ResourceVersion: "42",
			Annotations: map[string]string{k.PublicIP: "192.0.2.1"}},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stripped\n %+v\nwant\n %+v", got, want)
	}
	// Idempotent, as client-go asks of a transform.
	again, _ := s.strip(got)
	if !reflect.DeepEqual(again, want) {
		t.Errorf("stripped twice: %+v", again)
	}
	if other, _ := s.strip("tombstone"); other != "tombstone" {
		t.Error("non-node object changed")
	}
}

func TestNameQueueCoalescesAndBounds(t *testing.T) {
	done := make(chan struct{})
	defer close(done)
	q := newNameQueue(2, done)
	q.add("b")
	q.add("a")
	q.add("a") // already queued: does not wait
	added := make(chan struct{})
	go func() {
		q.add("c") // a third distinct node waits for room
		close(added)
	}()
	select {
	case <-added:
		t.Fatal("add beyond the bound did not wait")
	case <-time.After(50 * time.Millisecond):
	}
	<-q.ready
	if got := q.take(); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("took %v", got)
	}
	select {
	case <-added:
	case <-time.After(5 * time.Second):
		t.Fatal("add did not resume after take")
	}
	<-q.ready
	if got := q.take(); !reflect.DeepEqual(got, []string{"c"}) {
		t.Errorf("took %v", got)
	}

	// Waiting adders give up when the watch ends.
	q2done := make(chan struct{})
	q2 := newNameQueue(1, q2done)
	q2.add("x")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); q2.add("y") }()
	close(q2done)
	wg.Wait()
}
