package redisservice

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCheckRateLimitAllocations holds CheckRateLimit to at most two
// allocations more than a bare EVALSHA of the same script through
// go-redis (the call's bound, the key with its prefix), on a real server so
// that no server runs in this process. It is not parallel: AllocsPerRun
// counts every allocation in the process.
func TestCheckRateLimitAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts vary under -race (sync.Pool drops items at random); .ci/run runs this test without it")
	}
	b := newBackend(t, "redis")
	s := b.service(t, Options{})
	ctx := context.Background()
	const limit = 1 << 30
	_, err := s.CheckRateLimit(ctx, "allocs", time.Hour, limit) // loads the script
	require.NoError(t, err)
	key := b.raw("ratelimit:allocs")
	sha := rateLimitScript.Hash()
	// A request's context: cancellable, without a deadline.
	reqCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, c := range []struct {
		name string
		ctx  context.Context
	}{{"Background", ctx}, {"request", reqCtx}} {
		// The fewest of five measures: a goroutine of another test's
		// Service (a PING, a tracker) can allocate during one, never take
		// allocations away.
		bare, service := fewestAllocs(func() {
			_, _ = b.client.EvalSha(c.ctx, sha, []string{key}, time.Hour.Milliseconds()).Slice()
		}), fewestAllocs(func() {
			_, _ = s.CheckRateLimit(c.ctx, "allocs", time.Hour, limit)
		})
		t.Logf("%s ctx: allocations per call: bare EVALSHA %.1f, CheckRateLimit %.1f", c.name, bare, service)
		assert.LessOrEqual(t, service, bare+2, "%s ctx: CheckRateLimit allocations beyond a bare EVALSHA", c.name)
	}
}

// fewestAllocs is the fewest allocations per run of fn over five measures
// of 200 runs.
func fewestAllocs(fn func()) float64 {
	fewest := testing.AllocsPerRun(200, fn)
	for range 4 {
		fewest = min(fewest, testing.AllocsPerRun(200, fn))
	}
	return fewest
}
