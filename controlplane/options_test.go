package controlplane_test

import (
	"testing"

	"mesh/controlplane"
)

// TestDaemonOptionsLeaveOutWhatTheDaemonSets: NewDaemon sets the state
// directory and the configuration from its DaemonConfig, so the options
// that would set them are not DaemonOptions it could take and override.
func TestDaemonOptionsLeaveOutWhatTheDaemonSets(t *testing.T) {
	for name, o := range map[string]controlplane.Option{
		"WithStateDir":          controlplane.WithStateDir(t.TempDir()),
		"WithConfig":            controlplane.WithConfig(nil),
		"WithConfigFile":        controlplane.WithConfigFile("mesh.yaml"),
		"WithFileCheckInterval": controlplane.WithFileCheckInterval(0),
		"WithCA":                controlplane.WithCA(nil, nil),
	} {
		if _, ok := o.(controlplane.DaemonOption); ok {
			t.Errorf("%s is a DaemonOption, which NewDaemon would override", name)
		}
	}
	for name, o := range map[string]controlplane.Option{
		"WithAddress":     controlplane.WithAddress("127.0.0.1:0"),
		"WithWorkloads":   controlplane.WithWorkloads(),
		"WithTrustDomain": controlplane.WithTrustDomain("example.org"),
	} {
		if _, ok := o.(controlplane.DaemonOption); !ok {
			t.Errorf("%s is not a DaemonOption", name)
		}
	}
}
