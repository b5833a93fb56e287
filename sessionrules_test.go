package redisservice

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// SessionMaxLifetime applies to every session as soon as it is set, also
// to those created before (without an absolute end of their own).
func TestSessionMaxLifetimeEndsOlderSessions(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		// The clock starts now, so that index entries (unix ms) are live.
		clock := &fixedClock{t: time.Now().Truncate(time.Millisecond)}
		before := b.service(t, Options{Now: clock.now})
		ctx := ctxT(t)
		var ids []string
		for range 5 {
			ids = append(ids, newSession(t, before, "u1", time.Hour))
		}
		capped := b.service(t, Options{Now: clock.now, SessionMaxLifetime: 30 * time.Minute})

		// Within the lifetime: a touch slides the expiry no further than its end.
		clock.advance(20 * time.Minute)
		touchSession(t, capped, ids[0])
		d := b.client.PTTL(ctx, b.raw("session:"+ids[0])).Val()
		assert.True(t, d > 9*time.Minute && d <= 10*time.Minute, "PTTL = %v; want the 10 minutes left of the lifetime", d)

		// Past it: ended for every call, and deleted.
		clock.advance(11 * time.Minute)
		_, found, err := capped.GetSession(ctx, ids[1])
		require.NoError(t, err)
		assert.False(t, found, "GetSession of a session past SessionMaxLifetime")
		ok, err := capped.UpdateSessionActivity(ctx, ids[2])
		require.NoError(t, err)
		assert.False(t, ok, "UpdateSessionActivity of a session past SessionMaxLifetime")
		ok, err = capped.UpdateSession(ctx, ids[3], func(*SessionData) error { assert.Fail(t, "fn ran for an ended session"); return nil })
		require.NoError(t, err)
		assert.False(t, ok, "UpdateSession of a session past SessionMaxLifetime")
		newID, ok, err := capped.RenewSessionID(ctx, ids[4])
		require.NoError(t, err)
		assert.False(t, ok, "RenewSessionID of a session past SessionMaxLifetime")
		assert.Empty(t, newID)
		for _, id := range ids[1:] {
			assert.False(t, sessionExists(t, b, id), "an ended session is deleted")
		}
		require.Contains(t, indexed(t, b, "u1"), ids[0], "the index")
		all, err := capped.UserSessions(ctx, "u1")
		require.NoError(t, err)
		assert.Empty(t, all, "UserSessions lists a session past SessionMaxLifetime")
		assert.Zero(t, b.client.Exists(ctx, b.raw("session:"+ids[0])).Val(), "an ended session is deleted")
		assert.Empty(t, indexed(t, b, "u1"), "the index")
	})
}

// Stored objects in which Go and the touch script could mean different
// members, and stored values that are not objects, are refused by both;
// names never lose their bytes (those given by the caller:
// TestSessionInvalidInput).
func TestSessionMemberNamesGoAndTheScriptAgreeOn(t *testing.T) {
	t.Parallel()
	const rest = `"email":"","role":"","createdAt":"2026-11-29T07:00:00.000Z","lastActivity":"2026-11-29T07:00:00.000Z","ip":"","userAgent":""`
	tests := []struct{ name, stored string }{
		{"repeated userId", `{"userId":"victim",` + rest + `,"userId":"attacker","idleTimeoutMs":60000}`},
		{"repeated userId, slow path", `{"userId":"victim",` + rest + `,"x":"\"","userId":"attacker"}`},
		{"escaped userId", `{"\u0075serId":"u1",` + rest + `,"idleTimeoutMs":60000}`},
		{"escaped lastActivity", `{"userId":"u1","email":"","role":"","createdAt":"2026-11-29T07:00:00.000Z","last\u0041ctivity":"2026-11-29T07:00:00.000Z"}`},
		{"repeated lastActivity", `{"userId":"u1",` + rest + `,"lastActivity":"2020-01-01T00:00:00.000Z"}`},
		{"repeated idleTimeoutMs", `{"userId":"u1",` + rest + `,"idleTimeoutMs":1,"idleTimeoutMs":60000}`},
		{"repeated Values name", `{"userId":"u1",` + rest + `,"cart":1,"cart":2}`},
		{"names that decode alike", `{"userId":"u1",` + rest + `,"caf\u00e9":1,"café":2}`},
		{"invalid UTF-8 names", "{\"userId\":\"u1\"," + rest + ",\"a\xff\":1,\"a\xfe\":2}"},
		{"an array", `[1]`},
		{"a string", `"s"`},
		{"cut short", `{"a":`},
	}
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		for i, tt := range tests {
			id := "names-" + string(rune('a'+i))
			storeRaw(t, b, id, tt.stored, time.Minute)
			data, found, err := s.GetSession(ctx, id)
			assert.ErrorIs(t, err, ErrDecode, "%s: GetSession = %+v, %v", tt.name, data, found)
			_, err = s.UpdateSession(ctx, id, func(d *SessionData) error { return incr(d, "n") })
			assert.ErrorIs(t, err, ErrDecode, "%s: UpdateSession", tt.name)
			ok, err := s.UpdateSessionActivity(ctx, id)
			if tt.name != "repeated Values name" && tt.name != "names that decode alike" && tt.name != "invalid UTF-8 names" {
				// The script refuses what it reads by name; the others it
				// touches as any writer would (Go still refuses to read them).
				assert.Error(t, err, "%s: UpdateSessionActivity = %v", tt.name, ok)
				assert.Equal(t, tt.stored, stored(t, b, id), "%s: a refused session stays as it is", tt.name)
			}
		}
		for _, uid := range []string{"victim", "attacker"} {
			assert.Empty(t, indexed(t, b, uid), "index of %s", uid)
		}
		// Those the script touched have one userId, and are indexed under it.
		assert.ElementsMatch(t, []string{"names-g", "names-h", "names-i"}, indexed(t, b, "u1"), "index of u1")
	})
}

// TestUpdateSessionWithARacingLastActivity: LastActivity is a field like
// any other in UpdateSession. A change to it between fn's read and the
// write, by UpdateSessionActivity or another UpdateSession, is no
// conflict while fn leaves LastActivity alone: the write goes ahead at
// once and keeps the racing value. When fn sets LastActivity, fn runs
// again and sees the racing value first.
func TestUpdateSessionWithARacingLastActivity(t *testing.T) {
	t.Parallel()
	other := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	mine := time.Date(2030, 1, 2, 3, 4, 5, 6e6, time.UTC)
	incrN := func(d *SessionData) error { return incr(d, "n") }
	setMine := func(d *SessionData) error { d.LastActivity = mine; return nil }
	moveOn := func(d *SessionData) error { d.LastActivity = d.LastActivity.Add(time.Minute); return nil }
	forEachBackend(t, func(t *testing.T, b *backend) {
		clock := &fixedClock{t: time.Date(2026, 11, 29, 7, 0, 0, 0, time.UTC)}
		s := b.service(t, Options{Now: clock.now})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)
		// The racing updates return the LastActivity they wrote.
		touch := func(t *testing.T) time.Time {
			clock.advance(time.Second)
			touchSession(t, s, id)
			return clock.now()
		}
		setOther := func(t *testing.T) time.Time {
			ok, err := s.UpdateSession(ctx, id, func(d *SessionData) error { d.LastActivity = other; return nil })
			require.NoError(t, err)
			require.True(t, ok)
			return other
		}
		// The cases run in turn on one session.
		tests := []struct {
			name     string
			race     func(t *testing.T) time.Time // run once, in fn's first attempt
			fn       func(d *SessionData) error
			attempts int
			want     func(raced time.Time) time.Time // LastActivity afterwards
			n        string                          // Values["n"] afterwards
		}{
			{"activity update, fn changes Values", touch, incrN, 1, func(raced time.Time) time.Time { return raced }, "1"},
			{"activity update, fn sets LastActivity", touch, setMine, 2, func(time.Time) time.Time { return mine }, "1"},
			{"activity update, fn moves LastActivity on", touch, moveOn, 2, func(raced time.Time) time.Time { return raced.Add(time.Minute) }, "1"},
			{"LastActivity set, fn moves it on", setOther, moveOn, 2, func(raced time.Time) time.Time { return raced.Add(time.Minute) }, "1"},
			{"LastActivity set, fn changes Values", setOther, incrN, 1, func(raced time.Time) time.Time { return raced }, "2"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				calls := 0
				var raced time.Time
				ok, err := s.UpdateSession(ctx, id, func(d *SessionData) error {
					calls++
					if calls == 1 {
						raced = tt.race(t)
					}
					return tt.fn(d)
				})
				require.NoError(t, err)
				require.True(t, ok)
				assert.Equal(t, tt.attempts, calls, "attempts")
				got := getSession(t, s, id)
				want := tt.want(raced)
				assert.True(t, got.LastActivity.Equal(want), "LastActivity = %v; want %v", got.LastActivity, want)
				assert.Equal(t, tt.n, string(got.Values["n"]))
			})
		}
		// The TTL is kept: LastActivity set by fn does not slide it.
		d := sessionTTL(t, b, id)
		assert.True(t, d > 0 && d <= time.Minute, "PTTL = %v", d)
	})
}

// The README's example: fn may add to Values of a session created without any.
func TestUpdateSessionValuesAreNeverNil(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)
		assert.NotPanics(t, func() {
			ok, err := s.UpdateSession(ctx, id, func(d *SessionData) error {
				d.Values["csrf"] = json.RawMessage(`"k3J9vQ"`)
				return nil
			})
			assert.NoError(t, err)
			assert.True(t, ok)
		})
		got, _, err := s.GetSession(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, `"k3J9vQ"`, string(got.Values["csrf"]))

		// An empty map written back is no change; a nil one removes every entry.
		before := stored(t, b, id)
		ok, err := s.UpdateSession(ctx, id, func(d *SessionData) error { delete(d.Values, "nothing"); return nil })
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, before, stored(t, b, id))
		ok, err = s.UpdateSession(ctx, id, func(d *SessionData) error { d.Values = nil; return nil })
		require.NoError(t, err)
		require.True(t, ok)
		got, _, err = s.GetSession(ctx, id)
		require.NoError(t, err)
		assert.Nil(t, got.Values)
	})
}

// The touch script reads createdAt as Go does, in every form RFC 3339
// allows, to end a session at CreatedAt plus SessionMaxLifetime.
func TestSessionTouchReadsCreatedAtAsGoDoes(t *testing.T) {
	t.Parallel()
	forms := []string{"2026-11-29T07:00:00.000Z", "2024-02-29T23:59:59.999Z", "2000-03-01T00:00:00Z",
		"1999-12-31T23:30:00.5+01:00", "2026-01-01T00:00:00.123456789-09:30", "1970-01-01T00:00:00Z", "2100-02-28T12:00:00,25Z"}
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := ctxT(t)
		for i, form := range forms {
			var created time.Time
			require.NoError(t, created.UnmarshalJSON([]byte(`"`+form+`"`)), form)
			clock := &fixedClock{t: created.Add(20 * time.Minute)}
			s := b.service(t, Options{Now: clock.now, SessionMaxLifetime: 30 * time.Minute})
			id := "created-" + string(rune('a'+i))
			storeRaw(t, b, id, `{"userId":"u1","createdAt":"`+form+`","idleTimeoutMs":3600000}`, time.Hour)
			ok, err := s.UpdateSessionActivity(ctx, id)
			require.NoError(t, err, form)
			require.True(t, ok, form)
			want := time.Duration(created.UnixMilli()+(30*time.Minute).Milliseconds()-clock.now().UnixMilli()) * time.Millisecond
			d := sessionTTL(t, b, id)
			assert.True(t, d <= want && d > want-time.Second, "createdAt %s: PTTL = %v; want %v", form, d, want)
		}
	})
}
