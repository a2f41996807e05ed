package xdsclient

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/anypb"

	discoverypb "mesh/xdsclient/internal/lite/envoy/service/discovery/v3"
)

// decoded is one resource of a response after decoding.
type decoded struct {
	name    string
	value   any
	raw     []byte
	version string
	ignored []string
	err     error
	// undecodable: the entry could not be read as a named resource of the
	// response's type, so the response is rejected whole.
	undecodable bool
}

func (c *Client) kindOf(typeURL string) (resourceKind, bool) {
	for k, info := range c.kinds {
		if info.typeURL == typeURL {
			return resourceKind(k), true
		}
	}
	return 0, false
}

// decodeOne decodes and validates one resource with a fresh record of
// the fields it ignores.
func (c *Client) decodeOne(kind resourceKind, r *anypb.Any) decoded {
	dc := *c.dc
	dc.ignored = nil
	name, v, err := c.kinds[kind].decode(&dc, r)
	if err == nil && isXDSTP(name) {
		// Watches are keyed by canonical name; so are resources.
		canonical, cerr := canonicalResourceName(c.kinds[kind].typeURL, name)
		if cerr != nil {
			return decoded{name: name, raw: r.GetValue(), err: fmt.Errorf("%s %q: name: %w", c.kinds[kind].name, name, cerr)}
		}
		name = canonical
	}
	if err == nil {
		if m := dc.resource; m != nil {
			dc.ignored = append(dc.ignored, reportUnapplied(kind, m, dc.ignored)...)
		}
	}
	return decoded{name: name, value: v, raw: r.GetValue(), ignored: dc.ignored, err: err}
}

// handleResponse decodes a state-of-the-world response, updates the cache
// and watchers, and queues the ACK or NACK. Responses of unknown types
// are logged and dropped.
func (c *Client) handleResponse(a *adsChannel, typeURL, version, nonce string, resources []*anypb.Any) {
	kind, ok := c.kindOf(typeURL)
	if !ok {
		c.log.Warn("xds: ignoring response of unknown type", "type_url", typeURL)
		return
	}
	info := c.kinds[kind]
	results := make([]decoded, 0, len(resources))
	for i, r := range resources {
		r, err := unwrapResource(r, typeURL)
		if err != nil {
			results = append(results, decoded{err: fmt.Errorf("%s: resources[%d]: %w", info.name, i, err), undecodable: true})
			continue
		}
		d := c.decodeOne(kind, r)
		if d.err != nil && d.name == "" {
			d.err, d.undecodable = fmt.Errorf("resources[%d]: %w", i, d.err), true
		}
		d.version = version
		results = append(results, d)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	source := a.serverURILocked()
	if c.rejectedWholeLocked(a, kind, version, nonce, results, source) {
		return
	}
	present, nackMsgs := c.applyLocked(a, kind, results, source)
	if info.fullState {
		for name, st := range c.watches[kind] {
			// A resource never received is left to its does-not-exist
			// timer: this response may answer a request sent before it
			// was subscribed (as grpc-go does).
			if present[name] || !st.requested || !st.hasValue || st.retired || st.channel != a.set.key {
				continue
			}
			c.deletedLocked(a, kind, name, st, source)
		}
	}
	c.finishResponseLocked(a, kind, version, nonce, nackMsgs)
}

// rejectedWholeLocked NACKs a response with an entry that cannot be read
// as a named resource, and reports whether it did. Nothing of such a
// response is applied: the unreadable entry may be any resource, so
// neither its updates nor (SotW) what it seems to leave out can be
// trusted, and the last good config keeps serving, as Envoy does.
// Watchers of the entries' names, where known, hear the error.
func (c *Client) rejectedWholeLocked(a *adsChannel, kind resourceKind, version, nonce string, results []decoded, source string) bool {
	if !slices.ContainsFunc(results, func(d decoded) bool { return d.undecodable }) {
		return false
	}
	info := c.kinds[kind]
	now := c.now()
	msgs := []string{fmt.Sprintf("%s response rejected whole, nothing applied", info.name)}
	for _, d := range results {
		if d.err == nil {
			continue
		}
		msgs = append(msgs, d.err.Error())
		c.log.Warn("xds: rejecting resource", "type", info.name, "name", d.name, "version", d.version, "server", source, "error", d.err)
		if st := c.watches[kind][d.name]; d.name != "" && st != nil && st.channel == a.set.key {
			c.nackedLocked(st, d, now)
		}
	}
	c.finishResponseLocked(a, kind, version, nonce, msgs)
	return true
}

// nackedLocked records that st's update d was rejected and tells its
// watchers. A resource that never had a value is settled by the answer,
// bad as it is: its does-not-exist timer stops.
func (c *Client) nackedLocked(st *resourceState, d decoded, now time.Time) {
	st.nackErr, st.nackAt, st.nackVer = d.err, now, d.version
	if !st.hasValue {
		stopTimer(st)
	}
	c.notifyLocked(st, rawEvent{err: fmt.Errorf("%w: %w", ErrResourceRejected, d.err)})
}

// handleDeltaResponse is handleResponse for a delta response: resources
// carry their own versions, and only removed_resources are deletions.
func (c *Client) handleDeltaResponse(a *adsChannel, typeURL, nonce string, resources []*discoverypb.Resource, removed []string) {
	kind, ok := c.kindOf(typeURL)
	if !ok {
		c.log.Warn("xds: ignoring delta response of unknown type", "type_url", typeURL)
		return
	}
	info := c.kinds[kind]
	results := make([]decoded, 0, len(resources))
	for i, r := range resources {
		wrapperName := canonicalOrSelf(typeURL, r.GetName())
		if r.GetResource() == nil {
			results = append(results, decoded{name: wrapperName, undecodable: true, err: fmt.Errorf("%s %q: resources[%d].resource: missing", info.name, r.GetName(), i)})
			continue
		}
		res, err := unwrapResource(r.GetResource(), typeURL)
		if err != nil {
			results = append(results, decoded{name: wrapperName, undecodable: true, err: fmt.Errorf("%s %q: resources[%d]: %w", info.name, r.GetName(), i, err)})
			continue
		}
		d := c.decodeOne(kind, res)
		if d.err != nil && d.name == "" {
			d.name, d.undecodable = wrapperName, true
			d.err = fmt.Errorf("resources[%d]: %w", i, d.err)
			if r.GetName() != "" {
				d.err = fmt.Errorf("%s %q: %w", info.name, r.GetName(), d.err)
			}
		}
		if d.err == nil && r.GetName() != "" && d.name != canonicalOrSelf(typeURL, r.GetName()) {
			d.err = fmt.Errorf("%s %q: resources[%d].name: %q does not match the resource's own name", info.name, d.name, i, r.GetName())
		}
		d.version = r.GetVersion()
		results = append(results, d)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	source := a.serverURILocked()
	if c.rejectedWholeLocked(a, kind, "", nonce, results, source) {
		return
	}
	_, nackMsgs := c.applyLocked(a, kind, results, source)
	for _, name := range removed {
		// As on a state-of-the-world stream, a resource never received is
		// left to its does-not-exist timer: istiod lists every subscribed
		// name it cannot build yet (a route may name a subset's cluster
		// before the DestinationRule that defines it arrives).
		if st := c.watches[kind][canonicalOrSelf(typeURL, name)]; st != nil && !st.retired && st.hasValue && st.channel == a.set.key {
			c.deletedLocked(a, kind, name, st, source)
		}
	}
	var received []string
	for _, d := range results {
		if d.err == nil {
			received = append(received, d.name)
		}
	}
	a.deltaRemovedLocked(kind, removed, received)
	c.finishResponseLocked(a, kind, "", nonce, nackMsgs)
}

// applyLocked stores the valid resources of a response and tells their
// watchers; it returns the names present and the NACK messages.
func (c *Client) applyLocked(a *adsChannel, kind resourceKind, results []decoded, source string) (map[string]bool, []string) {
	info := c.kinds[kind]
	now := c.now()
	present := make(map[string]bool, len(results))
	var nackMsgs []string
	for _, d := range results {
		if d.name != "" {
			present[d.name] = true
		}
		st := c.watches[kind][d.name]
		if st != nil && st.channel != a.set.key {
			// Watched, but from another authority's servers: this server
			// has no say over it.
			st = nil
		}
		if d.err != nil {
			nackMsgs = append(nackMsgs, d.err.Error())
			c.log.Warn("xds: rejecting resource", "type", info.name, "name", d.name, "version", d.version, "server", source, "error", d.err)
			if st != nil {
				c.nackedLocked(st, d, now)
			}
			continue
		}
		if st == nil {
			continue // not subscribed (any more)
		}
		stopTimer(st)
		st.nackErr, st.fromCache = nil, false
		if st.hasValue && bytes.Equal(st.raw, d.raw) {
			st.version, st.source = d.version, source
			continue
		}
		if st.notFound && st.absentErr != nil {
			c.log.Info("xds: resource is back", "type", info.name, "name", d.name, "server", source)
		}
		st.value, st.raw, st.hasValue, st.notFound, st.absentErr = d.value, d.raw, true, false, nil
		st.version, st.source, st.updatedAt, st.ignored = d.version, source, now, d.ignored
		c.logIgnoredLocked(kind, d.name, d.ignored)
		c.meter.update(kind)
		c.notifyLocked(st, rawEvent{value: d.value})
	}
	return present, nackMsgs
}

// deletedLocked handles the server deleting a resource. With the
// ignore_resource_deletion server feature (gRFC A53) listeners and
// clusters keep their last value.
func (c *Client) deletedLocked(a *adsChannel, kind resourceKind, name string, st *resourceState, source string) {
	info := c.kinds[kind]
	if info.fullState && st.hasValue && a.hasFeature(source, ServerFeatureIgnoreResourceDeletion) {
		c.log.Warn("xds: ignoring deletion of resource (ignore_resource_deletion)", "type", info.name, "name", name, "server", source)
		return
	}
	c.setNotFoundLocked(kind, name, st, "was deleted by server "+source)
}

// canonicalOrSelf is name canonicalized, or name itself if it is not a
// valid xdstp name (it then matches no watch).
func canonicalOrSelf(typeURL, name string) string {
	if canonical, err := canonicalResourceName(typeURL, name); err == nil {
		return canonical
	}
	return name
}

// setNotFoundLocked drops the cached value of name and reports NotFound.
func (c *Client) setNotFoundLocked(kind resourceKind, name string, st *resourceState, why string) {
	stopTimer(st)
	server := ""
	if a := c.channels[st.channel]; a != nil {
		server = a.serverURILocked()
	}
	st.value, st.raw, st.hasValue, st.notFound, st.fromCache = nil, nil, false, true, false
	st.version, st.updatedAt, st.ignored = "", c.now(), nil
	st.absentErr = fmt.Errorf("%w: %s %q on server %s %s", errResourceNotFound, c.kinds[kind].name, name, server, why)
	c.notifyLocked(st, rawEvent{notFound: true})
}

// finishResponseLocked queues the ACK or NACK, counts it and has the
// accepted resources persisted.
func (c *Client) finishResponseLocked(a *adsChannel, kind resourceKind, version, nonce string, nackMsgs []string) {
	var nack error
	if len(nackMsgs) > 0 {
		nack = errors.New(strings.Join(nackMsgs, "; "))
		c.meter.nack(kind)
	}
	a.responseHandledLocked(kind, version, nonce, nack)
	if c.cache != nil {
		c.keepAcceptedLocked()
		c.cache.markDirty()
	}
}

// logIgnoredLocked logs each field mesh does not apply once per resource
// type, with the first resource that set it: a control plane that sets a
// field on every cluster gets one line, not one per cluster. Dump lists
// them per resource.
func (c *Client) logIgnoredLocked(kind resourceKind, name string, ignored []string) {
	for _, f := range ignored {
		key := c.kinds[kind].name + "\x00" + indexes.ReplaceAllString(f, "")
		if c.loggedIgnored[key] {
			continue
		}
		c.loggedIgnored[key] = true
		c.log.Warn("xds: ignoring a field mesh does not implement", "type", c.kinds[kind].name, "name", name, "field", f)
	}
}

// streamDownLocked reacts to a broken stream: resources keep serving from
// the cache, watchers hear the error (meaning "keep last good"), and
// does-not-exist timers stop since silence is not the server's answer.
func (c *Client) streamDownLocked(a *adsChannel, err error) {
	a.connected.Store(false)
	if c.closed {
		return
	}
	for _, m := range c.watches {
		for _, st := range m {
			if st.channel != a.set.key {
				continue
			}
			stopTimer(st)
			st.requested = false
			c.notifyLocked(st, rawEvent{err: err})
		}
	}
}

// serverChangedLocked restarts the does-not-exist bookkeeping when the
// client moves to another server; cached values keep serving until the
// new server sends its own (gRFC A71).
func (c *Client) serverChangedLocked(a *adsChannel) {
	for _, m := range c.watches {
		for _, st := range m {
			if st.channel != a.set.key {
				continue
			}
			stopTimer(st)
			st.requested = false
		}
	}
}
