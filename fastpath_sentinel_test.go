package redisservice

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFastPathThroughSentinel: a Service dialled through the sentinels,
// with the default options, has the fast path: 32 concurrent callers'
// Gets share round trips, and each caller reads its own value; with
// AutoPipeline, a call queued behind a held batch returns as soon as its
// ctx is cancelled. It only reads and writes keys of its own on the
// set's master, so it may share the set with other tests; the failover
// tests, which are not parallel, have run before it.
func TestFastPathThroughSentinel(t *testing.T) {
	t.Parallel()
	t.Run("sentinel", func(t *testing.T) {
		ss := sentinelSetOrSkip(t)
		ss.waitHealthy(t)
		t.Run("concurrent calls share round trips", func(t *testing.T) {
			s := sentinelService(t, ss, Options{Timeout: 10 * time.Second})
			gets := &getCounter{}
			s.rdb.AddHook(gets)
			setGetRounds(t, s, 32, 20)
			assert.Greater(t, gets.most.Load(), int64(1), "most keys read in one round trip")
		})
		t.Run("a queued call returns when its context ends", func(t *testing.T) {
			s := sentinelService(t, ss, Options{AutoPipeline: true, Timeout: time.Minute})
			queuedCallsReturn(t, s, 1, func(ctx context.Context, s *Service, i int) error {
				_, _, err := s.Get(ctx, "{q}k")
				return err
			})
		})
	})
}

// sentinelService returns a Service that dials the master of ss, with
// opts' Timeout, AutoPipeline and queueLimit and a key prefix of its own. At cleanup it deletes its keys and
// is closed.
func sentinelService(t testing.TB, ss sentinelSet, opts Options) *Service {
	t.Helper()
	so := ss.options(t, "")
	so.Timeout, so.AutoPipeline, so.queueLimit = opts.Timeout, opts.AutoPipeline, opts.queueLimit
	s := newService(t, so)
	require.NotNil(t, s.ap, "the Service dialled through the sentinels has no autopipeliner")
	t.Cleanup(func() { // before Close: cleanups run last in, first out
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.NoError(t, deleteByPrefix(ctx, s.rdb, so.KeyPrefix), "cleanup of %s*", so.KeyPrefix)
	})
	return s
}
