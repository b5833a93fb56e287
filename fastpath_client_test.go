package redisservice

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A client passed in is its owner's: go-redis shares one deferred
// autopipeliner per client, and the owner may close it (as go-redis's
// docs tell them to, to release its goroutines) while the client stays
// open. The Service's calls must go on working, and Redis must not be
// taken for down.
func TestPassedInClientsAutopipelinerClosedByItsOwner(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{AutoPipeline: true})
		require.NotNil(t, s.ap, "the Service has no autopipeliner")
		ctx := ctxT(t)
		ok, err := s.Set(ctx, "k", "v1")
		require.True(t, ok && err == nil, "Set(%q) = %v, %v; want true, nil", "k", ok, err)

		owners, err := b.client.(asyncPipeliner).AsyncAutoPipelineWithOptions(nil)
		require.NoError(t, err, "the owner's AsyncAutoPipeline")
		require.Same(t, s.ap, owners, "go-redis shares one deferred autopipeliner per client")
		require.NoError(t, owners.Close(), "the owner's Close of its autopipeliner")
		require.NoError(t, b.client.Ping(ctx).Err(), "the client itself stays open")

		for i := range 3 {
			want := fmt.Sprintf("v%d", i+2)
			ok, err := s.Set(ctx, "k", want)
			assert.True(t, ok && err == nil, "Set(%q) = %v, %v; want true, nil", "k", ok, err)
			got, found, err := s.Get(ctx, "k")
			assert.True(t, got == want && found && err == nil, "Get(%q) = %q, %v, %v; want %q, true, nil", "k", got, found, err, want)
		}
		st := s.Stats()
		assert.True(t, st.Errors == 0 && st.Connected, "Stats() = %+v; want no errors and Connected", st)
	})
}

// Close of a Service whose Redis stalls while calls are queued in the
// autopipeliner returns within its Timeout, as it does without the
// autopipeliner: go-redis's own Close waits for every queued command to
// be tried against the stalled server, up to 30 seconds.
func TestCloseWithCallsQueuedBehindAStalledServer(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	s := dialled(t, "redis://"+stalledServer(t), Options{Timeout: timeout, AutoPipeline: true})
	require.NotNil(t, s.ap, "the Service has no autopipeliner")
	var wg sync.WaitGroup
	defer wg.Wait()
	for range 64 {
		wg.Go(func() {
			_, _, err := s.Get(context.Background(), "k")
			assert.Error(t, err, "Get on a stalled server")
		})
	}
	waitFor(t, "64 calls in flight", func() bool { return s.inFlight.Load() == 64 })

	start := time.Now()
	err := s.Close()
	took := time.Since(start)
	assert.Less(t, took, 10*timeout, "Close with 64 calls queued took %v (err %v); want it bounded by Timeout (%v)", took, err, timeout)
	wg.Wait()
	// The client's own close goes on until go-redis gives up on the
	// stalled server; wait for it, so that it leaves no goroutine behind.
	select {
	case <-s.clientClosed:
	case <-time.After(2 * time.Minute):
		require.FailNow(t, "the dialled client's Close never returned")
	}
}
