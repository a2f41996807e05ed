package xdsclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
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

// dialOptions are the channel and call credentials for one xDS server.
func dialOptions(s ServerConfig, path string) ([]grpc.DialOption, error) {
	tc, err := transportCredentials(s, path)
	if err != nil {
		return nil, err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(tc)}
	for i, cc := range s.CallCreds {
		if cc.Type != CallCredsJWTTokenFile {
			continue // gRFC A97: unsupported call creds are ignored
		}
		file, err := parseTokenFileConfig(cc.Config)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: %s.call_creds[%d].config: %w", path, i, err)
		}
		opts = append(opts, grpc.WithPerRPCCredentials(&tokenFileCreds{path: file}))
	}
	return opts, nil
}

func transportCredentials(s ServerConfig, path string) (credentials.TransportCredentials, error) {
	for i, cc := range s.ChannelCreds {
		switch cc.Type {
		case CredsInsecure:
			return insecure.NewCredentials(), nil
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
	cfg        jsonTLSCreds
	path       string // for errors
	serverName string // set by OverrideServerName

	mu     sync.Mutex
	stamps [3]fileStamp
	creds  credentials.TransportCredentials
}

func (r *reloadingTLS) files() [3]string {
	return [3]string{r.cfg.CACertificateFile, r.cfg.CertificateFile, r.cfg.PrivateKeyFile}
}

// current returns TLS credentials built from the files as they are now.
func (r *reloadingTLS) current() (credentials.TransportCredentials, error) {
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
	if r.creds != nil && stamps == r.stamps {
		return r.creds, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: r.serverName}
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
	r.creds, r.stamps = credentials.NewTLS(tc), stamps
	return r.creds, nil
}

func (r *reloadingTLS) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, err := r.current()
	if err != nil {
		return nil, nil, err
	}
	return c.ClientHandshake(ctx, authority, conn)
}

func (r *reloadingTLS) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("xds: tls channel creds are client-side only")
}

func (r *reloadingTLS) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.2", ServerName: r.serverName}
}

func (r *reloadingTLS) Clone() credentials.TransportCredentials {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &reloadingTLS{cfg: r.cfg, path: r.path, serverName: r.serverName}
}

func (r *reloadingTLS) OverrideServerName(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.serverName, r.creds = name, nil
	return nil
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

func (c *tokenFileCreds) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	token, err := c.read()
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
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

// RequireTransportSecurity keeps the token off plaintext channels.
func (c *tokenFileCreds) RequireTransportSecurity() bool { return true }
