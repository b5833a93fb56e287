package redisservice

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Session writes whose reply is lost: go-redis sends the command again,
// and the session must come out as if it had been sent once.

func TestUpdateSessionWithALostReplyAppliesOnce(t *testing.T) {
	t.Parallel()
	forEachLossyBackend(t, func(t *testing.T, b *backend, l *lostReplies, s *Service) {
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)
		l.arm(loseAndClose, scriptOn(b.raw("session:"+id)))
		calls := 0
		ok, err := s.UpdateSession(ctx, id, func(d *SessionData) error { calls++; return incr(d, "n") })
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, int64(1), l.lost.Load(), "replies lost")
		require.GreaterOrEqual(t, l.seen.Load(), int64(2), "the write was sent again")
		got, found, err := s.GetSession(ctx, id)
		require.NoError(t, err)
		require.True(t, found)
		assert.Equal(t, "1", string(got.Values["n"]), "one UpdateSession whose reply was lost (fn ran %d times)", calls)
	})
}

func TestRenewSessionIDWithALostReplyKeepsTheSession(t *testing.T) {
	t.Parallel()
	forEachLossyBackend(t, func(t *testing.T, b *backend, l *lostReplies, s *Service) {
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)
		before := stored(t, b, id)
		// The only script on the old key is the delete of the old id.
		l.arm(loseAndClose, scriptOn(b.raw("session:"+id)))
		newID, ok, err := s.RenewSessionID(ctx, id)
		require.Equal(t, int64(1), l.lost.Load(), "replies lost")
		require.GreaterOrEqual(t, l.seen.Load(), int64(2), "the delete was sent again")
		require.NoError(t, err)
		require.True(t, ok, "RenewSessionID with the delete's reply lost reports the session missing")
		assert.Equal(t, before, stored(t, b, newID), "the new id holds the session")
		assert.Zero(t, b.client.Exists(ctx, b.raw("session:"+id)).Val(), "the old id is gone")
		assert.Equal(t, []string{newID}, b.client.ZRange(ctx, b.raw("user-sessions:u1"), 0, -1).Val(), "the index")
	})
}

func TestDestroySessionWithALostReply(t *testing.T) {
	t.Parallel()
	forEachLossyBackend(t, func(t *testing.T, b *backend, l *lostReplies, s *Service) {
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)
		l.arm(loseAndClose, scriptOn(b.raw("session:"+id)))
		ok, err := s.DestroySession(ctx, id)
		require.Equal(t, int64(1), l.lost.Load(), "replies lost")
		require.NoError(t, err)
		assert.True(t, ok, "DestroySession of a live session whose reply was lost")
		assert.Zero(t, b.client.Exists(ctx, b.raw("session:"+id)).Val())
	})
}

// TestRenewSessionIDWithTheNewKeysReplyLost: the write of the new key is
// sent again; it is taken then, by that very write, and must not make
// another new id that nobody knows of.
func TestRenewSessionIDWithTheNewKeysReplyLost(t *testing.T) {
	t.Parallel()
	forEachLossyBackend(t, func(t *testing.T, b *backend, l *lostReplies, s *Service) {
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)
		l.arm(loseAndClose, func(args []string) bool {
			return strings.EqualFold(args[0], "setnx") ||
				(strings.EqualFold(args[0], "set") && slices.ContainsFunc(args, func(a string) bool { return strings.EqualFold(a, "nx") }))
		})
		newID, ok, err := s.RenewSessionID(ctx, id)
		require.Equal(t, int64(1), l.lost.Load(), "replies lost")
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, []string{b.raw("session:" + newID)}, sessionKeys(t, b), "session keys after the renewal")
		assert.Equal(t, []string{newID}, b.client.ZRange(ctx, b.raw("user-sessions:u1"), 0, -1).Val(), "the index")
	})
}

// TestUpdateSessionDeadlineDuringTheWrite: the write ran but its reply
// never came, and the deadline passed. UpdateSession says so: true with
// the error (the outcome is unknown); an error before the write comes
// with false.
func TestUpdateSessionDeadlineDuringTheWrite(t *testing.T) {
	t.Parallel()
	forEachLossyBackend(t, func(t *testing.T, b *backend, l *lostReplies, s *Service) {
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)
		l.arm(loseAndHold, scriptOn(b.raw("session:"+id)))
		short, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		ok, err := s.UpdateSession(short, id, func(d *SessionData) error { return incr(d, "n") })
		require.Error(t, err)
		require.Equal(t, int64(1), l.lost.Load(), "the write was sent and its reply lost (%v)", err)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.True(t, ok, "UpdateSession whose write timed out: want true, the outcome unknown")
		require.Eventually(t, s.IsConnected, 5*time.Second, 5*time.Millisecond)
		got, _, err := s.GetSession(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, "1", string(got.Values["n"]), "the write ran once")

		// Nothing sent: false with the error, nothing written.
		gone, cancel := context.WithCancel(ctx)
		cancel()
		ok, err = s.UpdateSession(gone, id, func(d *SessionData) error { return incr(d, "n") })
		assert.ErrorIs(t, err, context.Canceled)
		assert.False(t, ok)
		got, _, err = s.GetSession(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, "1", string(got.Values["n"]))
	})
}

// sessionKeys returns the test's session keys (not their write-token
// sets), sorted.
func sessionKeys(t testing.TB, b *backend) []string {
	t.Helper()
	ctx := ctxT(t)
	var keys []string
	scan := func(ctx context.Context, c redis.UniversalClient) error {
		iter := c.Scan(ctx, 0, b.raw("session:*"), 1000).Iterator()
		for iter.Next(ctx) {
			if !strings.Contains(strings.TrimPrefix(iter.Val(), b.raw("session:")), sessionWritesSuffix) {
				keys = append(keys, iter.Val())
			}
		}
		return iter.Err()
	}
	var err error
	if cc, ok := b.client.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		err = cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return scan(ctx, n)
		})
	} else {
		err = scan(ctx, b.client)
	}
	require.NoError(t, err)
	slices.Sort(keys)
	return keys
}
