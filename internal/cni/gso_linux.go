package cni

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weft-net/weft/internal/netlinkx"
)

// raiseGSO lets the pod build IPv4 GSO packets of size bytes (BIG TCP) by
// setting the limit on every interface the delegate reports: the bridge and
// the veth's host end here, the pod's end in its namespace. The bridge and
// the host end need it too, or the kernel would cut a pod's large packets
// back into MSS-sized ones on the way (and the pod's incoming ones).
func raiseGSO(res types.Result, size int) error {
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return fmt.Errorf("reading delegate result: %w", err)
	}
	here, err := netlinkx.New()
	if err != nil {
		return err
	}
	defer here.Close()
	for _, ifc := range r.Interfaces {
		h := here
		if ifc.Sandbox != "" {
			if h, err = netlinkx.NewAt(ifc.Sandbox); err != nil {
				return err
			}
			defer h.Close()
		}
		l, err := h.LinkByName(ifc.Name)
		if err != nil {
			return err
		}
		if err := h.LinkSetIPv4GSOMaxSize(l, size); err != nil {
			return err
		}
	}
	return nil
}
