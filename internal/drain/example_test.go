package drain_test

import (
	"net"

	"mesh/internal/drain"
)

func Example() {
	server, client := net.Pipe()
	defer client.Close()
	c := drain.NewConn(server, drain.HTTP2)
	defer c.Close()
	// An HTTP/2 server reads and writes c; when the connection must go:
	go c.GoAway() // sent at the first frame boundary after the server's SETTINGS
	// Output:
}
