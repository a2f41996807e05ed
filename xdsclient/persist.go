package xdsclient

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// The last-good cache file is a header line naming the format and the
// SHA-256 of the rest, then a JSON body:
//
//	mesh-xds-cache/1 sha256=<hex>
//	{"node_id": "...", "saved_at": "...", "resources": [...]}
const cacheMagic = "mesh-xds-cache/1"

type cacheFile struct {
	NodeID    string          `json:"node_id"`
	SavedAt   time.Time       `json:"saved_at"`
	Resources []cachedEntries `json:"resources"`
}

type cachedEntries struct {
	TypeURL   string    `json:"type_url"`
	Name      string    `json:"name"`
	Version   string    `json:"version"`
	Source    string    `json:"source"`
	UpdatedAt time.Time `json:"updated_at"`
	// Resource is the resource as a serialized google.protobuf.Any.
	Resource []byte `json:"resource"`
}

// encodeCache serializes f with its checksum header.
func encodeCache(f *cacheFile) ([]byte, error) {
	body, err := json.Marshal(f)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s sha256=%s\n", cacheMagic, hex.EncodeToString(sum[:]))
	b.Write(body)
	return b.Bytes(), nil
}

// decodeCache checks the header and checksum and parses the body.
func decodeCache(data []byte) (*cacheFile, error) {
	header, body, ok := bytes.Cut(data, []byte("\n"))
	if !ok {
		return nil, errors.New("no header line")
	}
	magic, sumHex, ok := bytes.Cut(header, []byte(" sha256="))
	if !ok || string(magic) != cacheMagic {
		return nil, fmt.Errorf("header %q: want %q followed by a sha256", truncate(string(header), 64), cacheMagic)
	}
	want, err := hex.DecodeString(string(sumHex))
	if err != nil || len(want) != sha256.Size {
		return nil, fmt.Errorf("header: invalid sha256 %q", truncate(string(sumHex), 80))
	}
	if got := sha256.Sum256(body); !bytes.Equal(got[:], want) {
		return nil, errors.New("checksum mismatch: the file is corrupt")
	}
	f := &cacheFile{}
	if err := json.Unmarshal(body, f); err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	return f, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// loadCache seeds the resource cache from the file at path, if any. The
// loaded resources wait, unwatched, for a watch; a bad file is logged and
// ignored.
func (c *Client) loadCache(path string) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		c.log.Debug("xds: no last-good cache file yet", "path", path)
		return
	}
	if err != nil {
		c.log.Warn("xds: ignoring unreadable last-good cache", "path", path, "error", err)
		return
	}
	f, err := decodeCache(data)
	if err == nil && f.NodeID != c.bs.Node.ID {
		err = fmt.Errorf("written for node %q, not %q", f.NodeID, c.bs.Node.ID)
	}
	if err != nil {
		c.log.Warn("xds: ignoring last-good cache file", "path", path, "error", fmt.Errorf("xds: cache %s: %w", path, err))
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	loaded := 0
	for i, e := range f.Resources {
		kind, ok := c.kindOf(e.TypeURL)
		a := &anypb.Any{}
		if ok {
			err = proto.Unmarshal(e.Resource, a)
		}
		var d decoded
		switch {
		case !ok:
			err = fmt.Errorf("unknown type_url %q", e.TypeURL)
		case err != nil:
		case a.GetTypeUrl() != e.TypeURL:
			err = fmt.Errorf("resource type %q does not match type_url %q", a.GetTypeUrl(), e.TypeURL)
		default:
			d = c.decodeOne(kind, a)
			err = d.err
			if err == nil && d.name != e.Name {
				err = fmt.Errorf("resource is named %q, entry %q", d.name, e.Name)
			}
		}
		if err != nil {
			c.log.Warn("xds: skipping last-good cache entry", "path", path, "entry", i, "name", e.Name, "error", err)
			continue
		}
		// A name the bootstrap cannot route (its authority is gone) keeps
		// no set; it is never requested and no watch can reach it.
		_, set, _ := c.routeName(kind, e.Name)
		c.watches[kind][e.Name] = &resourceState{
			channel:  set,
			watchers: map[*watcher]struct{}{},
			value:    d.value, raw: d.raw, hasValue: true,
			retired: true, // kept until a watch wants it or a request drops it
			version: e.Version, source: e.Source, updatedAt: e.UpdatedAt, fromCache: true,
			ignored: d.ignored,
		}
		if c.cache != nil {
			c.cache.kept[e.TypeURL+"\x00"+e.Name] = e
		}
		loaded++
	}
	c.log.Info("xds: loaded last-good cache; serving it until the control plane answers",
		"path", path, "resources", loaded, "age", c.now().Sub(f.SavedAt).Round(time.Second), "saved_at", f.SavedAt)
}

// keepAcceptedLocked records in the persister the last accepted version of
// every resource held now. It runs as each response is handled, because a
// resource whose last watch ends is dropped from the watches by the next
// request: a process closes its channels before its client, and the cache
// must still hold what they used. A resource leaves the cache only when the
// client knows its name but holds no value (the server said it does not
// exist).
func (c *Client) keepAcceptedLocked() {
	kept := c.cache.kept
	for k, m := range c.watches {
		info := c.kinds[k]
		if resourceKind(k) == kindSecret {
			continue // private keys stay off disk; SDS refetches them
		}
		for name, st := range m {
			key := info.typeURL + "\x00" + name
			if !st.hasValue {
				delete(kept, key)
				continue
			}
			a, err := proto.Marshal(&anypb.Any{TypeUrl: info.typeURL, Value: st.raw})
			if err != nil {
				continue // cannot happen for bytes already parsed once
			}
			kept[key] = cachedEntries{
				TypeURL: info.typeURL, Name: name, Version: st.version, Source: st.source,
				UpdatedAt: st.updatedAt.UTC(), Resource: a,
			}
		}
	}
}

// cacheFileLocked lists the kept resources for the cache file.
func (c *Client) cacheFileLocked() *cacheFile {
	f := &cacheFile{NodeID: c.bs.Node.ID, SavedAt: c.now().UTC()}
	for _, e := range c.cache.kept {
		f.Resources = append(f.Resources, e)
	}
	slices.SortFunc(f.Resources, func(a, b cachedEntries) int {
		return cmp.Or(cmp.Compare(a.TypeURL, b.TypeURL), cmp.Compare(a.Name, b.Name))
	})
	return f
}

// writeFileAtomic writes data to a temporary file beside path and renames
// it over path, so readers see the old or the new file, never half of one.
func writeFileAtomic(path string, data []byte) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// persister writes the cache file from its own goroutine, coalescing
// bursts of responses into one write.
type persister struct {
	c    *Client
	path string
	kept map[string]cachedEntries // guarded by c.mu
	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

func newPersister(c *Client, path string) *persister {
	p := &persister{c: c, path: path, kept: map[string]cachedEntries{}, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go p.run()
	return p
}

func (p *persister) markDirty() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *persister) run() {
	defer close(p.done)
	for {
		select {
		case <-p.wake:
			p.write()
		case <-p.stop:
			select {
			case <-p.wake: // flush the last change
				p.write()
			default:
			}
			return
		}
	}
}

func (p *persister) write() {
	p.c.mu.Lock()
	f := p.c.cacheFileLocked()
	p.c.mu.Unlock()
	data, err := encodeCache(f)
	if err == nil {
		err = writeFileAtomic(p.path, data)
	}
	if err != nil {
		p.c.log.Warn("xds: cannot write last-good cache", "path", p.path, "error", err)
		return
	}
	p.c.log.Debug("xds: wrote last-good cache", "path", p.path, "resources", len(f.Resources))
}

// close stops the goroutine after a final write of pending changes.
func (p *persister) close() {
	close(p.stop)
	<-p.done
}
