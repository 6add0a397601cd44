package lab

import (
	"fmt"
	"io"
	"strings"
)

// Matrix is the result of a full-mesh reachability check: OK[i][j] says
// whether endpoint From[i] reached To[j].
type Matrix struct {
	From []string
	To   []string
	OK   [][]bool
	// Skip marks pairs not tested (a pod and itself).
	Skip [][]bool
	// Errs holds the failure of each failed pair.
	Errs [][]string
}

func newMatrix(from, to []string) Matrix {
	m := Matrix{From: from, To: to}
	for range from {
		m.OK = append(m.OK, make([]bool, len(to)))
		m.Skip = append(m.Skip, make([]bool, len(to)))
		m.Errs = append(m.Errs, make([]string, len(to)))
	}
	return m
}

// Failures counts the tested pairs that failed.
func (m Matrix) Failures() int {
	n := 0
	for i := range m.OK {
		for j := range m.OK[i] {
			if !m.Skip[i][j] && !m.OK[i][j] {
				n++
			}
		}
	}
	return n
}

// Tested counts the tested pairs.
func (m Matrix) Tested() int {
	n := 0
	for i := range m.Skip {
		for j := range m.Skip[i] {
			if !m.Skip[i][j] {
				n++
			}
		}
	}
	return n
}

// Render writes the matrix as a table, rows are sources and columns
// destinations, followed by the error of each failed pair.
func (m Matrix) Render(w io.Writer) {
	width := len("from\\to")
	for _, s := range append(append([]string(nil), m.From...), m.To...) {
		width = max(width, len(s))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-*s", width, "from\\to")
	for _, t := range m.To {
		fmt.Fprintf(&b, " %*s", width, t)
	}
	b.WriteByte('\n')
	for i, f := range m.From {
		fmt.Fprintf(&b, "%-*s", width, f)
		for j := range m.To {
			mark := "✗"
			switch {
			case m.Skip[i][j]:
				mark = "·"
			case m.OK[i][j]:
				mark = "✓"
			}
			// Pad by runes: the marks are one column wide but not one byte.
			fmt.Fprintf(&b, " %s%s", strings.Repeat(" ", width-1), mark)
		}
		b.WriteByte('\n')
	}
	for i := range m.Errs {
		for j, e := range m.Errs[i] {
			if e != "" && !m.OK[i][j] && !m.Skip[i][j] {
				fmt.Fprintf(&b, "%s -> %s: %s\n", m.From[i], m.To[j], e)
			}
		}
	}
	fmt.Fprintf(&b, "%d/%d reachable\n", m.Tested()-m.Failures(), m.Tested())
	_, _ = io.WriteString(w, b.String())
}
