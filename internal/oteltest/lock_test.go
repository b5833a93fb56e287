package oteltest_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// TestLockOperations: each lock call is one operation under its own op,
// with one span: TryLock, Refresh, Unlock, and a Lock that finds the key
// free.
func TestLockOperations(t *testing.T) {
	t.Parallel()
	o := newObserved(t, redisservice.Options{})
	ctx := ctxT(t)
	l, err := o.svc.TryLock(ctx, "stock:A-1", time.Minute)
	require.NoError(t, err)
	require.NoError(t, l.Refresh(ctx, time.Minute))
	require.NoError(t, l.Unlock(ctx))
	l, err = o.svc.Lock(ctx, "stock:A-1", time.Minute)
	require.NoError(t, err)
	require.Equal(t, int64(2), l.Token())

	assert.Equal(t, map[string]int64{
		"redisservice.op=trylock,redisservice.outcome=ok":     1,
		"redisservice.op=refreshlock,redisservice.outcome=ok": 1,
		"redisservice.op=unlock,redisservice.outcome=ok":      1,
		"redisservice.op=lock,redisservice.outcome=ok":        1,
	}, o.sums(t, "redisservice.operations"))
	var names []string
	for _, s := range o.spans.Ended() {
		names = append(names, s.Name())
	}
	assert.Equal(t, []string{"redisservice.trylock", "redisservice.refreshlock", "redisservice.unlock", "redisservice.lock"}, names)
}
