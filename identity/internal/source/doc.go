// Package source is what identity's sources share, in identity and in its
// optional subpackages (csr, workloadapi): the SVID and bundle a source
// serves now, the notifier behind Updated, and the clock and backoff that
// drive rotation and retries, with a clock tests move by hand.
//
//	n := source.NewNotifier()
//	ch := n.Updated()
//	n.Notify() // ch is closed; Updated hands out a fresh channel
package source

import "errors"

// ErrClosed is returned by a source used after Close; identity exports it.
var ErrClosed = errors.New("identity: source closed")
