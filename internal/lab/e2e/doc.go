// Package e2e holds weft's end-to-end scenario tests: each brings up a lab
// (internal/lab) of real weftd, etcd and CNI plugin processes in network
// namespaces and does to it what operators and failures do — restarts,
// devices and routes deleted by hand, leases deleted, bad input in the
// store — checking that the fabric heals. They need root; without it they
// skip.
package e2e
