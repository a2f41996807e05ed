package testutil_test

import (
	"fmt"
	"log/slog"

	"mesh/internal/testutil"
)

// A component's warnings, as a test reads them.
func ExampleLogs() {
	logs := testutil.NewLogs(slog.LevelWarn)
	logger := slog.New(logs)
	logger.Info("not kept")
	logger.Warn("config file rejected", "file", "mesh.yaml")
	fmt.Println(testutil.Format(<-logs.Records()))
	// Output: config file rejected file=mesh.yaml
}

// A text handler writing from several goroutines into one buffer.
func ExampleBuffer() {
	var buf testutil.Buffer
	slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}})).Info("serving", "addr", "127.0.0.1:8080")
	fmt.Print(buf.String())
	// Output: level=INFO msg=serving addr=127.0.0.1:8080
}
