package redisservice

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
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

// originalServiceSession is exactly what the original TypeScript service
// stores: JSON.stringify of its session object, in its key order, with
// toISOString times, then the application's extra fields of every JSON
// type. JSON.stringify escapes only quotes, backslashes and control
// characters ("\n", "\t", "\u0001"), keeps "/" and non-ASCII as they are,
// and writes lone surrogates as "\ud800". lastOrderId and bigId are beyond
// what a float64 holds exactly (another writer may put such text there).
// A nested "lastActivity" and one inside a string must never be touched.
const originalServiceSession = `{"userId":"u-42","email":"ana@example.com","role":"admin",` +
	`"createdAt":"2026-11-29T06:51:29.123Z","lastActivity":"2026-11-29T06:51:29.123Z",` +
	`"ip":"203.0.113.7","userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",` +
	`"permissions":[],"prefs":{},` +
	`"cart":{"items":[{"sku":"A-1","qty":2,"price":12.5,"tags":["new","sale"]}],"total":25,"coupon":null},` +
	`"mfa":true,"beta":false,"note":null,` +
	`"device":"Zoë's \"phone\" – 日本","escapes":"line\nbreak\ttab\u0001back\\slash","surrogates":"\ud83d\ude00 \ud800",` +
	`"path":"/a/b","lastOrderId":1234567890123456,"bigId":12345678901234567890,"neg":-0.5,"exp":1e+21,` +
	`"history":{"lastActivity":"2020-01-01T00:00:00.000Z"},"decoy":"\"lastActivity\":\"2020-01-01T00:00:00.000Z\""}`

// originalValues are the fields of originalServiceSession beyond the
// seven, as stored.
var originalValues = map[string]string{
	"permissions": `[]`,
	"prefs":       `{}`,
	"cart":        `{"items":[{"sku":"A-1","qty":2,"price":12.5,"tags":["new","sale"]}],"total":25,"coupon":null}`,
	"mfa":         `true`,
	"beta":        `false`,
	"note":        `null`,
	"device":      `"Zoë's \"phone\" – 日本"`,
	"escapes":     `"line\nbreak\ttab\u0001back\\slash"`,
	"surrogates":  `"\ud83d\ude00 \ud800"`,
	"path":        `"/a/b"`,
	"lastOrderId": `1234567890123456`,
	"bigId":       `12345678901234567890`,
	"neg":         `-0.5`,
	"exp":         `1e+21`,
	"history":     `{"lastActivity":"2020-01-01T00:00:00.000Z"}`,
	"decoy":       `"\"lastActivity\":\"2020-01-01T00:00:00.000Z\""`,
}

// fixedClock is a settable clock for Options.Now.
type fixedClock struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func (c *fixedClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

// advance moves the clock d on.
func (c *fixedClock) advance(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

// storeRaw writes raw as the session id, as another writer would.
func storeRaw(t testing.TB, b *backend, id, raw string, ttl time.Duration) {
	t.Helper()
	require.NoError(t, b.client.Set(ctxT(t), b.raw("session:"+id), raw, ttl).Err())
}

// getSession returns the session id, and fails the test unless it is
// found.
func getSession(t testing.TB, s *Service, id string) SessionData {
	t.Helper()
	got, found, err := s.GetSession(ctxT(t), id)
	require.NoError(t, err, "GetSession")
	require.True(t, found, "GetSession: not found")
	return got
}

// touchSession calls UpdateSessionActivity, and fails the test unless
// it finds the session.
func touchSession(t testing.TB, s *Service, id string) {
	t.Helper()
	ok, err := s.UpdateSessionActivity(ctxT(t), id)
	require.NoError(t, err, "UpdateSessionActivity")
	require.True(t, ok, "UpdateSessionActivity: not found")
}

// sessionTTL returns the PTTL of the session's key.
func sessionTTL(t testing.TB, b *backend, id string) time.Duration {
	t.Helper()
	return b.client.PTTL(ctxT(t), b.raw("session:"+id)).Val()
}

// sessionExists reports whether the session's key exists.
func sessionExists(t testing.TB, b *backend, id string) bool {
	t.Helper()
	return b.client.Exists(ctxT(t), b.raw("session:"+id)).Val() == 1
}

// indexed returns the session ids in the index of user uid.
func indexed(t testing.TB, b *backend, uid string) []string {
	t.Helper()
	return b.client.ZRange(ctxT(t), b.raw("user-sessions:"+uid), 0, -1).Val()
}

// stored returns the session's stored bytes.
func stored(t testing.TB, b *backend, id string) string {
	t.Helper()
	v, err := b.client.Get(ctxT(t), b.raw("session:"+id)).Result()
	require.NoError(t, err, "GET session")
	return v
}

func rawValues(v map[string]json.RawMessage) map[string]string {
	out := make(map[string]string, len(v))
	for k, b := range v {
		out[k] = string(b)
	}
	return out
}

func TestSessionValuesRoundTrip(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		values := map[string]json.RawMessage{}
		for k, v := range originalValues {
			values[k] = json.RawMessage(v)
		}
		values["spaced"] = json.RawMessage(`[ 1, 2 ]`) // valid: kept as given
		id, _ := NewSessionID()
		created := time.Date(2026, 11, 29, 6, 51, 29, 123456789, time.UTC)
		require.NoError(t, s.CreateSession(ctx, id, SessionData{UserID: "u-42", Email: "a<b>&c@example.com", CreatedAt: created, LastActivity: created, Values: values}, time.Minute))

		raw := stored(t, b, id)
		assert.True(t, strings.HasPrefix(raw, `{"userId":"u-42","email":"a<b>&c@example.com","role":"","createdAt":"2026-11-29T06:51:29.123Z","lastActivity":"2026-11-29T06:51:29.123Z","ip":"","userAgent":"","beta":false,"bigId":12345678901234567890,`),
			"stored %s: want the seven fields in the original service's order, toISOString times, then the Values by name", raw)
		assert.True(t, strings.HasSuffix(raw, `,"spaced":[ 1, 2 ],"surrogates":"\ud83d\ude00 \ud800","idleTimeoutMs":60000}`), "stored %s", raw)
		for k, v := range values {
			assert.Contains(t, raw, fmt.Sprintf("%q:%s", k, v))
		}

		got := getSession(t, s, id)
		assert.Equal(t, rawValues(values), rawValues(got.Values), "Values after a round trip")
		assert.True(t, got.CreatedAt.Equal(created.Truncate(time.Millisecond)), "CreatedAt = %v; want milliseconds kept", got.CreatedAt)
		assert.Equal(t, "a<b>&c@example.com", got.Email)
	})
}

func TestSessionOfTheOriginalServiceByteForByte(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		clock := &fixedClock{t: time.Date(2026, 11, 29, 7, 0, 0, 987654321, time.UTC)}
		s := b.service(t, Options{Now: clock.now})
		ctx := ctxT(t)
		const id = "orig-session_1"
		storeRaw(t, b, id, originalServiceSession, time.Hour)

		got := getSession(t, s, id)
		assert.Equal(t, "u-42", got.UserID)
		assert.Equal(t, "admin", got.Role)
		assert.Equal(t, "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36", got.UserAgent)
		assert.True(t, got.LastActivity.Equal(time.Date(2026, 11, 29, 6, 51, 29, 123000000, time.UTC)))
		assert.Equal(t, originalValues, rawValues(got.Values), "GetSession's Values: every field beyond the seven, byte for byte")
		assert.Equal(t, originalServiceSession, stored(t, b, id), "GetSession changed the stored bytes")

		// UpdateSessionActivity: only the top-level lastActivity value differs.
		touchSession(t, s, id)
		want := strings.Replace(originalServiceSession, `"lastActivity":"2026-11-29T06:51:29.123Z"`, `"lastActivity":"2026-11-29T07:00:00.987Z"`, 1)
		require.NotEqual(t, originalServiceSession, want)
		assert.Equal(t, want, stored(t, b, id), "UpdateSessionActivity changed more than lastActivity")
		d := sessionTTL(t, b, id)
		assert.True(t, d > 59*time.Minute && d <= time.Hour, "PTTL = %v; want the original's remaining hour kept", d)

		// UpdateSession: what fn changed is new, everything else keeps its bytes.
		ok, err := s.UpdateSession(ctx, id, func(d *SessionData) error {
			d.Role = "cashier"
			d.Values["cart"] = json.RawMessage(`{"items":[]}`)
			delete(d.Values, "note")
			d.Values["visits"] = json.RawMessage(`1`)
			d.Values["a-first"] = json.RawMessage(`"x"`)
			return nil
		})
		require.NoError(t, err)
		require.True(t, ok)
		want = strings.Replace(want, `"role":"admin"`, `"role":"cashier"`, 1)
		want = strings.Replace(want, `"cart":`+originalValues["cart"], `"cart":{"items":[]}`, 1)
		want = strings.Replace(want, `"note":null,`, ``, 1)
		want = strings.TrimSuffix(want, "}") + `,"a-first":"x","visits":1}`
		assert.Equal(t, want, stored(t, b, id), "UpdateSession changed more than fn did")
		d = sessionTTL(t, b, id)
		assert.True(t, d > 59*time.Minute && d <= time.Hour, "PTTL after UpdateSession = %v; want it kept", d)

		// RenewSessionID: the same bytes under the new id.
		newID, ok, err := s.RenewSessionID(ctx, id)
		require.NoError(t, err)
		require.True(t, ok)
		assert.Len(t, newID, 43)
		assert.Equal(t, want, stored(t, b, newID), "RenewSessionID changed the bytes")
		assert.False(t, sessionExists(t, b, id), "the old id is still readable")
		d = sessionTTL(t, b, newID)
		assert.True(t, d > 59*time.Minute && d <= time.Hour, "PTTL after RenewSessionID = %v; want the remaining TTL kept", d)
	})
}

func TestUpdateSessionActivityReplacesOnlyTheTopLevelValue(t *testing.T) {
	t.Parallel()
	const stamp = `"2026-11-29T07:00:00.000Z"`
	tests := []struct{ name, stored, want string }{
		{"decoys first",
			`{"meta":{"lastActivity":"x","a":[{"lastActivity":1}]},"s":"\"lastActivity\":\"y\" \\","lastActivity":"old","userId":"u"}`,
			`{"meta":{"lastActivity":"x","a":[{"lastActivity":1}]},"s":"\"lastActivity\":\"y\" \\","lastActivity":` + stamp + `,"userId":"u"}`},
		{"absent", `{"userId":"u","n":[1,{"lastActivity":2}]}`, `{"userId":"u","n":[1,{"lastActivity":2}],"lastActivity":` + stamp + `}`},
		{"empty object", `{}`, `{"lastActivity":` + stamp + `}`},
		{"not a string", `{"lastActivity":null,"userId":"u"}`, `{"lastActivity":` + stamp + `,"userId":"u"}`},
		{"number", `{"lastActivity":12.5e3}`, `{"lastActivity":` + stamp + `}`},
		{"indented", "{\n  \"userId\" : \"u\",\n  \"lastActivity\" : \"old\" ,\n  \"x\" : [ ]\n}\n", "{\n  \"userId\" : \"u\",\n  \"lastActivity\" : " + stamp + " ,\n  \"x\" : [ ]\n}\n"},
		{"brackets in strings", `{"a":"{[","b":{"c":"]}\\"},"lastActivity":"old"}`, `{"a":"{[","b":{"c":"]}\\"},"lastActivity":` + stamp + `}`},
	}
	forEachBackend(t, func(t *testing.T, b *backend) {
		clock := &fixedClock{t: time.Date(2026, 11, 29, 7, 0, 0, 0, time.UTC)}
		s := b.service(t, Options{Now: clock.now})
		ctx := ctxT(t)
		for i, tt := range tests {
			id := fmt.Sprintf("touch-%d", i)
			storeRaw(t, b, id, tt.stored, time.Minute)
			ok, err := s.UpdateSessionActivity(ctx, id)
			require.NoError(t, err, tt.name)
			require.True(t, ok, tt.name)
			assert.Equal(t, tt.want, stored(t, b, id), tt.name)
		}
		// What it refuses: TestSessionMemberNamesGoAndTheScriptAgreeOn.
	})
}

// incr adds one to the integer in d.Values[name].
func incr(d *SessionData, name string) error {
	n := 0
	if v, ok := d.Values[name]; ok {
		var err error
		if n, err = strconv.Atoi(string(v)); err != nil {
			return err
		}
	}
	if d.Values == nil {
		d.Values = map[string]json.RawMessage{}
	}
	d.Values[name] = json.RawMessage(strconv.Itoa(n + 1))
	return nil
}

func TestUpdateSessionLosesNoUpdate(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)
		var wg sync.WaitGroup
		var touches atomic.Int64
		stop := make(chan struct{})
		// Activity updates race the increments: they change lastActivity's
		// bytes, which the check-and-set lets through (they are not
		// conflicts); the increments race one another, retry, and lose
		// nothing, nor the activity updates' lastActivity.
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := s.UpdateSessionActivity(ctx, id)
				assert.NoError(t, err)
				touches.Add(1)
				time.Sleep(time.Millisecond)
			}
		})
		var incs sync.WaitGroup
		for range 24 {
			incs.Go(func() {
				ok, err := s.UpdateSession(ctx, id, func(d *SessionData) error { return incr(d, "counter") })
				assert.NoError(t, err)
				assert.True(t, ok)
			})
		}
		incs.Wait()
		close(stop)
		wg.Wait()
		got := getSession(t, s, id)
		assert.Equal(t, "24", string(got.Values["counter"]), "24 concurrent increments (with %d activity updates racing)", touches.Load())
		assert.Equal(t, "u1@example.com", got.Email)
	})
}

func TestUpdateSessionNeverResurrects(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		for range 5 {
			id := newSession(t, s, "u1", time.Minute)
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					_, err := s.UpdateSession(ctx, id, func(d *SessionData) error { return incr(d, "n") })
					assert.NoError(t, err)
				})
			}
			ok, err := s.DestroySession(ctx, id)
			require.NoError(t, err)
			assert.True(t, ok)
			wg.Wait()
			assert.False(t, sessionExists(t, b, id), "UpdateSession brought a destroyed session back")
		}

		// Missing and expired sessions: false, nil, and fn never runs.
		id := newSession(t, s, "u1", 100*time.Millisecond)
		b.pass(200 * time.Millisecond)
		b.waitFor(t, "session expires", func() bool { return !sessionExists(t, b, id) })
		ok, err := s.UpdateSession(ctx, id, func(*SessionData) error { assert.Fail(t, "fn ran for an expired session"); return nil })
		assert.NoError(t, err)
		assert.False(t, ok)
		assert.False(t, sessionExists(t, b, id))
	})
}

func TestUpdateSessionContract(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)
		before := stored(t, b, id)

		errBoom := errors.New("boom")
		ok, err := s.UpdateSession(ctx, id, func(d *SessionData) error { d.Role = "x"; return errBoom })
		assert.False(t, ok)
		assert.ErrorIs(t, err, errBoom, "fn's error, wrapped")
		assert.NotContains(t, err.Error(), id)
		assert.Equal(t, before, stored(t, b, id), "fn's error must leave the session alone")

		// What UpdateSession refuses: TestSessionInvalidInput.

		// No change, no write: even a time given in another zone.
		ok, err = s.UpdateSession(ctx, id, func(d *SessionData) error { d.CreatedAt = d.CreatedAt.In(time.FixedZone("x", 3600)); return nil })
		assert.NoError(t, err)
		assert.True(t, ok)
		assert.Equal(t, before, stored(t, b, id))

		// fn may change the bytes it was given in place: what it read stays intact.
		ok, err = s.UpdateSession(ctx, id, func(d *SessionData) error {
			d.Values = map[string]json.RawMessage{"k": json.RawMessage(`"v"`)}
			return nil
		})
		require.NoError(t, err)
		require.True(t, ok)
		assert.True(t, strings.HasSuffix(stored(t, b, id), `,"k":"v","idleTimeoutMs":60000}`),
			"new Values go before this package's own trailing fields: %s", stored(t, b, id))
		ok, err = s.UpdateSession(ctx, id, func(d *SessionData) error { d.Values["k"][1] = 'w'; return nil })
		require.NoError(t, err)
		require.True(t, ok)
		got, _, err := s.GetSession(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, `"w"`, string(got.Values["k"]))

		// Retries run out when every write finds the session changed.
		calls := 0
		ok, err = s.UpdateSession(ctx, id, func(d *SessionData) error {
			calls++
			// Another writer changes the session between read and write.
			b.client.Set(ctx, b.raw("session:"+id), strings.Replace(stored(t, b, id), `"role":"`, `"role":"x`, 1), 0)
			d.Email = "changed@example.com"
			return nil
		})
		assert.False(t, ok)
		assert.ErrorIs(t, err, ErrConflict)
		assert.Equal(t, sessionAttempts, calls, "attempts before ErrConflict")
		assert.NotContains(t, stored(t, b, id), "changed@example.com")
	})
}

func TestRenewSessionID(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{SessionMaxLifetime: time.Hour})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", 10*time.Second)
		other := newSession(t, s, "u1", 10*time.Second)
		ok, err := s.UpdateSession(ctx, id, func(d *SessionData) error { return incr(d, "cart") })
		require.NoError(t, err)
		require.True(t, ok)
		before := stored(t, b, id)
		ttlBefore := sessionTTL(t, b, id)
		newID, ok, err := s.RenewSessionID(ctx, id)
		require.NoError(t, err)
		require.True(t, ok)
		require.NotEqual(t, id, newID)
		assert.True(t, validSessionID(newID))
		assert.Equal(t, before, stored(t, b, newID), "same bytes, absolute end (expiresAtMs) included")
		assert.Contains(t, before, `"expiresAtMs":`)
		d := sessionTTL(t, b, newID)
		assert.True(t, d > ttlBefore-time.Second && d <= ttlBefore, "PTTL = %v; want the %v that was left", d, ttlBefore)

		_, found, err := s.GetSession(ctx, id)
		assert.NoError(t, err)
		assert.False(t, found, "the old id is still readable")
		ids := indexed(t, b, "u1")
		assert.ElementsMatch(t, []string{newID, other}, ids, "the index names the new id, not the old")

		got := getSession(t, s, newID)
		assert.Equal(t, "1", string(got.Values["cart"]))

		n, err := s.DestroyUserSessions(ctx, "u1")
		require.NoError(t, err)
		assert.Equal(t, int64(2), n, "log-out-everywhere finds the renewed session")

		newID, ok, err = s.RenewSessionID(ctx, id)
		assert.NoError(t, err)
		assert.False(t, ok)
		assert.Empty(t, newID, "a missing session")

		// A session of the original service without a TTL keeps none
		// (without a lifetime cap: its createdAt is long past).
		storeRaw(t, b, "no-ttl", originalServiceSession, 0)
		newID, ok, err = b.service(t, Options{}).RenewSessionID(ctx, "no-ttl")
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, originalServiceSession, stored(t, b, newID))
		assert.Equal(t, time.Duration(-1), sessionTTL(t, b, newID))
	})
}

func TestRenewSessionIDRacingUpdates(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() { _, _ = s.UpdateSessionActivity(ctx, id) })
		}
		newID, ok, err := s.RenewSessionID(ctx, id)
		wg.Wait()
		require.NoError(t, err)
		require.True(t, ok)
		_, found, _ := s.GetSession(ctx, id)
		assert.False(t, found, "the old id survived")
		_, found, _ = s.GetSession(ctx, newID)
		assert.True(t, found, "the new id is missing")
		live, err := s.UserSessions(ctx, "u1")
		require.NoError(t, err)
		assert.Len(t, live, 1)
		assert.Contains(t, live, newID)

		// Destroyed meanwhile: neither id survives.
		id = newSession(t, s, "u2", time.Minute)
		calls := 0
		ok, err = s.UpdateSession(ctx, id, func(d *SessionData) error {
			calls++
			if _, err := s.DestroySession(ctx, id); err != nil {
				return err
			}
			return incr(d, "n")
		})
		require.NoError(t, err)
		assert.False(t, ok, "UpdateSession of a session destroyed while fn ran")
		assert.Equal(t, 1, calls)
		newID, ok, err = s.RenewSessionID(ctx, id)
		assert.NoError(t, err)
		assert.False(t, ok)
		assert.Empty(t, newID)
	})
}

// TestRenewSessionIDWhenTheOldKeysDeleteFails: the compare-and-delete of
// the old key fails, before it was sent or after it ran (a reply lost to a
// timeout). The new id is returned with the error, alive and indexed, so
// that at least one id is always alive, never neither.
func TestRenewSessionIDWhenTheOldKeysDeleteFails(t *testing.T) {
	t.Parallel()
	for _, sent := range []bool{false, true} {
		t.Run(fmt.Sprintf("sent=%v", sent), func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, b *backend) {
				var armed atomic.Bool
				b.client.AddHook(faultHook{sent: sent, fail: func(cmd redis.Cmder) error {
					// The session CAS script deleting: EVALSHA sha 2 key tokens was "del" ...
					args := cmd.Args()
					if armed.Load() && (cmd.Name() == "evalsha" || cmd.Name() == "eval") && len(args) > 6 && args[6] == "del" {
						return errInjected
					}
					return nil
				}})
				s := b.service(t, Options{})
				ctx := ctxT(t)
				id := newSession(t, s, "u1", time.Minute)
				before := stored(t, b, id)
				armed.Store(true)
				newID, ok, err := s.RenewSessionID(ctx, id)
				armed.Store(false)
				require.ErrorIs(t, err, errInjected)
				assert.NotContains(t, err.Error(), id, "the error names the session id")
				assert.True(t, ok, "RenewSessionID reports the session found")
				require.True(t, validSessionID(newID), "RenewSessionID = %q; want the new id with the error", newID)
				assert.Equal(t, before, stored(t, b, newID), "the new key holds the session")
				assert.Contains(t, indexed(t, b, "u1"), newID, "the new id is indexed")
				oldLeft := b.client.Exists(ctx, b.raw("session:"+id)).Val()
				assert.Equal(t, map[bool]int64{false: 1, true: 0}[sent], oldLeft, "the old key exists unless the delete ran")

				// What the doc tells the caller to do: use the new id, destroy the
				// old (once the Service has seen Redis answer again: the injected
				// fault looks like a lost connection).
				waitFor(t, "IsConnected after the injected fault", s.IsConnected)
				_, err = s.DestroySession(ctx, id)
				require.NoError(t, err)
				n, err := s.DestroyUserSessions(ctx, "u1")
				require.NoError(t, err)
				assert.Equal(t, int64(1), n, "log-out-everywhere finds the new id")
			})
		})
	}
}

// TestRenewSessionIDAtTheCap: while both ids exist they count once
// against MaxSessionsPerUser, so renewing the session closest to expiring
// of a user at the cap evicts neither id.
func TestRenewSessionIDAtTheCap(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{MaxSessionsPerUser: 2})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)
		other := newSession(t, s, "u1", time.Hour)
		newID, ok, err := s.RenewSessionID(ctx, id)
		require.NoError(t, err)
		require.True(t, ok)
		_, found, err := s.GetSession(ctx, newID)
		require.NoError(t, err)
		assert.True(t, found, "the renewed session is gone")
		_, found, _ = s.GetSession(ctx, id)
		assert.False(t, found, "the old id survived")
		_, found, _ = s.GetSession(ctx, other)
		assert.True(t, found, "the other session is gone")
		assert.ElementsMatch(t, []string{newID, other}, indexed(t, b, "u1"))
	})
}

func TestUserSessions(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		var ids []string
		for range 6 { // spread over the cluster's masters
			ids = append(ids, newSession(t, s, "u1", time.Minute))
		}
		short := newSession(t, s, "u1", 100*time.Millisecond)
		newSession(t, s, "u2", time.Minute)
		_, err := s.UpdateSession(ctx, ids[1], func(d *SessionData) error { return incr(d, "device") })
		require.NoError(t, err)
		_, err = s.DestroySession(ctx, ids[0])
		require.NoError(t, err)
		b.pass(200 * time.Millisecond)
		b.waitFor(t, "short session expires", func() bool { return !sessionExists(t, b, short) })

		live, err := s.UserSessions(ctx, "u1")
		require.NoError(t, err)
		var got []string
		for id, d := range live {
			got = append(got, id)
			assert.Equal(t, "u1", d.UserID)
			assert.Equal(t, "u1@example.com", d.Email)
		}
		assert.ElementsMatch(t, ids[1:], got, "live sessions only")
		assert.Equal(t, "1", string(live[ids[1]].Values["device"]))
		assert.ElementsMatch(t, ids[1:], indexed(t, b, "u1"), "stale index entries pruned")

		live, err = s.UserSessions(ctx, "nobody")
		assert.NoError(t, err)
		assert.Empty(t, live)
	})
}

// legacySession is originalServiceSession for user uid.
func legacySession(uid string) string {
	return strings.Replace(originalServiceSession, `"userId":"u-42"`, `"userId":`+strconv.Quote(uid), 1)
}

func TestSessionsOfTheOriginalServiceJoinTheIndex(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		idx := b.raw("user-sessions:u-7")
		for _, id := range []string{"legacy-get", "legacy-touch", "legacy-update", "legacy-untouched"} {
			storeRaw(t, b, id, legacySession("u-7"), time.Hour)
		}
		getSession(t, s, "legacy-get")
		touchSession(t, s, "legacy-touch")
		ok, err := s.UpdateSession(ctx, "legacy-update", func(d *SessionData) error { return incr(d, "n") })
		require.NoError(t, err)
		require.True(t, ok)
		assert.ElementsMatch(t, []string{"legacy-get", "legacy-touch", "legacy-update"}, b.client.ZRange(ctx, idx, 0, -1).Val(),
			"sessions this package read or touched joined the index")
		for _, z := range b.client.ZRangeWithScores(ctx, idx, 0, -1).Val() {
			left := time.Until(time.UnixMilli(int64(z.Score)))
			assert.True(t, left > 59*time.Minute && left <= time.Hour+time.Second, "%s indexed to expire in %v; want its remaining hour", z.Member, left)
		}
		d := b.client.PTTL(ctx, idx).Val()
		assert.True(t, d > 59*time.Minute, "index PTTL %v", d)

		// Without LegacySessions, log-out-everywhere finds those three only.
		n, err := s.DestroyUserSessions(ctx, "u-7")
		require.NoError(t, err)
		assert.Equal(t, int64(3), n)
		assert.True(t, sessionExists(t, b, "legacy-untouched"))
	})
}

func TestLegacySessionsWalk(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		walker := b.service(t, Options{LegacySessions: true})
		ctx := ctxT(t)
		// Sessions the original service wrote and this package never saw,
		// spread over the masters, and other users' sessions beside them.
		var mine []string
		for i := range 8 {
			id := fmt.Sprintf("orig-%d", i)
			storeRaw(t, b, id, legacySession("u/ü \"7\""), time.Hour)
			mine = append(mine, id)
			storeRaw(t, b, fmt.Sprintf("other-%d", i), legacySession("u/ü \"70\""), time.Hour)
		}
		storeRaw(t, b, "prefix-of-mine", legacySession("u/ü"), time.Hour)
		require.NoError(t, b.client.HSet(ctx, b.raw("session:not-a-string"), "userId", "x").Err())
		storeRaw(t, b, "not-json", `{"userId":"u/ü \"7\"`, time.Hour)
		// A session of this package whose index entry lapsed: the original
		// service refreshed it past the index's expiry.
		goID := newSession(t, s, "u/ü \"7\"", time.Minute)
		require.NoError(t, b.client.Del(ctx, b.raw(`user-sessions:u/ü "7"`)).Err())
		mine = append(mine, goID)

		live, err := walker.UserSessions(ctx, `u/ü "7"`)
		require.NoError(t, err)
		var got []string
		for id := range live {
			got = append(got, id)
		}
		assert.ElementsMatch(t, mine, got, "UserSessions with LegacySessions")

		// The walk put what it found in the index, where a Service without
		// LegacySessions finds it.
		live, err = s.UserSessions(ctx, `u/ü "7"`)
		require.NoError(t, err)
		got = slices.Collect(maps.Keys(live))
		assert.ElementsMatch(t, mine, got, "UserSessions without LegacySessions, after the walk")

		n, err := walker.DestroyUserSessions(ctx, `u/ü "7"`)
		require.NoError(t, err)
		assert.Equal(t, int64(len(mine)), n, "DestroyUserSessions with LegacySessions")
		for _, id := range mine {
			assert.False(t, sessionExists(t, b, id), "%s survived log-out-everywhere", id)
		}
		assert.True(t, sessionExists(t, b, "other-0"), "another user's session was destroyed")
		assert.True(t, sessionExists(t, b, "prefix-of-mine"), "another user's session was destroyed")
	})
}

// TestSessionRefreshedByTheOriginalService: a session of this package
// that the original service refreshed (its whole document written again,
// with its one-hour TTL) outlives its index entry, which is pruned. With
// LegacySessions, each call that reads it puts it back in the index with
// the TTL it has now, so that log-out-everywhere finds it even without the
// walk; and log-out-everywhere with the walk destroys it.
func TestSessionRefreshedByTheOriginalService(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		legacy := b.service(t, Options{LegacySessions: true})
		plain := b.service(t, Options{})
		ctx := ctxT(t)
		idx := b.raw("user-sessions:u-9")
		refreshed := func() string {
			t.Helper()
			id := newSession(t, plain, "u-9", time.Minute)
			storeRaw(t, b, id, stored(t, b, id), time.Hour) // SET … EX 3600, as the original service does
			require.NoError(t, b.client.ZRem(ctx, idx, id).Err(), "prune the lapsed index entry")
			return id
		}
		indexedForAnHour := func(what, id string) {
			t.Helper()
			score, err := b.client.ZScore(ctx, idx, id).Result()
			require.NoError(t, err, "%s: the session is not in the index", what)
			left := time.Until(time.UnixMilli(int64(score)))
			assert.True(t, left > 59*time.Minute && left <= time.Hour+time.Second, "%s: indexed to expire in %v; want its TTL, an hour", what, left)
		}

		// GetSession.
		id := refreshed()
		getSession(t, plain, id)
		assert.Zero(t, b.client.Exists(ctx, idx).Val(), "without LegacySessions this package's own sessions are not checked")
		getSession(t, legacy, id)
		indexedForAnHour("GetSession", id)
		n, err := plain.DestroyUserSessions(ctx, "u-9")
		require.NoError(t, err)
		assert.Equal(t, int64(1), n, "DestroyUserSessions without the walk, after GetSession")
		assert.False(t, sessionExists(t, b, id), "the session survived log-out-everywhere")

		// UpdateSession.
		updated := refreshed()
		ok, err := legacy.UpdateSession(ctx, updated, func(d *SessionData) error { return incr(d, "n") })
		require.NoError(t, err)
		require.True(t, ok)
		indexedForAnHour("UpdateSession", updated)

		// UserSessions: the walk finds it and puts it back in the index.
		listed := refreshed()
		live, err := legacy.UserSessions(ctx, "u-9")
		require.NoError(t, err)
		assert.ElementsMatch(t, []string{updated, listed}, slices.Collect(maps.Keys(live)))
		indexedForAnHour("UserSessions", listed)

		// The scenario of the issue: log-out-everywhere with the walk.
		unseen := refreshed()
		n, err = legacy.DestroyUserSessions(ctx, "u-9")
		require.NoError(t, err)
		assert.Equal(t, int64(3), n, "DestroyUserSessions with LegacySessions")
		for _, id := range []string{updated, listed, unseen} {
			assert.False(t, sessionExists(t, b, id), "the session survived log-out-everywhere")
		}
	})
}

// TestSessionIndexEntryOnlyMovesLater: an index write with an earlier
// expiry (a slower writer's) never makes an entry lapse before its
// session; a new entry is added all the same.
func TestSessionIndexEntryOnlyMovesLater(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Hour)
		idx := b.raw("user-sessions:u1")
		before := b.client.ZScore(ctx, idx, id).Val()
		require.NoError(t, s.indexSession(ctx, "test", "u1", id, time.Now().Add(time.Minute)))
		assert.Equal(t, before, b.client.ZScore(ctx, idx, id).Val(), "an earlier expiry moved the entry")
		later := time.Now().Add(2 * time.Hour)
		require.NoError(t, s.indexSession(ctx, "test", "u1", id, later))
		assert.Equal(t, float64(later.UnixMilli()), b.client.ZScore(ctx, idx, id).Val(), "a later expiry")
		require.NoError(t, s.indexSession(ctx, "test", "u1", "other", time.Now().Add(time.Minute)))
		assert.Equal(t, int64(2), b.client.ZCard(ctx, idx).Val())
	})
}

// TestLegacySessionsWalkHonoursTheCap: sessions the walk puts in the index
// count against MaxSessionsPerUser; those evicted are destroyed and left
// out of UserSessions' result.
func TestLegacySessionsWalkHonoursTheCap(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{LegacySessions: true, MaxSessionsPerUser: 2})
		ctx := ctxT(t)
		for i, id := range []string{"orig-1h", "orig-2h", "orig-3h"} {
			storeRaw(t, b, id, legacySession("u-cap"), time.Duration(i+1)*time.Hour)
		}
		live, err := s.UserSessions(ctx, "u-cap")
		require.NoError(t, err)
		assert.ElementsMatch(t, []string{"orig-2h", "orig-3h"}, slices.Collect(maps.Keys(live)))
		assert.ElementsMatch(t, []string{"orig-2h", "orig-3h"}, indexed(t, b, "u-cap"))
		assert.False(t, sessionExists(t, b, "orig-1h"), "the session closest to expiring was evicted")
	})
}

func TestLegacySessionsWalkStopsWithItsContext(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{LegacySessions: true})
	storeRaw(t, b, "orig-1", legacySession("u"), time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.UserSessions(ctx, "u")
	assert.ErrorIs(t, err, context.Canceled)
	_, err = s.DestroyUserSessions(ctx, "u")
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, int64(1), b.client.Exists(context.Background(), b.raw("session:orig-1")).Val())
}

// FuzzSessionTouch checks the activity script's scanner against the Go
// reader on miniredis: after UpdateSessionActivity every top-level member
// but lastActivity keeps its name and value bytes, in order, and
// lastActivity holds the new time (added at the end when it was missing).
func FuzzSessionTouch(f *testing.F) {
	for _, seed := range []string{
		originalServiceSession, `{}`, `{"lastActivity":1}`, ` { "a" : [ "]" , {"lastActivity":"x"} ] , "lastActivity" : null } `,
		`{"userId":"u","email":"e","role":"r","createdAt":"c","lastActivity":"l","idleTimeoutMs":60000,"expiresAtMs":99999999999999}`,
		`{"userId":"u\"","email":"e","role":"r","createdAt":"c","lastActivity":"l","x":{"idleTimeoutMs":5},"idleTimeoutMs":60000}`,
		`{"userId":"u","email":"e","role":"r","createdAt":"c","lastActivity":"l","userId":"v","idleTimeoutMs":60000}`,
		`{"\u0075serId":"u","lastActivity":"l","caf\u00e9":1}`,
	} {
		f.Add(seed)
	}
	b := newBackend(f, "miniredis")
	clock := &fixedClock{t: time.Date(2026, 11, 29, 7, 0, 0, 0, time.UTC)}
	s := b.service(f, Options{Now: clock.now})
	const stamp = `"2026-11-29T07:00:00.000Z"`
	f.Fuzz(func(t *testing.T, raw string) {
		doc, err := parseSessionDoc([]byte(raw))
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, m := range doc.obj.Members {
			if seen[string(m.RawName)] {
				return // duplicate names: which one is "the" member is not defined
			}
			seen[string(m.RawName)] = true
		}
		storeRaw(t, b, "fuzz", raw, time.Minute)
		ok, err := s.UpdateSessionActivity(ctxT(t), "fuzz")
		if err != nil {
			require.NotContains(t, err.Error(), "member name", "UpdateSessionActivity refused %s, which Go reads", raw)
			require.NotContains(t, err.Error(), "not a JSON object", "UpdateSessionActivity refused %s, which Go reads", raw)
		}
		if err != nil || !ok {
			return // e.g. an idleTimeoutMs Redis refuses, or an expiresAtMs in the past
		}
		if b.client.Exists(ctxT(t), b.raw("session:fuzz")).Val() == 0 {
			return // miniredis overflows a TTL of centuries into the past
		}
		after, err := parseSessionDoc([]byte(stored(t, b, "fuzz")))
		require.NoError(t, err, "UpdateSessionActivity wrote invalid JSON for %s", raw)
		want := slices.Clone(doc.obj.Members)
		if !seen[`"lastActivity"`] {
			want = append(want, jsonobj.Member{Name: "lastActivity", RawName: []byte(`"lastActivity"`)})
		}
		require.Len(t, after.obj.Members, len(want), "members of %s", raw)
		for i, m := range want {
			assert.Equal(t, string(m.RawName), string(after.obj.Members[i].RawName), "member %d name", i)
			if string(m.RawName) == `"lastActivity"` {
				assert.Equal(t, stamp, string(after.obj.Members[i].Value))
			} else {
				assert.Equal(t, string(m.Value), string(after.obj.Members[i].Value), "member %s", m.RawName)
			}
		}
	})
}
