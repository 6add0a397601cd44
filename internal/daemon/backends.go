package daemon

import (
	"fmt"
	"log/slog"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backend/hostgw"
	"github.com/weft-net/weft/internal/backend/udp"
	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/netlinkx"
)

// newBackend builds the backend the network config names.
func newBackend(typ string, p backend.Params, h *netlinkx.Handle, log *slog.Logger) (backend.Backend, error) {
	switch typ {
	case config.BackendVXLAN:
		return vxlan.New(p, h, log)
	case config.BackendHostGW:
		return hostgw.New(p, h, log)
	case config.BackendUDP:
		return udp.New(p, h, log)
	default:
		return nil, fmt.Errorf("unknown backend type %q", typ)
	}
}
