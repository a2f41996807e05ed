package controlplane_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"mesh/controlplane"
)

// WithSDS makes generated TLS contexts name the "default" and "ROOTCA"
// SDS secrets, which the server mints per node from its NAMESPACE and
// SERVICE_ACCOUNT metadata and re-mints every WithSDSRotation interval.
func ExampleWithSDS() {
	cp, err := controlplane.New(context.Background(),
		controlplane.WithSDS(true), controlplane.WithSDSRotation(time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	defer cp.Close()
	fmt.Println(controlplane.SecretDefault, controlplane.SecretRootCA)
	// Output:
	// default ROOTCA
}
