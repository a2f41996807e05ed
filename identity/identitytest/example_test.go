package identitytest_test

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"mesh/identity/identitytest"
)

// An SVID from a throwaway CA, which its bundle verifies.
func ExampleCA_Issue() {
	ca, err := identitytest.NewCA("example.org")
	if err != nil {
		panic(err)
	}
	svid, err := ca.Issue("spiffe://example.org/ns/default/sa/payments", time.Hour)
	if err != nil {
		panic(err)
	}
	id, _, err := x509svid.Verify(svid.Certificates, ca.Bundle())
	fmt.Println(id, err)
	// Output: spiffe://example.org/ns/default/sa/payments <nil>
}
