package redisservice

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests of this file cover one load: who runs it, who waits for it,
// what bounds it, and what a panicking or re-entrant loader does.

// TestCacheErrorText: the package name appears once in a loader's error.
func TestCacheErrorText(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	_, err := Cache(ctxT(t), s, "k", time.Minute, func(context.Context) (string, error) { return "", ErrNotFound })
	require.ErrorIs(t, err, ErrNotFound)
	assert.Equal(t, `redisservice: cache "k": load: not found`, err.Error())
	_, err = Cache(ctxT(t), s, "k", time.Minute, func(context.Context) (string, error) { return "", errors.New("db down") })
	assert.Equal(t, `redisservice: cache "k": load: db down`, err.Error())
}
