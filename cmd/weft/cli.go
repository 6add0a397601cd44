package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// How a command line ends: help printed on request exits 0, a command line
// the command cannot take exits 2 with one line on stderr, a command that
// fails exits 1.

// errHelp says that the usage asked for (--help, -h, help) was printed.
var errHelp = errors.New("help printed")

// usageError is a command line that cmd cannot run: an unknown flag or
// command, a missing or extra argument.
type usageError struct {
	cmd string // "weft lab up"
	err error
}

func (e *usageError) Error() string {
	return fmt.Sprintf("%s: %v (see %s --help)", e.cmd, e.err, e.cmd)
}

func (e *usageError) Unwrap() error { return e.err }

// cmdError is a command that ran and failed.
type cmdError struct {
	cmd string
	err error
}

func (e *cmdError) Error() string { return e.cmd + ": " + e.err.Error() }
func (e *cmdError) Unwrap() error { return e.err }

// exitCode reports err on stderr as main should and returns the status to
// exit with.
func exitCode(err error, stderr io.Writer) int {
	var ue *usageError
	switch {
	case err == nil || errors.Is(err, errHelp):
		return 0
	case errors.As(err, &ue):
		// One line: flag's messages are, and a reason given to
		// usageErr is meant to be.
		fmt.Fprintln(stderr, strings.ReplaceAll(ue.Error(), "\n", " "))
		return 2
	default:
		var ce *cmdError
		if !errors.As(err, &ce) {
			err = &cmdError{"weft", err}
		}
		fmt.Fprintln(stderr, err)
		return 1
	}
}

// flags is the flag set of a command that runs (not a group): its usage
// goes to stdout on --help, and a parse error becomes a usageError instead
// of being printed by package flag, with the usage, to stderr.
type flags struct {
	*flag.FlagSet
	synopsis string // what follows the command in the usage line, e.g. "[flags] [node]"
	about    string // what the command does, after the usage line
}

// newFlags returns the flag set of command path ("weft lab up").
func newFlags(path, synopsis, about string) *flags {
	fs := flag.NewFlagSet(path, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &flags{FlagSet: fs, synopsis: synopsis, about: about}
}

// parse parses args; it prints the usage and returns errHelp for --help
// and -h.
func (f *flags) parse(args []string) error {
	err := f.FlagSet.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		f.printUsage(os.Stdout)
		return errHelp
	case err != nil:
		return f.usageErr(err)
	}
	return nil
}

// parseNoArgs parses args, refusing any that are not flags.
func (f *flags) parseNoArgs(args []string) error {
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return f.usageErr(fmt.Errorf("unexpected argument %q (%s takes only flags)", f.Arg(0), f.Name()))
	}
	return nil
}

func (f *flags) usageErr(err error) error { return &usageError{f.Name(), err} }

func (f *flags) printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: %s\n", strings.TrimSpace(f.Name()+" "+f.synopsis))
	if f.about != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(f.about, "\n"))
	}
	hasFlags := false
	f.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprintf(w, "\nFlags:\n")
		f.SetOutput(w)
		f.PrintDefaults()
		f.SetOutput(io.Discard)
	}
}

// group is a command made of commands: weft, weft lab.
type group struct {
	path   string // "weft lab"
	about  string // what the group is, after the usage line
	footer string // after the command list
	cmds   []subcommand
}

// subcommand is one command of a group: one that runs, or a group.
type subcommand struct {
	name, summary string
	run           func(ctx context.Context, args []string) error
	group         *group
}

func (g *group) find(name string) *subcommand {
	for i := range g.cmds {
		if g.cmds[i].name == name {
			return &g.cmds[i]
		}
	}
	return nil
}

func (g *group) names() string {
	var out []string
	for _, c := range g.cmds {
		out = append(out, c.name)
	}
	return strings.Join(out, ", ")
}

// run runs the command args name, or prints the group's usage.
func (g *group) run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return &usageError{g.path, fmt.Errorf("missing command: one of %s", g.names())}
	}
	switch a := args[0]; {
	case a == "-h" || a == "-help" || a == "--help":
		g.printUsage(os.Stdout)
		return errHelp
	case a == "help":
		return g.help(args[1:])
	case strings.HasPrefix(a, "-"):
		return &usageError{g.path, fmt.Errorf("flag provided but not defined: %s", a)}
	}
	c := g.find(args[0])
	if c == nil {
		return &usageError{g.path, fmt.Errorf("unknown command %q", args[0])}
	}
	if c.group != nil {
		return c.group.run(ctx, args[1:])
	}
	err := c.run(ctx, args[1:])
	var ue *usageError
	var ce *cmdError
	if err == nil || errors.Is(err, errHelp) || errors.As(err, &ue) || errors.As(err, &ce) {
		return err
	}
	return &cmdError{g.path + " " + c.name, err}
}

// help prints the usage of the command path args names: `weft help lab
// up` is `weft lab up --help`.
func (g *group) help(args []string) error {
	if len(args) == 0 {
		g.printUsage(os.Stdout)
		return errHelp
	}
	c := g.find(args[0])
	if c == nil {
		return &usageError{g.path + " help", fmt.Errorf("unknown command %q", args[0])}
	}
	if c.group != nil {
		return c.group.help(args[1:])
	}
	if len(args) > 1 {
		return &usageError{g.path + " help", fmt.Errorf("%s %s has no command %q", g.path, c.name, args[1])}
	}
	// Every command parses its flags before it does anything, so this
	// only prints.
	return c.run(context.Background(), []string{"--help"})
}

func (g *group) printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: %s <command> [flags]\n", g.path)
	if g.about != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(g.about, "\n"))
	}
	fmt.Fprintf(w, "\nCommands:\n")
	for _, c := range g.cmds {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, strings.ReplaceAll(c.summary, "\n", "\n"+strings.Repeat(" ", 15)))
	}
	fmt.Fprintf(w, "  %-12s %s\n", "help", "show a command's usage: "+g.path+" help <command>")
	if g.footer != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(g.footer, "\n"))
	}
}
