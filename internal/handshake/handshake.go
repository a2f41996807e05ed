// Package handshake carries per-connection security settings from the
// balancer, which knows which cluster an address belongs to, to the transport
// credentials, which perform the handshake. It rides on resolver.Address
// attributes, which gRPC hands to the credentials through
// credentials.ClientHandshakeInfo.
package handshake

import (
	"context"

	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"

	"mesh/xdsclient"
)

type infoKey struct{}

// Info is what the balancer tells the transport about one upstream address.
type Info struct {
	// Cluster is the xDS cluster the address belongs to.
	Cluster string
	// TLS is the cluster's TLS settings; nil means plaintext.
	TLS *xdsclient.UpstreamTLS
}

// Equal lets attributes compare Infos by identity of their TLS settings:
// clusters are immutable, so the same pointer means the same settings.
func (i *Info) Equal(o any) bool {
	oi, ok := o.(*Info)
	return ok && oi.Cluster == i.Cluster && oi.TLS == i.TLS
}

// Set returns addr carrying info.
func Set(addr resolver.Address, info *Info) resolver.Address {
	addr.Attributes = addr.Attributes.WithValue(infoKey{}, info)
	return addr
}

// FromAttributes returns the Info set on an address's attributes, or nil.
func FromAttributes(a *attributes.Attributes) *Info {
	info, _ := a.Value(infoKey{}).(*Info)
	return info
}

// FromContext returns the Info of the address a client handshake in ctx is
// for, or nil.
func FromContext(ctx context.Context) *Info {
	return FromAttributes(credentials.ClientHandshakeInfoFromContext(ctx).Attributes)
}
