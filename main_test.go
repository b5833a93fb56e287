package redisservice

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vevurn/redisservice/internal/testlog"
)

// heldLogs keeps the lines of go-redis and slog.Default(): a test that
// makes clients, servers or ports through the helpers (newBackend,
// newService, freePort, closedPort, stalledServer, ctxT) prints those
// logged while it ran, if it fails.
var heldLogs *testlog.Log

func TestMain(m *testing.M) {
	heldLogs = testlog.Install()
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(3 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines left behind after the tests (a Service or client not closed?):\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines waits up to d for the goroutines started by this
// package, go-redis, miniredis or otter (the local tier's cache) to end,
// and returns the stacks of those that did not.
func leakedGoroutines(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		var leaked []string
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "leakedGoroutines") || strings.Contains(g, "testing.(*M)") {
				continue
			}
			if strings.Contains(g, "vevurn/redisservice.") || strings.Contains(g, "redis/go-redis") || strings.Contains(g, "alicebob/miniredis") ||
				strings.Contains(g, "maypok86/otter") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
