package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"mesh/controlplane"
)

// apiFlags are how a command finds the control plane's API.
type apiFlags struct {
	url, tokenFile, stateDir string
}

func addAPIFlags(f *flags, e *env) *apiFlags {
	a := &apiFlags{}
	f.StringVar(&a.url, "api", e.getenv("MESHCTL_API"), "control plane API URL (env MESHCTL_API; default: the one in -state)")
	f.StringVar(&a.tokenFile, "token", e.getenv("MESHCTL_TOKEN_FILE"), "file holding the API token (env MESHCTL_TOKEN_FILE; default: the one in -state)")
	f.StringVar(&a.stateDir, "state", e.getenv("MESHCTL_STATE"), "the control plane's state dir, to find its API and token (env MESHCTL_STATE)")
	return a
}

// get reads path from the control plane's API into v.
func (a *apiFlags) get(ctx context.Context, path string, v any) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	return c.do(ctx, "GET", path, nil, v)
}

// client talks to the control plane's API.
type client struct {
	base  string
	token string
	http  *http.Client
}

func (a *apiFlags) client() (*client, error) {
	url, tokenFile := a.url, a.tokenFile
	if a.stateDir != "" {
		if url == "" {
			b, err := os.ReadFile(filepath.Join(a.stateDir, controlplane.StateAPIAddressFile))
			if err != nil {
				return nil, fmt.Errorf("state dir %s: no API address (is meshctl controlplane running with -state %s?): %w", a.stateDir, a.stateDir, err)
			}
			url = strings.TrimSpace(string(b))
		}
		if tokenFile == "" {
			tokenFile = filepath.Join(a.stateDir, controlplane.StateAPITokenFile)
		}
	}
	if url == "" || tokenFile == "" {
		return nil, usagef("no control plane: give -state DIR, or -api URL and -token FILE")
	}
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("API token: %w", err)
	}
	return &client{base: strings.TrimRight(url, "/"), token: strings.TrimSpace(string(tok)),
		http: &http.Client{Timeout: 30 * time.Second}}, nil
}

// do sends in (if any) as JSON and decodes the answer into out.
func (c *client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("control plane API %s: %w", c.base, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("control plane unreachable at %s: %w", c.base, unwrapURLError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("control plane API %s: %w", c.base, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("control plane API %s%s: %s", c.base, path, resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("control plane API %s%s: %w", c.base, path, err)
	}
	return nil
}

// unwrapURLError drops net/url's "Get \"...\":" prefix: the caller names
// the URL already.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// output is -o: human text by default, or json / yaml for data.
type output struct{ format string }

func addOutputFlag(f *flags) *output {
	o := &output{}
	f.StringVar(&o.format, "o", "", "output format: json or yaml (default: text for humans)")
	return o
}

func (o *output) check() error {
	switch o.format {
	case "", "json", "yaml":
		return nil
	}
	return usagef("-o %q: want json or yaml", o.format)
}

// print writes v as -o asks, or calls human.
func (o *output) print(w io.Writer, v any, human func()) error {
	switch o.format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		y, err := yaml.JSONToYAML(b)
		if err != nil {
			return err
		}
		_, err = w.Write(y)
		return err
	}
	human()
	return nil
}
