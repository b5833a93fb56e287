package redisservice

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The per-user index names exactly the user's live sessions, and only
// live sessions count against MaxSessionsPerUser.

func TestDestroyedSessionsDoNotCountAgainstTheCap(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{MaxSessionsPerUser: 2})
		ctx := ctxT(t)
		index := func() []string { return b.client.ZRange(ctx, b.raw("user-sessions:u1"), 0, -1).Val() }
		soon := newSession(t, s, "u1", time.Minute) // the closest to expiring
		gone := newSession(t, s, "u1", time.Hour)
		ok, err := s.DestroySession(ctx, gone)
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, []string{soon}, index(), "DestroySession drops its index entry")
		later := newSession(t, s, "u1", time.Hour)
		assertFound(t, s, soon, "a live session evicted for a destroyed one")
		assertFound(t, s, later, "the new session")

		// Deleted by another writer (the original service's log-out): the
		// entry stays until the index is written over the cap, and then it
		// does not count either.
		require.NoError(t, b.client.Del(ctx, b.raw("session:"+later)).Err())
		last := newSession(t, s, "u1", time.Hour)
		assertFound(t, s, soon, "a live session evicted for a deleted one")
		assertFound(t, s, last, "the new session")
		assert.ElementsMatch(t, []string{soon, last}, index())

		// Live sessions beyond the cap are still evicted, closest to expiring first.
		newest := newSession(t, s, "u1", 2*time.Hour)
		_, found, err := s.GetSession(ctx, soon)
		require.NoError(t, err)
		assert.False(t, found, "the session closest to expiring, beyond the cap")
		assert.ElementsMatch(t, []string{last, newest}, index())
	})
}

func assertFound(t testing.TB, s *Service, id, what string) {
	t.Helper()
	_, found, err := s.GetSession(ctxT(t), id)
	require.NoError(t, err)
	assert.True(t, found, what)
}

// conflictHook changes the session at key (the role gets an "x") just
// before each of the next n script calls on it, as a concurrent update
// would between a read and a write.
type conflictHook struct {
	key  string
	n    atomic.Int64
	raw  redis.UniversalClient
	seen atomic.Int64
}

func (h *conflictHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *conflictHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := make([]string, len(cmd.Args()))
		for i, a := range cmd.Args() {
			args[i] = fmt.Sprint(a)
		}
		if scriptOn(h.key)(args) && h.n.Add(-1) >= 0 {
			h.seen.Add(1)
			v, err := h.raw.Get(ctx, h.key).Result()
			if err == nil {
				err = h.raw.Set(ctx, h.key, strings.Replace(v, `"role":"`, `"role":"x`, 1), redis.KeepTTL).Err()
			}
			if err != nil {
				return err
			}
		}
		return next(ctx, cmd)
	}
}

func (h *conflictHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestRenewSessionIDConflictsLeaveNoIDBehind: each conflict makes
// RenewSessionID start again; the ids of abandoned attempts must not stay
// in the index, where they counted against the cap and evicted live
// sessions.
func TestRenewSessionIDConflictsLeaveNoIDBehind(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		hooked := hookedClient(t, b)
		s := newService(t, Options{Client: hooked, KeyPrefix: b.prefix, MaxSessionsPerUser: 3})
		ctx := ctxT(t)
		others := []string{newSession(t, s, "u1", time.Minute), newSession(t, s, "u1", time.Minute)}
		id := newSession(t, s, "u1", time.Hour)
		h := &conflictHook{key: b.raw("session:" + id), raw: b.client}
		h.n.Store(5)
		hooked.AddHook(h)
		newID, ok, err := s.RenewSessionID(ctx, id)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, int64(5), h.seen.Load(), "conflicts")
		for _, o := range others {
			assertFound(t, s, o, "another session of the user, after a renewal with conflicts")
		}
		assertFound(t, s, newID, "the renewed session")
		assert.ElementsMatch(t, append([]string{newID}, others...), b.client.ZRange(ctx, b.raw("user-sessions:u1"), 0, -1).Val(), "the index")
		var want []string
		for _, k := range append([]string{newID}, others...) {
			want = append(want, b.raw("session:"+k))
		}
		assert.ElementsMatch(t, want, sessionKeys(t, b), "session keys")

		// Conflicts until the attempts run out: nothing is left of them.
		h.key = b.raw("session:" + newID)
		h.n.Store(sessionAttempts)
		_, _, err = s.RenewSessionID(ctx, newID)
		require.ErrorIs(t, err, ErrConflict)
		assert.ElementsMatch(t, append([]string{newID}, others...), b.client.ZRange(ctx, b.raw("user-sessions:u1"), 0, -1).Val(), "the index")
		assert.ElementsMatch(t, want, sessionKeys(t, b), "session keys")
	})
}

// TestRenewSessionIDRacingDestroyUserSessions: log-out-everywhere reads
// the index, then RenewSessionID moves a session to a new id, then the
// deletes run. The renewed session must not survive.
func TestRenewSessionIDRacingDestroyUserSessions(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		hooked := hookedClient(t, b)
		logout := newService(t, Options{Client: hooked, KeyPrefix: b.prefix})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)
		other := newSession(t, s, "u1", time.Minute)
		var renewed atomic.Value
		hooked.AddHook(afterHook{after: func(cmd redis.Cmder) {
			if cmd.Name() == "zrange" && renewed.Load() == nil {
				newID, ok, err := s.RenewSessionID(ctx, id)
				assert.NoError(t, err)
				assert.True(t, ok)
				renewed.Store(newID)
			}
		}})
		n, err := logout.DestroyUserSessions(ctx, "u1")
		require.NoError(t, err)
		newID, _ := renewed.Load().(string)
		require.NotEmpty(t, newID, "the renewal ran")
		assert.Equal(t, int64(2), n, "sessions destroyed")
		for _, x := range []string{id, other, newID} {
			_, found, err := s.GetSession(ctx, x)
			require.NoError(t, err)
			assert.False(t, found, "a session survived log-out-everywhere (renewed: %v)", x == newID)
		}
		assert.Empty(t, b.client.ZRange(ctx, b.raw("user-sessions:u1"), 0, -1).Val(), "the index")
	})
}

// afterHook calls after with each command once Redis has answered it.
type afterHook struct{ after func(redis.Cmder) }

func (h afterHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h afterHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.after(cmd)
		return err
	}
}

func (h afterHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A session with an absolute end is indexed at that end, also under a
// new id, so that touches, which slide only the session's key, can never
// carry it past its index entry.
func TestIndexEntryAtAbsoluteEnd(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		clock := &fixedClock{t: time.Now().Truncate(time.Millisecond)}
		s := b.service(t, Options{Now: clock.now, SessionMaxLifetime: 2 * time.Hour})
		ctx := ctxT(t)
		idx := b.raw("user-sessions:u1")
		end := float64(clock.now().Add(2 * time.Hour).UnixMilli())
		id := newSession(t, s, "u1", 30*time.Minute)
		assert.Equal(t, end, b.client.ZScore(ctx, idx, id).Val(), "CreateSession: index score; want the absolute end")

		newID, ok, err := s.RenewSessionID(ctx, id)
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, end, b.client.ZScore(ctx, idx, newID).Val(), "RenewSessionID: index score; want the absolute end")
		// PTTL counts on the server's clock, which may stand a moment
		// before or after the Service's fixed one (miniredis's was set when
		// the backend was made): a second of room either way.
		d := b.client.PTTL(ctx, idx).Val()
		assert.True(t, d > 119*time.Minute && d <= 2*time.Hour+time.Second, "index PTTL = %v; want that of the absolute end", d)

		// Without an absolute end, the entry ends with the idle expiry.
		plain := b.service(t, Options{Now: clock.now})
		other := newSession(t, plain, "u2", 30*time.Minute)
		assert.Equal(t, float64(clock.now().Add(30*time.Minute).UnixMilli()), b.client.ZScore(ctx, b.raw("user-sessions:u2"), other).Val(), "index score without an absolute end")
	})
}
