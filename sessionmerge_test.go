package redisservice

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Requests' changes are merged into the stored session: names a request
// did not touch keep what concurrent requests wrote.
func TestSessionConcurrentMerges(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		a := newSessionApp(t, b, Options{}, SessionConfig{InsecureCookie: true, TouchInterval: time.Second})
		id := a.login("u1", "")
		for i := range 8 {
			a.put(id, fmt.Sprintf("old%d", i), "true")
		}
		// Every request also touches (TouchInterval has passed), so the
		// writes race with lastActivity changes too.
		a.advance(2 * time.Second)
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				path := fmt.Sprintf("/put/new%02d", i)
				if i%2 == 1 {
					path = fmt.Sprintf("/remove/old%d", i/2)
				}
				resp, body := a.do("POST", path, a.with(id), strconv.Itoa(i))
				assert.Equal(t, http.StatusOK, resp.StatusCode, body)
			}()
		}
		wg.Wait()
		me, ok := a.me(id)
		require.True(t, ok)
		want := map[string]string{}
		for i := 0; i < 16; i += 2 {
			want[fmt.Sprintf("new%02d", i)] = strconv.Itoa(i)
		}
		got := map[string]string{}
		for k, v := range me.Values {
			got[k] = string(v)
		}
		assert.Equal(t, want, got, "8 puts and 8 removes of other names, concurrently")

		// 16 requests putting 16 names keep all 16.
		var wg2 sync.WaitGroup
		for i := range 16 {
			wg2.Add(1)
			go func() {
				defer wg2.Done()
				resp, body := a.do("POST", fmt.Sprintf("/put/p%02d", i), a.with(id), strconv.Itoa(i))
				assert.Equal(t, http.StatusOK, resp.StatusCode, body)
			}()
		}
		wg2.Wait()
		me, _ = a.me(id)
		for i := range 16 {
			assert.Equal(t, strconv.Itoa(i), string(me.Values[fmt.Sprintf("p%02d", i)]), "p%02d", i)
		}
	})
}

// A session destroyed while a request that changed it runs is not
// brought back by that request's save.
func TestSessionSaveNeverResurrects(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		a := newSessionApp(t, b, Options{}, SessionConfig{InsecureCookie: true})
		other := b.service(t, Options{})
		ctx := ctxT(t)
		changed, release := make(chan struct{}), make(chan struct{})
		a.mux.HandleFunc("POST /slow", func(w http.ResponseWriter, r *http.Request) {
			assert.NoError(t, a.m.Put(r.Context(), "cart", []string{"A-1"}))
			close(changed)
			<-release
			_, _ = io.WriteString(w, "done")
		})
		for _, destroy := range []struct {
			name string
			fn   func(id string)
		}{
			{"DestroySession", func(id string) { _, err := other.DestroySession(ctx, id); assert.NoError(t, err) }},
			{"DestroyUserSessions", func(string) { _, err := other.DestroyUserSessions(ctx, "u1"); assert.NoError(t, err) }},
			{"DEL by the original service", func(id string) { assert.NoError(t, b.client.Del(ctx, b.raw("session:"+id)).Err()) }},
		} {
			id := a.login("u1", "")
			changed, release = make(chan struct{}), make(chan struct{})
			done := make(chan *http.Response, 1)
			go func() {
				resp, _ := a.do("POST", "/slow", a.with(id), "")
				done <- resp
			}()
			<-changed
			destroy.fn(id)
			close(release)
			resp := <-done
			assert.Equal(t, http.StatusOK, resp.StatusCode, "%s: a save that finds the session gone is no failure", destroy.name)
			assert.Zero(t, b.client.Exists(ctx, b.raw("session:"+id)).Val(), "%s: the session came back", destroy.name)
			_, ok := a.me(id)
			assert.False(t, ok, destroy.name)
		}
	})
}

// Every revocation made elsewhere is seen by the next request.
func TestSessionRevocationFromAnotherService(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		a := newSessionApp(t, b, Options{}, SessionConfig{InsecureCookie: true})
		other := b.service(t, Options{})
		ctx := ctxT(t)
		gone := func(id, what string) {
			t.Helper()
			resp, _ := a.do("GET", "/me", a.with(id), "")
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, what)
			assert.Empty(t, resp.Header.Values("Set-Cookie"), what)
		}

		id := a.login("u1", "")
		_, ok := a.me(id)
		require.True(t, ok)
		_, err := other.DestroySession(ctx, id)
		require.NoError(t, err)
		gone(id, "DestroySession")

		one, two := a.login("u2", ""), a.login("u2", "")
		n, err := other.DestroyUserSessions(ctx, "u2")
		require.NoError(t, err)
		assert.Equal(t, int64(2), n)
		gone(one, "DestroyUserSessions")
		gone(two, "DestroyUserSessions")

		id = a.login("u3", "")
		newID, ok, err := other.RenewSessionID(ctx, id)
		require.NoError(t, err)
		require.True(t, ok)
		gone(id, "the old id after RenewSessionID")
		me, ok := a.me(newID)
		require.True(t, ok, "the new id")
		assert.Equal(t, "u3", me.UserID)

		// The original service deletes or rewrites the key.
		require.NoError(t, b.client.Del(ctx, b.raw("session:"+newID)).Err())
		gone(newID, "DEL")
		id = a.login("u4", "")
		now := a.clock.now().UTC().Format(isoMillis)
		require.NoError(t, b.client.Set(ctx, b.raw("session:"+id),
			`{"userId":"u4","email":"","role":"admin","createdAt":"`+now+`","lastActivity":"`+now+`","ip":"","userAgent":"","note":"rewritten"}`,
			time.Hour).Err())
		me, ok = a.me(id)
		require.True(t, ok)
		assert.Equal(t, `"rewritten"`, string(me.Values["note"]), "a rewrite by the original service")
	})
}

// The cost of a request, in commands sent (each its own round trip).
func TestSessionCommandsPerRequest(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		rt := new(roundTrips)
		b.client.AddHook(rt)
		ctx := ctxT(t)
		for _, script := range []*redis.Script{sessionLoadScript, sessionCASScript, sessionIndexScript} {
			require.NoError(t, script.Load(ctx, b.client).Err())
		}
		a := newSessionApp(t, b, Options{}, SessionConfig{InsecureCookie: true, TouchInterval: time.Minute})
		count := func(what string, want int64, method, path, cookies, body string) *http.Response {
			t.Helper()
			before := rt.n.Load()
			resp, _ := a.do(method, path, cookies, body)
			assert.Equal(t, want, rt.n.Load()-before, "commands for %s", what)
			return resp
		}
		id := a.login("u1", "")
		for range 3 {
			count("an unchanged request", 1, "GET", "/me", a.with(id), "")
		}
		a.advance(2 * time.Minute)
		resp := count("an unchanged request that touches", 1, "GET", "/me", a.with(id), "")
		require.NotNil(t, sessionCookie(t, resp, "session"), "the touch")
		count("an unchanged request after the touch", 1, "GET", "/noop", a.with(id), "")
		count("a change", 2, "POST", "/put/cart", a.with(id), `["A-1"]`)
		count("no cookie", 0, "GET", "/noop", "", "")
		count("a cookie that is no session id", 0, "GET", "/noop", "session=x:y", "")
		count("an unknown session", 1, "GET", "/noop", a.with(strings.Repeat("Q", 43)), "")

		// Sessions without a stored absolute end write the index when
		// touched; those of the original service on every request.
		plain := newSession(t, a.s, "u2", time.Hour)
		count("a session without an end of its own, not touched", 1, "GET", "/noop", a.with(plain), "")
		a.advance(2 * time.Minute)
		count("a session without an end of its own, touched", 2, "GET", "/noop", a.with(plain), "")
		now := a.clock.now().UTC().Format(isoMillis)
		storeRaw(t, b, "legacy-1", `{"userId":"u3","email":"","role":"","createdAt":"`+now+`","lastActivity":"`+now+`","ip":"","userAgent":""}`, time.Hour)
		count("a session of the original service", 2, "GET", "/noop", a.with("legacy-1"), "")
		count("a session of the original service, again", 2, "GET", "/noop", a.with("legacy-1"), "")

		// Under LegacySessions every request indexes its session, as
		// GetSession does.
		legacy := newSessionApp(t, b, Options{LegacySessions: true}, SessionConfig{InsecureCookie: true})
		id = legacy.login("u4", "")
		before := rt.n.Load()
		legacy.do("GET", "/noop", legacy.with(id), "")
		assert.Equal(t, int64(2), rt.n.Load()-before, "commands for a request under LegacySessions")
	})
}

// Log-out-everywhere finds a session however often it was touched: its
// index entry lasts until the session's absolute end, or, for a session
// without one, is moved by each touch.
func TestSessionLogOutEverywhereAfterManyTouches(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		a := newSessionApp(t, b, Options{}, SessionConfig{InsecureCookie: true, IdleTimeout: 30 * time.Minute,
			TouchInterval: time.Minute, Lifetime: 24 * time.Hour})
		capped := b.service(t, Options{Now: a.clock.now, SessionMaxLifetime: 24 * time.Hour})
		plain := b.service(t, Options{Now: a.clock.now})
		ctx := ctxT(t)
		ids := []string{a.login("u1", ""), newSession(t, capped, "u1", 30*time.Minute), newSession(t, plain, "u1", 30*time.Minute)}
		// Ten idle timeouts of steady use: every request touches.
		for range 30 {
			a.advance(10 * time.Minute)
			for _, id := range ids {
				resp, _ := a.do("GET", "/me", a.with(id), "")
				require.Equal(t, http.StatusOK, resp.StatusCode)
			}
		}
		// A new log-in writes the index, dropping the entries it holds
		// for expired.
		last := a.login("u1", "")
		n, err := a.s.DestroyUserSessions(ctx, "u1")
		require.NoError(t, err)
		assert.Equal(t, int64(4), n, "sessions destroyed by log-out-everywhere")
		for _, id := range append(ids, last) {
			_, ok := a.me(id)
			assert.False(t, ok, "a session survived log-out-everywhere")
		}
	})
}

// IdleTimeout slides with the touches; Lifetime ends a session however
// active; both hold on the server's clock.
func TestSessionIdleTimeoutSlides(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		a := newSessionApp(t, b, Options{}, SessionConfig{InsecureCookie: true, IdleTimeout: 2 * time.Second,
			TouchInterval: 100 * time.Millisecond, Lifetime: time.Hour})
		step := func(d time.Duration) { a.advance(d); b.pass(d) }
		id := a.login("u1", "")
		for i := range 3 {
			step(time.Second)
			resp, _ := a.do("GET", "/me", a.with(id), "")
			require.Equal(t, http.StatusOK, resp.StatusCode, "request %d, within the sliding idle timeout", i)
			c := sessionCookie(t, resp, "session")
			require.NotNil(t, c, "a touch")
			assert.True(t, c.MaxAge == 2 || c.MaxAge == 1, "Max-Age %d", c.MaxAge)
		}
		step(2500 * time.Millisecond)
		b.waitFor(t, "the session ends IdleTimeout after its last touch", func() bool {
			resp, _ := a.do("GET", "/me", a.with(id), "")
			return resp.StatusCode == http.StatusUnauthorized
		})
	})
}

// An unchanged request within TouchInterval of a session the manager has
// seen sends one GET: one command on the server too (a script would run
// its own commands beside EVALSHA). The stored session still decides:
// revoked, it is gone; rewritten with an older lastActivity, it is
// touched; past its absolute end, it is deleted.
func TestSessionUnchangedRequestIsOneCommand(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		names := new(commandNames)
		b.client.AddHook(names)
		ctx := ctxT(t)
		require.NoError(t, sessionLoadScript.Load(ctx, b.client).Err())
		a := newSessionApp(t, b, Options{}, SessionConfig{InsecureCookie: true, IdleTimeout: 10 * time.Minute,
			Lifetime: 20 * time.Minute, TouchInterval: time.Minute})
		request := func(what string, id string, want ...string) *http.Response {
			t.Helper()
			names.take()
			resp, body := a.do("GET", "/me", a.with(id), "")
			assert.Equal(t, want, names.take(), "commands for %s (status %d, %s)", what, resp.StatusCode, body)
			return resp
		}
		id := a.login("u1", "")
		for range 3 {
			resp := request("an unchanged request after Login", id, "get")
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Nil(t, sessionCookie(t, resp, "session"), "no touch, no cookie")
		}
		a.advance(2 * time.Minute)
		resp := request("a request with a touch due", id, "evalsha")
		require.NotNil(t, sessionCookie(t, resp, "session"), "the touch")
		request("an unchanged request after the touch", id, "get")

		// Seen by another manager (another instance): the first request
		// runs the script, the next ones GET.
		other := newSessionApp(t, b, Options{Now: a.clock.now}, SessionConfig{InsecureCookie: true, IdleTimeout: 10 * time.Minute,
			Lifetime: 20 * time.Minute, TouchInterval: time.Minute})
		names.take()
		resp, _ = other.do("GET", "/me", other.with(id), "")
		assert.Equal(t, []string{"evalsha"}, names.take(), "commands for a session new to the manager")
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		resp, _ = other.do("GET", "/me", other.with(id), "")
		assert.Equal(t, []string{"get"}, names.take(), "commands for the next request")
		assert.Equal(t, http.StatusOK, resp.StatusCode)

		// Rewritten by the original service with an older lastActivity:
		// the GET shows the touch due, and the script touches.
		old := a.clock.now().Add(-5 * time.Minute).UTC().Format(isoMillis)
		raw := regexp.MustCompile(`"lastActivity":"[^"]*"`).ReplaceAllString(stored(t, b, id), `"lastActivity":"`+old+`"`)
		require.NotEqual(t, stored(t, b, id), raw)
		storeRaw(t, b, id, raw, 10*time.Minute)
		resp = request("a session rewritten with an older lastActivity", id, "get", "evalsha")
		require.NotNil(t, sessionCookie(t, resp, "session"), "the touch")
		me, ok := a.me(id)
		require.True(t, ok)
		assert.True(t, me.LastActivity.Equal(a.clock.now()), "lastActivity %v; want %v", me.LastActivity, a.clock.now())

		// Past its absolute end (Lifetime after Login) with no touch due:
		// the script deletes it.
		a.advance(17*time.Minute + 30*time.Second) // Login + 19m30s
		request("a request with a touch due", id, "evalsha")
		a.advance(30 * time.Second) // Login + 20m: no touch due
		resp = request("a request past the session's Lifetime", id, "get", "evalsha")
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		n, err := b.client.Exists(ctx, b.raw(sessionKey(id))).Result()
		require.NoError(t, err)
		assert.Zero(t, n, "the ended session is deleted")

		// Revoked by another Service: the GET finds nothing.
		id = a.login("u2", "")
		request("an unchanged request after Login", id, "get")
		ok, err = other.s.DestroySession(ctx, id)
		require.NoError(t, err)
		require.True(t, ok)
		resp = request("a revoked session", id, "get")
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	})
}

// commandNames records the names of the commands sent through a client,
// connection set-up left out.
type commandNames struct {
	mu    sync.Mutex // guards names
	names []string
}

func (c *commandNames) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commandNames) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.add(cmd)
		return next(ctx, cmd)
	}
}

func (c *commandNames) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			c.add(cmd)
		}
		return next(ctx, cmds)
	}
}

func (c *commandNames) add(cmd redis.Cmder) {
	switch cmd.Name() {
	case "hello", "client", "auth", "select":
		return
	}
	c.mu.Lock()
	c.names = append(c.names, cmd.Name())
	c.mu.Unlock()
}

// take returns the names recorded since the last take.
func (c *commandNames) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.names
	c.names = nil
	return n
}
