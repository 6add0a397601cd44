package wireguard

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/atomicfile"
)

// LoadKey returns the node's private key from path, generating and saving
// it (base64, no newline, mode 0400, as flannel writes it) when the file
// does not exist. created says it was made now. A file that exists but
// does not hold a key is an error and stays as it is: replacing it would
// silently change the node's identity.
func LoadKey(path string) (key wgtypes.Key, created bool, err error) {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		k, perr := wgtypes.ParseKey(strings.TrimSpace(string(data)))
		if perr != nil {
			return wgtypes.Key{}, false, fmt.Errorf("wireguard key file %s does not hold a base64 32-byte key (%v): fix it, or delete it to make a new key", path, perr)
		}
		return k, false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return wgtypes.Key{}, false, fmt.Errorf("wireguard key file: %w", err)
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("wireguard key: generate: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("wireguard key file: %w", err)
	}
	// Written whole or not at all: a crash must not leave half a key that
	// the next start would refuse.
	if err := atomicfile.Write(path, []byte(base64.StdEncoding.EncodeToString(k[:])), 0o400); err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("wireguard key file: %w", err)
	}
	return k, true, nil
}
