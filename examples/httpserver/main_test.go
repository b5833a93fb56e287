package main

import (
	"os"
	"testing"

	"github.com/vevurn/redisservice/internal/testlog"
)

// TestMain keeps go-redis's log lines and slog.Default()'s (failed dials of
// the tests that stop a server) out of the output of a run that passes.
func TestMain(m *testing.M) {
	logs := testlog.Install()
	code := m.Run()
	if code != 0 {
		_, _ = logs.WriteTo(os.Stderr)
	}
	os.Exit(code)
}
