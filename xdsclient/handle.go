package xdsclient

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// decoded is one resource of a response after decoding.
type decoded struct {
	name    string
	value   any
	raw     []byte
	version string
	ignored []string
	err     error
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
		canonical, cerr := CanonicalResourceName(c.kinds[kind].typeURL, name)
		if cerr != nil {
			return decoded{name: name, raw: r.GetValue(), err: fmt.Errorf("%s %q: name: %w", c.kinds[kind].name, name, cerr)}
		}
		name = canonical
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
			results = append(results, decoded{err: fmt.Errorf("%s: resources[%d]: %w", info.name, i, err)})
			continue
		}
		d := c.decodeOne(kind, r)
		d.version = version
		results = append(results, d)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	source := a.serverURILocked()
	present, nackMsgs := c.applyLocked(a, kind, results, source)
	if info.fullState {
		for name, st := range c.watches[kind] {
			if present[name] || !st.requested || st.notFound || st.retired || st.channel != a.set.key {
				continue
			}
			// A name never received may be missing only because the
			// response answers a request sent before it was subscribed:
			// its does-not-exist timer decides (as grpc-go's client does).
			if !st.hasValue {
				continue
			}
			c.deletedLocked(a, kind, name, st, source)
		}
	}
	c.finishResponseLocked(a, kind, version, nonce, nackMsgs)
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
		if r.GetResource() == nil {
			results = append(results, decoded{name: r.GetName(), err: fmt.Errorf("%s %q: resources[%d].resource: missing", info.name, r.GetName(), i)})
			continue
		}
		res, err := unwrapResource(r.GetResource(), typeURL)
		if err != nil {
			results = append(results, decoded{name: r.GetName(), err: fmt.Errorf("%s %q: resources[%d]: %w", info.name, r.GetName(), i, err)})
			continue
		}
		d := c.decodeOne(kind, res)
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
	_, nackMsgs := c.applyLocked(a, kind, results, source)
	for _, name := range removed {
		if st := c.watches[kind][canonicalOrSelf(typeURL, name)]; st != nil && !st.retired && !st.notFound && st.channel == a.set.key {
			c.deletedLocked(a, kind, name, st, source)
		}
	}
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
				st.nackErr, st.nackAt, st.nackVer = d.err, now, d.version
				c.notifyLocked(st, rawEvent{err: fmt.Errorf("%w: %w", ErrResourceRejected, d.err)})
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
	if canonical, err := CanonicalResourceName(typeURL, name); err == nil {
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
	st.absentErr = fmt.Errorf("%w: %s %q on server %s %s", ErrResourceNotFound, c.kinds[kind].name, name, server, why)
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

func (c *Client) logIgnoredLocked(kind resourceKind, name string, ignored []string) {
	for _, f := range ignored {
		key := c.kinds[kind].name + "\x00" + name + "\x00" + f
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
