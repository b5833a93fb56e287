package redisservice

import (
	"context"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBeginAllocations: a call whose ctx can never end shares a deadline
// (internal/deadline) instead of paying for a timer. It is not parallel:
// AllocsPerRun counts every allocation in the process.
func TestBeginAllocations(t *testing.T) {
	s, err := New(Options{URL: "redis://127.0.0.1:1"})
	require.NoError(t, err)
	defer s.Close()
	type ctxKey struct{}
	valued := context.WithValue(context.Background(), ctxKey{}, 1)
	for _, tt := range []struct {
		name string
		ctx  context.Context
		max  float64
	}{
		{"background", context.Background(), 0},
		{"values", valued, 1},
	} {
		allocs := testing.AllocsPerRun(1000, func() {
			_, done, _ := s.begin(tt.ctx)
			done()
		})
		assert.LessOrEqual(t, allocs, tt.max, "begin(%s) allocations", tt.name)
	}
}

// TestHugeTimeout: an Options.Timeout too large for deadline arithmetic
// (math.MaxInt64) is taken as the largest one, not an overflow that
// fails every call at once.
func TestHugeTimeout(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{Timeout: math.MaxInt64})
	assert.Equal(t, MaxTimeout, s.opts.Timeout)
	cctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for name, ctx := range map[string]context.Context{"Background": context.Background(), "cancellable": cctx} {
		_, err := s.Set(ctx, "k", "v")
		require.NoError(t, err, "Set with %s ctx", name)
		v, found, err := s.Get(ctx, "k")
		require.NoError(t, err, "Get with %s ctx", name)
		assert.True(t, found)
		assert.Equal(t, "v", v)
	}
}
