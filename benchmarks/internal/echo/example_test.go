package echo_test

import (
	"context"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh/benchmarks/internal/echo"
)

// One echo over plaintext loopback.
func ExampleCall() {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := grpc.NewServer()
	echo.Register(srv)
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	resp := new(wrapperspb.BytesValue)
	err = echo.Call(context.Background(), conn, echo.NewRequest(), resp)
	fmt.Println(len(resp.Value), err)
	// Output: 1024 <nil>
}
