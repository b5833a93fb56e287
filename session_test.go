package redisservice

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice/internal/jsonobj"
)

func newSession(t testing.TB, s *Service, uid string, ttl time.Duration) string {
	t.Helper()
	id, err := NewSessionID()
	require.NoError(t, err)
	data := SessionData{UserID: uid, Email: uid + "@example.com", Role: "cashier", IP: "203.0.113.7", UserAgent: "till/1.0"}
	require.NoError(t, s.CreateSession(ctxT(t), id, data, ttl), "CreateSession")
	return id
}

func TestNewSessionID(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 1000 {
		id, err := NewSessionID()
		require.NoError(t, err)
		require.Len(t, id, 43, "NewSessionID() = %q", id)
		require.True(t, validSessionID(id), "NewSessionID() = %q; want URL-unreserved characters", id)
		require.NotContains(t, id, "=")
		require.False(t, seen[id], "NewSessionID() repeated %q", id)
		seen[id] = true
	}
}

func TestSessionLifecycle(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)

		raw := b.client.Get(ctx, b.raw("session:"+id)).Val()
		for _, field := range []string{`"userId":"u1"`, `"email":`, `"role":"cashier"`, `"createdAt":`, `"lastActivity":`, `"ip":"203.0.113.7"`, `"userAgent":"till/1.0"`} {
			assert.Contains(t, raw, field, "stored session")
		}
		assert.True(t, strings.HasPrefix(raw, `{"userId":"u1","email":"u1@example.com","role":"cashier","createdAt":"`), "stored session %s: want the original service's key order", raw)
		got := getSession(t, s, id)
		assert.Equal(t, "u1", got.UserID)
		assert.False(t, got.CreatedAt.IsZero())
		assert.False(t, got.LastActivity.IsZero())
		assert.Nil(t, got.Values, "a session without application fields has nil Values")

		got, found, err := s.GetSession(ctx, "unknown-id")
		assert.NoError(t, err)
		assert.False(t, found)
		assert.Equal(t, SessionData{}, got, "GetSession(unknown)")

		ok, err := s.DestroySession(ctx, id)
		assert.True(t, ok, "DestroySession")
		assert.NoError(t, err)
		ok, err = s.DestroySession(ctx, id)
		assert.False(t, ok, "second DestroySession")
		assert.NoError(t, err)
		ok, err = s.UpdateSessionActivity(ctx, id)
		assert.False(t, ok, "UpdateSessionActivity after destroy")
		assert.NoError(t, err)
		assert.False(t, sessionExists(t, b, id), "UpdateSessionActivity resurrected a destroyed session")
	})
}

func TestSessionWrittenByTheOriginalService(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		old := `{"userId":"u9","email":"a@b.c","role":"admin","createdAt":"2024-01-02T03:04:05.000Z","lastActivity":"2024-01-02T03:04:05.000Z","ip":"1.2.3.4","userAgent":"Mozilla/5.0"}`
		b.client.Set(ctx, b.raw("session:legacy-id_1"), old, 5*time.Second)
		got, found, err := s.GetSession(ctx, "legacy-id_1")
		want := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
		require.NoError(t, err)
		require.True(t, found)
		assert.Equal(t, "u9", got.UserID)
		assert.Equal(t, "admin", got.Role)
		assert.True(t, got.CreatedAt.Equal(want), "CreatedAt = %v", got.CreatedAt)
		assert.Equal(t, "Mozilla/5.0", got.UserAgent)

		touchSession(t, s, "legacy-id_1")
		d := sessionTTL(t, b, "legacy-id_1")
		assert.True(t, d > 0 && d <= 5*time.Second, "old session's PTTL after update = %v; want its remaining TTL kept", d)
		got, _, err = s.GetSession(ctx, "legacy-id_1")
		require.NoError(t, err)
		assert.Equal(t, "Mozilla/5.0", got.UserAgent)
		assert.True(t, got.LastActivity.After(want), "LastActivity = %v", got.LastActivity)

		// An old session without any TTL stays without one (KEEPTTL), still readable.
		b.client.Set(ctx, b.raw("session:legacy-id_2"), old, 0)
		touchSession(t, s, "legacy-id_2")
		assert.Equal(t, time.Duration(-1), sessionTTL(t, b, "legacy-id_2"), "old session without TTL after update; want none")
		b.client.Del(ctx, b.raw("session:legacy-id_2"))
		_, found, err = s.GetSession(ctx, "legacy-id_2")
		assert.False(t, found, "GetSession after Del")
		assert.NoError(t, err)
	})
}

func TestSessionSlidesToItsOwnTTL(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		// A second of the TTL passes before the update, and the session
		// still has two: no stall of a loaded machine ends it first.
		ttl, passed := 3*time.Second, time.Second
		id := newSession(t, s, "u1", ttl)
		b.pass(passed)
		touchSession(t, s, id)
		d := sessionTTL(t, b, id)
		assert.True(t, d > ttl-passed && d <= ttl, "PTTL after update = %v; want the session's own %v again", d, ttl)
		b.pass(ttl)
		b.waitFor(t, "idle session expires", func() bool {
			_, found, err := s.GetSession(ctx, id)
			return !found && err == nil
		})
		ok, _ := s.UpdateSessionActivity(ctx, id)
		assert.False(t, ok, "UpdateSessionActivity of an expired session")
	})
}

func TestSessionMaxLifetime(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		clock := &fixedClock{t: time.Now()}
		// The lifetime runs on the Service's clock (Options.Now), which
		// advance moves; a real server's TTLs are left to run on their own,
		// far from ending during the test.
		advance := func(d time.Duration) {
			clock.advance(d)
			if !b.real() {
				b.pass(d)
			}
		}
		s := b.service(t, Options{SessionMaxLifetime: 6 * time.Second, Now: clock.now})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", 4*time.Second)
		advance(3 * time.Second)
		touchSession(t, s, id)
		d := sessionTTL(t, b, id)
		assert.True(t, d > 0 && d <= 3*time.Second, "PTTL near the cap = %v; want at most the 3s left of the lifetime", d)
		advance(3500 * time.Millisecond)
		ok, _ := s.UpdateSessionActivity(ctx, id)
		assert.False(t, ok, "UpdateSessionActivity past SessionMaxLifetime; want the session ended")
		b.waitFor(t, "capped session is gone", func() bool {
			_, found, _ := s.GetSession(ctx, id)
			return !found
		})
	})
}

func TestSessionConcurrentUpdatesAndDestroy(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				_, err := s.UpdateSessionActivity(ctx, id)
				assert.NoError(t, err, "UpdateSessionActivity")
			})
		}
		wg.Wait()
		got := getSession(t, s, id)
		assert.Equal(t, "u1@example.com", got.Email)
		assert.Equal(t, "203.0.113.7", got.IP)

		// Destroy racing updates: once destroyed, the session stays gone.
		id2 := newSession(t, s, "u2", time.Minute)
		for range 16 {
			wg.Go(func() { _, _ = s.UpdateSessionActivity(ctx, id2) })
		}
		ok, err := s.DestroySession(ctx, id2)
		assert.True(t, ok, "DestroySession")
		assert.NoError(t, err)
		wg.Wait()
		_, found, _ := s.GetSession(ctx, id2)
		assert.False(t, found, "a destroyed session came back after racing updates")
	})
}

func TestDestroyUserSessions(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		var ids []string
		for range 10 { // spread over the slots of every cluster master
			ids = append(ids, newSession(t, s, "u1", time.Minute))
		}
		other := newSession(t, s, "u2", time.Minute)
		_, err := s.DestroySession(ctx, ids[0])
		require.NoError(t, err)
		n, err := s.DestroyUserSessions(ctx, "u1")
		assert.NoError(t, err)
		assert.Equal(t, int64(9), n, "DestroyUserSessions(u1): want the live ones")
		for _, id := range ids {
			_, found, _ := s.GetSession(ctx, id)
			assert.False(t, found, "a session of u1 survived DestroyUserSessions")
		}
		_, found, _ := s.GetSession(ctx, other)
		assert.True(t, found, "DestroyUserSessions(u1) destroyed u2's session")
		n, err = s.DestroyUserSessions(ctx, "u1")
		assert.NoError(t, err)
		assert.Zero(t, n, "second DestroyUserSessions")
		n, err = s.DestroyUserSessions(ctx, "nobody")
		assert.NoError(t, err)
		assert.Zero(t, n, "DestroyUserSessions(nobody)")
	})
}

func TestSessionIndexIsBounded(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{MaxSessionsPerUser: 3})
		ctx := ctxT(t)
		var ids []string
		for i := range 5 {
			ids = append(ids, newSession(t, s, "u1", time.Duration(10+10*i)*time.Second))
		}
		idx := b.raw("user-sessions:u1")
		assert.Equal(t, int64(3), b.client.ZCard(ctx, idx).Val(), "index size; want the cap")
		d := b.client.PTTL(ctx, idx).Val()
		assert.True(t, d > 40*time.Second && d <= 50100*time.Millisecond, "index PTTL = %v; want that of its last session (50s)", d)
		for i, id := range ids {
			_, found, _ := s.GetSession(ctx, id)
			assert.Equal(t, i >= 2, found, "session %d found (the two closest to expiring are evicted)", i)
		}
	})
}

// roundTrips counts what a client sends: one per command, one per
// pipeline, leaving out a new connection's handshake (HELLO, CLIENT
// SETINFO).
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() != "hello" {
			r.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && cmds[0].Name() != "client" {
			r.n.Add(1)
		}
		return next(ctx, cmds)
	}
}

// TestSessionRoundTrips checks the round trips the docs state, on one
// node (the scripts loaded beforehand).
func TestSessionRoundTrips(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	rt := new(roundTrips)
	b.client.AddHook(rt)
	s := b.service(t, Options{MaxSessionsPerUser: 3})
	legacy := b.service(t, Options{MaxSessionsPerUser: 3, LegacySessions: true})
	ctx := ctxT(t)
	for _, script := range []*redis.Script{sessionIndexScript, sessionTouchScript, sessionCASScript} {
		require.NoError(t, script.Load(ctx, b.client).Err())
	}
	count := func(what string, want int64, f func()) {
		t.Helper()
		before := rt.n.Load()
		f()
		assert.Equal(t, want, rt.n.Load()-before, "round trips of %s", what)
	}
	create := func(uid string, ttl time.Duration) string {
		id, err := NewSessionID()
		require.NoError(t, err)
		require.NoError(t, s.CreateSession(ctx, id, SessionData{UserID: uid}, ttl))
		return id
	}
	count("CreateSession", 2, func() { create("u0", time.Minute) })
	create("u0", time.Minute)
	create("u0", time.Minute)
	count("CreateSession that evicts", 5, func() { create("u0", time.Minute) })

	a := create("u1", time.Hour)
	other := create("u1", time.Minute)
	count("UpdateSessionActivity", 2, func() { _, _ = s.UpdateSessionActivity(ctx, a) })
	count("GetSession", 1, func() { _, _, _ = s.GetSession(ctx, a) })
	count("GetSession with LegacySessions", 2, func() { _, _, _ = legacy.GetSession(ctx, a) })
	count("RenewSessionID", 5, func() { _, _, _ = s.RenewSessionID(ctx, a) })
	count("UserSessions of nobody", 1, func() { _, _ = s.UserSessions(ctx, "nobody") })
	count("UserSessions", 2, func() { _, _ = s.UserSessions(ctx, "u1") })
	b.mr.Del(b.raw("session:" + other))
	count("UserSessions dropping a gone session", 3, func() { _, _ = s.UserSessions(ctx, "u1") })
	count("DestroyUserSessions of nobody", 1, func() { _, _ = s.DestroyUserSessions(ctx, "nobody") })
	count("DestroyUserSessions", 3, func() { _, _ = s.DestroyUserSessions(ctx, "u1") })
	gone := create("u2", time.Minute)
	create("u2", time.Minute)
	b.mr.Del(b.raw("session:" + gone))
	count("DestroyUserSessions with a session gone", 4, func() { _, _ = s.DestroyUserSessions(ctx, "u2") })
	c := create("u3", time.Minute)
	count("DestroySession", 2, func() { _, _ = s.DestroySession(ctx, c) })
	count("DestroySession of a missing session", 1, func() { _, _ = s.DestroySession(ctx, c) })
}

func TestSessionInvalidInput(t *testing.T) {
	t.Parallel()
	good := SessionData{UserID: "u1"}
	withValue := func(k, v string) SessionData {
		return SessionData{UserID: "u1", Values: map[string]json.RawMessage{k: json.RawMessage(v)}}
	}
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		// The updates below are refused, and leave this session alone.
		existing := newSession(t, s, "u1", time.Minute)
		before := stored(t, b, existing)
		update := func(fn func(d *SessionData)) error {
			ok, err := s.UpdateSession(ctx, existing, func(d *SessionData) error { fn(d); return nil })
			assert.False(t, ok, "UpdateSession refused")
			return err
		}
		tests := []struct {
			name string
			err  error
			want error
		}{
			{"empty id", s.CreateSession(ctx, "", good, time.Minute), ErrInvalidKey},
			{"long id", s.CreateSession(ctx, strings.Repeat("a", 257), good, time.Minute), ErrInvalidKey},
			{"glob id", s.CreateSession(ctx, "abc*", good, time.Minute), ErrInvalidKey},
			{"space id", s.CreateSession(ctx, "a b", good, time.Minute), ErrInvalidKey},
			{"no user", s.CreateSession(ctx, "abc", SessionData{}, time.Minute), ErrInvalidArgument},
			{"zero ttl", s.CreateSession(ctx, "abc", good, 0), ErrInvalidTTL},
			{"sub-ms ttl", s.CreateSession(ctx, "abc", good, time.Microsecond), ErrInvalidTTL},
			{"Values userId", s.CreateSession(ctx, "abc", withValue("userId", `"u2"`), time.Minute), ErrInvalidArgument},
			{"Values lastActivity", s.CreateSession(ctx, "abc", withValue("lastActivity", `"x"`), time.Minute), ErrInvalidArgument},
			{"Values idleTimeoutMs", s.CreateSession(ctx, "abc", withValue("idleTimeoutMs", `1`), time.Minute), ErrInvalidArgument},
			{"Values expiresAtMs", s.CreateSession(ctx, "abc", withValue("expiresAtMs", `1`), time.Minute), ErrInvalidArgument},
			{"Values bad JSON", s.CreateSession(ctx, "abc", withValue("cart", `{"a":`), time.Minute), ErrInvalidArgument},
			{"Values empty", s.CreateSession(ctx, "abc", withValue("cart", ``), time.Minute), ErrInvalidArgument},
			{"Values two values", s.CreateSession(ctx, "abc", withValue("cart", `1 2`), time.Minute), ErrInvalidArgument},
			// Names and fields given by the caller: invalid UTF-8 is refused, never replaced.
			{"Values keys of invalid UTF-8", s.CreateSession(ctx, "abc", SessionData{UserID: "u1", Values: map[string]json.RawMessage{"a\xff": json.RawMessage(`1`), "a\xfe": json.RawMessage(`2`)}}, time.Minute), ErrInvalidArgument},
			{"an Email of invalid UTF-8", s.CreateSession(ctx, "abc", SessionData{UserID: "u1", Email: "a\xffb"}, time.Minute), ErrInvalidArgument},
			{"year 10000", s.CreateSession(ctx, "abc", SessionData{UserID: "u1", CreatedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, time.Minute), ErrInvalidArgument},
			{"get empty", func() error { _, _, err := s.GetSession(ctx, ""); return err }(), ErrInvalidKey},
			{"update empty", func() error { _, err := s.UpdateSessionActivity(ctx, ""); return err }(), ErrInvalidKey},
			{"update fn empty", func() error { _, err := s.UpdateSession(ctx, "", func(*SessionData) error { return nil }); return err }(), ErrInvalidKey},
			{"update nil fn", func() error { _, err := s.UpdateSession(ctx, "abc", nil); return err }(), ErrInvalidArgument},
			{"update changing UserID", update(func(d *SessionData) { d.UserID = "u2" }), ErrInvalidArgument},
			{"update Values userId", update(func(d *SessionData) { _ = incr(d, "userId") }), ErrInvalidArgument},
			{"update Values createdAt", update(func(d *SessionData) { _ = incr(d, "createdAt") }), ErrInvalidArgument},
			{"update Values idleTimeoutMs", update(func(d *SessionData) { _ = incr(d, "idleTimeoutMs") }), ErrInvalidArgument},
			{"update Values expiresAtMs", update(func(d *SessionData) { _ = incr(d, "expiresAtMs") }), ErrInvalidArgument},
			{"update Values bad JSON", update(func(d *SessionData) { d.Values = map[string]json.RawMessage{"x": json.RawMessage(`{`)} }), ErrInvalidArgument},
			{"update adding a Values key of invalid UTF-8", update(func(d *SessionData) { d.Values = map[string]json.RawMessage{"k\xff": json.RawMessage(`1`)} }), ErrInvalidArgument},
			{"update setting a UserAgent of invalid UTF-8", update(func(d *SessionData) { d.UserAgent = "\xff" }), ErrInvalidArgument},
			{"renew empty", func() error { _, _, err := s.RenewSessionID(ctx, ""); return err }(), ErrInvalidKey},
			{"destroy empty", func() error { _, err := s.DestroySession(ctx, ""); return err }(), ErrInvalidKey},
			{"destroy user empty", func() error { _, err := s.DestroyUserSessions(ctx, ""); return err }(), ErrInvalidKey},
			{"user sessions empty", func() error { _, err := s.UserSessions(ctx, ""); return err }(), ErrInvalidKey},
		}
		for _, tt := range tests {
			assert.ErrorIs(t, tt.err, tt.want, tt.name)
		}
		assert.ElementsMatch(t, []string{b.raw("session:" + existing), b.raw("user-sessions:u1")}, keysUnder(t, b), "invalid calls wrote keys")
		assert.Equal(t, before, stored(t, b, existing), "refused updates must leave the session alone")
		for _, id := range []string{"../../etc", "abc*", strings.Repeat("a", 257)} {
			_, found, err := s.GetSession(ctx, id)
			assert.False(t, found)
			assert.ErrorIs(t, err, ErrInvalidKey, "GetSession(%.20q)", id)
			ok, err := s.UpdateSessionActivity(ctx, id)
			assert.False(t, ok)
			assert.ErrorIs(t, err, ErrInvalidKey, "UpdateSessionActivity(%.20q)", id)
			ok, err = s.UpdateSession(ctx, id, func(*SessionData) error { return nil })
			assert.False(t, ok)
			assert.ErrorIs(t, err, ErrInvalidKey, "UpdateSession(%.20q)", id)
			newID, ok, err := s.RenewSessionID(ctx, id)
			assert.False(t, ok)
			assert.Empty(t, newID)
			assert.ErrorIs(t, err, ErrInvalidKey, "RenewSessionID(%.20q)", id)
			ok, err = s.DestroySession(ctx, id)
			assert.False(t, ok)
			assert.ErrorIs(t, err, ErrInvalidKey, "DestroySession(%.20q)", id)
		}
	})
}

func TestSessionErrorsHideTheID(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		id, _ := NewSessionID()
		b.client.HSet(ctx, b.raw("session:"+id), "f", "v") // WRONGTYPE for every call
		_, _, err1 := s.GetSession(ctx, id)
		_, err2 := s.UpdateSessionActivity(ctx, id)
		_, err3 := s.UpdateSession(ctx, id, func(*SessionData) error { return nil })
		_, _, err4 := s.RenewSessionID(ctx, id)
		b.client.Set(ctx, b.raw("session:"+id), "{not json", time.Minute)
		_, _, err5 := s.GetSession(ctx, id)
		_, err6 := s.UpdateSessionActivity(ctx, id)
		for i, err := range []error{err1, err2, err3, err4, err5, err6} {
			require.Error(t, err, "error %d", i+1)
			assert.NotContains(t, err.Error(), id, "error %d", i+1)
		}
		assert.ErrorIs(t, err5, ErrDecode, "GetSession of bad JSON")
		b.client.Set(ctx, b.raw("session:"+id), `["not an object"]`, time.Minute)
		_, _, err := s.GetSession(ctx, id)
		assert.ErrorIs(t, err, ErrDecode, "GetSession of a JSON array")
		b.client.Set(ctx, b.raw("session:"+id), `{"userId":1}`, time.Minute)
		_, _, err = s.GetSession(ctx, id)
		assert.ErrorIs(t, err, ErrDecode, "GetSession of a number userId")
	})
}

func FuzzSessionID(f *testing.F) {
	for _, seed := range []string{"", "abc", "a b", "abc*", "ok-._~", strings.Repeat("x", 257), "ü", "\x00", "session:1"} {
		f.Add(seed)
	}
	// One miniredis per fuzz process; each accepted id is created, read
	// back and destroyed, so ids never collide between inputs.
	b := newBackend(f, "miniredis")
	s := b.service(f, Options{})
	f.Fuzz(func(t *testing.T, id string) {
		ok := validSessionID(id)
		require.Equal(t, id != "" && len(id) <= maxSessionIDLen && strings.Trim(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~") == "", ok,
			"validSessionID(%q) disagrees with the URL-unreserved rule", id)
		if ok {
			require.False(t, strings.ContainsAny(id, "*?[]\\:/ "), "validSessionID(%q) accepted a glob or separator character", id)
		}
		ctx := ctxT(t)
		err := s.CreateSession(ctx, id, SessionData{UserID: "fuzz"}, time.Minute)
		if !ok {
			require.ErrorIs(t, err, ErrInvalidKey, "CreateSession(%q)", id)
			// The message must not depend on the id: compare with the empty id's.
			want := s.CreateSession(ctx, "", SessionData{UserID: "fuzz"}, time.Minute)
			require.Equal(t, want.Error(), err.Error(), "CreateSession(%q) error; want the id-free one", id)
			return
		}
		require.NoError(t, err, "CreateSession(%q)", id)
		got := getSession(t, s, id)
		require.Equal(t, "fuzz", got.UserID, "GetSession(%q)", id)
		gone, err := s.DestroySession(ctx, id)
		require.NoError(t, err)
		require.True(t, gone, "DestroySession(%q)", id)
	})
}

// FuzzSessionJSON checks the stored-object reader: what it accepts it
// splits into members whose bytes, joined again, are the object itself
// (up to whitespace between members), and an update that changes nothing
// writes nothing.
func FuzzSessionJSON(f *testing.F) {
	for _, seed := range []string{
		`{"userId":"u9","email":"a@b.c","role":"admin","createdAt":"2024-01-02T03:04:05.000Z","lastActivity":"2024-01-02T03:04:05.000Z","ip":"1.2.3.4","userAgent":"x"}`,
		`{"userId":"u","idleTimeoutMs":60000,"expiresAtMs":1764360000000}`,
		`{"createdAt":"not a time"}`, `[]`, `null`, `{"userId":1}`, `{`, `{}`, ` { "a" : [ 1 , {"b":"}"} ] , "c\"":null } `,
		originalServiceSession,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		doc, err := parseSessionDoc(raw)
		if err != nil {
			return // GetSession reports ErrDecode
		}
		var v map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(raw, &v), "parseSessionDoc accepted what encoding/json refuses: %s", raw)
		out := []byte{'{'}
		for _, m := range doc.obj.Members {
			require.Contains(t, v, m.Name, "member name %s decoded as %q", m.RawName, m.Name)
			out = jsonobj.AppendMember(out, m.RawName, m.Value)
		}
		out = append(out, '}')
		var compact bytes.Buffer
		require.NoError(t, json.Compact(&compact, raw))
		var compactOut bytes.Buffer
		require.NoError(t, json.Compact(&compactOut, out))
		require.Equal(t, compact.String(), compactOut.String(), "members of %s joined again", raw)
		data, err := doc.data()
		if err != nil {
			return
		}
		_, changed, err := doc.apply(data, data)
		if err == nil {
			require.False(t, changed, "an update that changes nothing changed %s", raw)
		}
	})
}
