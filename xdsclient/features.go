package xdsclient

import "slices"

func (s ServerConfig) hasFeature(f string) bool { return slices.Contains(s.ServerFeatures, f) }
