package redisservice

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestErrorTextNamesThePackageOnce: a call's error reads
// `redisservice: op "key": cause`, with the sentinel's own prefix dropped,
// and still matches the sentinel with errors.Is.
func TestErrorTextNamesThePackageOnce(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := context.Background()

	_, err := s.Set(ctx, "k", "v", NX(), XX())
	require.ErrorIs(t, err, ErrInvalidArgument)
	assert.EqualError(t, err, `redisservice: set "k": invalid argument: NX with XX`)

	_, _, err = s.Get(ctx, "")
	require.ErrorIs(t, err, ErrInvalidKey)
	assert.EqualError(t, err, `redisservice: get "": invalid key`)

	require.NoError(t, s.HSet(ctx, "h", "f", "v"))
	var dst struct{}
	_, err = s.GetJSON(ctx, "h", &dst)
	assert.ErrorContains(t, err, `redisservice: getjson "h": WRONGTYPE`)

	// A session field refused deep down: the field comes after the
	// sentinel's text, and the session id stays redacted.
	const id = "abc"
	late := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	err = s.CreateSession(ctx, id, SessionData{UserID: "u1", CreatedAt: late}, time.Minute)
	require.ErrorIs(t, err, ErrInvalidArgument)
	assert.EqualError(t, err, `redisservice: createsession "session:<redacted>": invalid argument: createdAt: year 10000 outside 0000-9999`)
	require.NoError(t, s.CreateSession(ctx, id, SessionData{UserID: "u1"}, time.Minute))
	_, err = s.UpdateSession(ctx, id, func(d *SessionData) error { d.LastActivity = late; return nil })
	require.ErrorIs(t, err, ErrInvalidArgument)
	assert.EqualError(t, err, `redisservice: updatesession "session:<redacted>": invalid argument: lastActivity: year 10000 outside 0000-9999`)

	require.NoError(t, s.Close())
	_, _, err = s.Get(ctx, "k")
	require.ErrorIs(t, err, ErrClosed)
	assert.EqualError(t, err, `redisservice: get "k": service closed`)
	assert.Equal(t, 1, strings.Count(err.Error(), "redisservice"))
}
