package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
)

const (
	stateFile = "state.json"
	// currentLink, in the root directory, names the most recent lab.
	currentLink = "current"
)

// save writes the state file atomically.
func (s *State) save() error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("lab %s: encoding state: %w", s.Name, err)
	}
	path := filepath.Join(s.Dir, stateFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("lab %s: writing state: %w", s.Name, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("lab %s: writing state: %w", s.Name, err)
	}
	return nil
}

// loadState reads the state file in dir.
func loadState(dir string) (State, error) {
	var s State
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("%s: %w", filepath.Join(dir, stateFile), err)
	}
	return s, nil
}

// setCurrent points root/current at the lab directory when it lives in root.
func setCurrent(root, dir string) error {
	if filepath.Dir(filepath.Clean(dir)) != filepath.Clean(root) {
		return nil
	}
	link := filepath.Join(root, currentLink)
	tmp := link + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Base(dir), tmp); err != nil {
		return fmt.Errorf("marking lab current: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		return fmt.Errorf("marking lab current: %w", err)
	}
	return nil
}

// clearCurrent removes root/current when it points at dir.
func clearCurrent(root, dir string) {
	link := filepath.Join(root, currentLink)
	target, err := os.Readlink(link)
	if err != nil {
		return
	}
	if !filepath.IsAbs(target) {
		target = filepath.Join(root, target)
	}
	if filepath.Clean(target) == filepath.Clean(dir) {
		_ = os.Remove(link)
	}
}

// Open finds an existing lab: ref is a lab name under root, a path to a lab
// directory, or "" for the most recent lab (root/current).
func Open(root, ref string, log *slog.Logger) (*Lab, error) {
	if root == "" {
		root = DefaultRoot
	}
	dir := ref
	switch {
	case ref == "":
		dir = filepath.Join(root, currentLink)
	case !filepath.IsAbs(ref) && filepath.Base(ref) == ref:
		dir = filepath.Join(root, ref)
	}
	if resolved, err := filepath.EvalSymlinks(dir); err == nil {
		dir = resolved
	}
	s, err := loadState(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if ref == "" {
				return nil, fmt.Errorf("no current lab in %s (run `weft lab up`)", root)
			}
			return nil, fmt.Errorf("no lab %q in %s", ref, root)
		}
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Lab{State: s, log: log}, nil
}

// List returns the labs under root, oldest first.
func List(root string) ([]State, error) {
	if root == "" {
		root = DefaultRoot
	}
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []State
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		s, err := loadState(filepath.Join(root, e.Name()))
		if err != nil {
			continue // a kept log directory, or not a lab
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// CurrentName returns the name root/current points at, or "".
func CurrentName(root string) string {
	if root == "" {
		root = DefaultRoot
	}
	target, err := os.Readlink(filepath.Join(root, currentLink))
	if err != nil {
		return ""
	}
	return filepath.Base(target)
}
