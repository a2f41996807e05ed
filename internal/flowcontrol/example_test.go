package flowcontrol_test

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"mesh/internal/flowcontrol"
)

// A channel and a server with the mesh's fixed windows.
func Example() {
	srv := grpc.NewServer(flowcontrol.ServerOptions()...)
	defer srv.Stop()
	conn, err := grpc.NewClient("passthrough:///127.0.0.1:1", append(flowcontrol.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	fmt.Println(flowcontrol.StreamWindow>>20, "MiB per stream,", flowcontrol.ConnWindow>>20, "MiB per connection")
	// Output: 4 MiB per stream, 16 MiB per connection
}
