package backend

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// OpenTUN creates the TUN device name, or attaches to it when it exists
// (left by a previous run), and returns its descriptor. The device has
// virtio-net headers (IFF_VNET_HDR), so that the kernel hands whole TCP
// segments to the userspace datapath and takes coalesced ones back, and is
// persistent: it outlives this process, so that a restart does not take
// its routes away.
func OpenTUN(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUN %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EBUSY) {
			return -1, fmt.Errorf("TUNSETIFF %s: %w (another process holds it: flanneld, or another weftd?)", name, err)
		}
		return -1, fmt.Errorf("TUNSETIFF %s: %w (is it something other than a TUN device?)", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETPERSIST %s: %w", name, err)
	}
	return fd, nil
}
