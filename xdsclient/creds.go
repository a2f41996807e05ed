package xdsclient

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// jsonTokenFileCreds is the config of "jwt_token_file" call creds.
type jsonTokenFileCreds struct {
	JWTTokenFile string `json:"jwt_token_file"`
}

func parseTokenFileConfig(raw json.RawMessage) (string, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return "", errors.New("missing (want {\"jwt_token_file\": <path>})")
	}
	var cfg jsonTokenFileCreds
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return "", fmt.Errorf("invalid jwt_token_file config: %w", err)
	}
	if cfg.JWTTokenFile == "" {
		return "", errors.New("jwt_token_file: missing")
	}
	return cfg.JWTTokenFile, nil
}

// serverCreds are the channel and call credentials for one xDS server:
// tls nil means plaintext (h2c).
type serverCreds struct {
	tls    *reloadingTLS
	tokens []*tokenFileCreds
}

// credsFor reads s's channel and call credentials (gRFC A65, A97).
func credsFor(s ServerConfig, path string) (serverCreds, error) {
	var sc serverCreds
	tc, err := channelCreds(s, path)
	if err != nil {
		return sc, err
	}
	sc.tls = tc
	for i, cc := range s.CallCreds {
		if cc.Type != CallCredsJWTTokenFile {
			continue // gRFC A97: unsupported call creds are ignored
		}
		file, err := parseTokenFileConfig(cc.Config)
		if err != nil {
			return sc, fmt.Errorf("bootstrap: %s.call_creds[%d].config: %w", path, i, err)
		}
		sc.tokens = append(sc.tokens, &tokenFileCreds{path: file})
	}
	return sc, nil
}

// channelCreds returns the first supported channel creds of s: nil for
// insecure, else TLS from the bootstrap's files.
func channelCreds(s ServerConfig, path string) (*reloadingTLS, error) {
	for i, cc := range s.ChannelCreds {
		switch cc.Type {
		case CredsInsecure:
			return nil, nil
		case CredsTLS:
			cfg, err := parseTLSCredsConfig(cc.Config)
			if err != nil {
				return nil, fmt.Errorf("bootstrap: %s.channel_creds[%d].config: %w", path, i, err)
			}
			r := &reloadingTLS{cfg: cfg, path: fmt.Sprintf("bootstrap: %s.channel_creds[%d].config", path, i)}
			// Fail at New on files that do not load, rather than on every
			// connection attempt later.
			if _, err := r.current(); err != nil {
				return nil, err
			}
			return r, nil
		}
	}
	return nil, fmt.Errorf("bootstrap: %s.channel_creds: server %q has no supported type", path, s.URI)
}

// fileStamp tells whether a file changed since it was last read.
type fileStamp struct {
	size    int64
	modTime time.Time
}

func stamp(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{size: fi.Size(), modTime: fi.ModTime()}, nil
}

// reloadingTLS is gRFC A65 "tls" channel creds whose files are read
// again, before a handshake, when they changed: rotated certificates and
// roots take effect on the next connection, with no restart.
type reloadingTLS struct {
	cfg  jsonTLSCreds
	path string // for errors

	mu     sync.Mutex
	stamps [3]fileStamp
	config *tls.Config
}

func (r *reloadingTLS) files() [3]string {
	return [3]string{r.cfg.CACertificateFile, r.cfg.CertificateFile, r.cfg.PrivateKeyFile}
}

// current returns a TLS config built from the files as they are now,
// shared: callers clone it before they set anything.
func (r *reloadingTLS) current() (*tls.Config, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var stamps [3]fileStamp
	fields := [3]string{"ca_certificate_file", "certificate_file", "private_key_file"}
	for i, f := range r.files() {
		if f == "" {
			continue
		}
		st, err := stamp(f)
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %w", r.path, fields[i], err)
		}
		stamps[i] = st
	}
	if r.config != nil && stamps == r.stamps {
		return r.config, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if f := r.cfg.CACertificateFile; f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("%s.ca_certificate_file: %w", r.path, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s.ca_certificate_file: no PEM certificates in %s", r.path, f)
		}
		tc.RootCAs = pool
	}
	if r.cfg.CertificateFile != "" {
		cert, err := tls.LoadX509KeyPair(r.cfg.CertificateFile, r.cfg.PrivateKeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s.certificate_file: %w", r.path, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	r.config, r.stamps = tc, stamps
	return tc, nil
}

// tokenFileCreds sends the token in a file as a bearer token, reading the
// file again whenever it changed, so a rotated token (a projected
// service-account token, a re-enrolled workload) is used from the next
// stream on.
type tokenFileCreds struct {
	path string

	mu    sync.Mutex
	stamp fileStamp
	token string
}

// authorization is the value of the authorization header of the next
// stream.
func (c *tokenFileCreds) authorization() (string, error) {
	token, err := c.read()
	if err != nil {
		return "", err
	}
	return "Bearer " + token, nil
}

func (c *tokenFileCreds) read() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := stamp(c.path)
	if err != nil {
		return "", fmt.Errorf("xds call credentials: token file: %w", err)
	}
	if c.token != "" && st == c.stamp {
		return c.token, nil
	}
	data, err := os.ReadFile(c.path)
	if err != nil {
		return "", fmt.Errorf("xds call credentials: token file: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" || strings.ContainsAny(token, " \r\n\t") {
		return "", fmt.Errorf("xds call credentials: token file %s: want one token, no spaces", c.path)
	}
	c.token, c.stamp = token, st
	return token, nil
}
