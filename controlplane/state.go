package controlplane

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Files of the state directory (see WithStateDir). The keys are written
// 0600 and refused when others may read them.
const (
	StateCACertFile   = "ca-cert.pem"
	StateCAKeyFile    = "ca-key.pem"
	StateTokenKeyFile = "token-key"
)

// state is what a control plane keeps across restarts.
type state struct {
	caCertPEM, caKeyPEM []byte
	tokenKey            []byte // signs the CA service's enrollment tokens
}

// loadState reads dir's state, or makes a new one there (a CA and a token
// key) when dir holds none. Partial or unsafe state is an error naming the
// file: a control plane must not silently start a second CA.
func loadState(dir string) (*state, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", dir, err)
	}
	cert, certErr := os.ReadFile(filepath.Join(dir, StateCACertFile))
	key, keyErr := readSecret(filepath.Join(dir, StateCAKeyFile))
	token, tokenErr := readSecret(filepath.Join(dir, StateTokenKeyFile))
	for _, err := range []error{certErr, keyErr, tokenErr} {
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("state dir %s: %w", dir, err)
		}
	}
	st := &state{}
	switch {
	case certErr == nil && keyErr == nil:
		st.caCertPEM, st.caKeyPEM = cert, key
	case certErr != nil && keyErr != nil:
		// No CA yet: New makes one and saveCA writes it.
	case certErr != nil:
		return nil, fmt.Errorf("state dir %s: %s exists without %s", dir, StateCAKeyFile, StateCACertFile)
	default:
		return nil, fmt.Errorf("state dir %s: %s exists without %s", dir, StateCACertFile, StateCAKeyFile)
	}
	if tokenErr == nil {
		st.tokenKey, tokenErr = hex.DecodeString(strings.TrimSpace(string(token)))
		if tokenErr != nil || len(st.tokenKey) < 32 {
			return nil, fmt.Errorf("state dir %s: %s: want at least 32 bytes in hex", dir, StateTokenKeyFile)
		}
		return st, nil
	}
	st.tokenKey = make([]byte, 32)
	_, _ = rand.Read(st.tokenKey) // crypto/rand.Read never fails; it crashes instead
	if err := writeFileAtomic(filepath.Join(dir, StateTokenKeyFile), []byte(hex.EncodeToString(st.tokenKey)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", dir, err)
	}
	return st, nil
}

// readSecret reads a key file, refusing one that others than its owner may
// read or write.
func readSecret(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s: mode %#o lets others read or write a key; want 0600", path, perm)
	}
	return os.ReadFile(path)
}

// saveCA writes a newly made CA into dir.
func saveCA(dir string, a *authority) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(a.key)
	if err != nil {
		return fmt.Errorf("state dir %s: encode ca key: %w", dir, err)
	}
	if err := writeFileAtomic(filepath.Join(dir, StateCAKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("state dir %s: %w", dir, err)
	}
	if err := writeFileAtomic(filepath.Join(dir, StateCACertFile), a.certPEM, 0o644); err != nil {
		return fmt.Errorf("state dir %s: %w", dir, err)
	}
	return nil
}
