package redisservice

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sessionApp is an httptest server whose handlers, under a
// SessionManager's LoadAndSave, log in, read, change and end sessions.
type sessionApp struct {
	t     testing.TB
	b     *backend
	s     *Service
	m     *SessionManager
	clock *fixedClock
	mux   *http.ServeMux
	srv   *httptest.Server
	c     *http.Client
}

// newSessionApp starts a sessionApp over b. The Service's clock is
// app.clock unless opts.Now is set.
func newSessionApp(t testing.TB, b *backend, opts Options, cfg SessionConfig) *sessionApp {
	t.Helper()
	a := &sessionApp{t: t, b: b, clock: &fixedClock{t: time.Now().Truncate(time.Millisecond)}}
	if opts.Now == nil {
		opts.Now = a.clock.now
	}
	if b != nil {
		a.s = b.service(t, opts)
	} else {
		a.s = newService(t, opts)
	}
	return a.start(cfg)
}

// start makes the manager and the server.
func (a *sessionApp) start(cfg SessionConfig) *sessionApp {
	t := a.t
	t.Helper()
	m, err := a.s.SessionManager(cfg)
	require.NoError(t, err)
	a.m = m
	a.mux = http.NewServeMux()
	a.mux.HandleFunc("POST /login/{user}", func(w http.ResponseWriter, r *http.Request) {
		if err := m.Login(r.Context(), SessionData{UserID: r.PathValue("user"), Role: "cashier"}); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, m.ID(r.Context()))
	})
	a.mux.HandleFunc("GET /me", func(w http.ResponseWriter, r *http.Request) {
		data, ok := m.Session(r.Context())
		switch {
		case m.LoadErr(r.Context()) != nil:
			http.Error(w, "sessions unavailable", http.StatusServiceUnavailable)
		case !ok:
			http.Error(w, "log in first", http.StatusUnauthorized)
		default:
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(meReply{ID: m.ID(r.Context()), UserID: data.UserID, IP: data.IP,
				UserAgent: data.UserAgent, CreatedAt: data.CreatedAt, LastActivity: data.LastActivity, Values: data.Values})
		}
	})
	a.mux.HandleFunc("POST /put/{name}", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := m.Put(r.Context(), r.PathValue("name"), json.RawMessage(body)); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	a.mux.HandleFunc("POST /remove/{name}", func(w http.ResponseWriter, r *http.Request) {
		m.Remove(r.Context(), r.PathValue("name"))
	})
	a.mux.HandleFunc("POST /logout", func(w http.ResponseWriter, r *http.Request) {
		if err := m.Logout(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
	})
	a.mux.HandleFunc("POST /renew", func(w http.ResponseWriter, r *http.Request) {
		if err := m.RenewID(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		_, _ = io.WriteString(w, m.ID(r.Context()))
	})
	a.mux.HandleFunc("GET /noop", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	a.srv = httptest.NewServer(m.LoadAndSave(a.mux))
	a.c = a.srv.Client()
	t.Cleanup(a.srv.Close)
	return a
}

// meReply is what GET /me answers.
type meReply struct {
	ID, UserID, IP, UserAgent string
	CreatedAt, LastActivity   time.Time
	Values                    map[string]json.RawMessage
}

// do sends a request carrying the cookies given (name=value pairs
// joined by "; ", or "" for none) and returns the response, its body
// read.
func (a *sessionApp) do(method, path, cookies, body string) (*http.Response, string) {
	a.t.Helper()
	req, err := http.NewRequest(method, a.srv.URL+path, strings.NewReader(body))
	require.NoError(a.t, err)
	if cookies != "" {
		req.Header.Set("Cookie", cookies)
	}
	resp, err := a.c.Do(req)
	require.NoError(a.t, err)
	b, err := io.ReadAll(resp.Body)
	require.NoError(a.t, err)
	_ = resp.Body.Close()
	return resp, string(b)
}

// with returns the Cookie header value carrying session id id.
func (a *sessionApp) with(id string) string { return a.m.cfg.CookieName + "=" + id }

// login logs user in and returns the new session id.
func (a *sessionApp) login(user, carried string) string {
	a.t.Helper()
	cookies := ""
	if carried != "" {
		cookies = a.with(carried)
	}
	resp, body := a.do("POST", "/login/"+user, cookies, "")
	require.Equal(a.t, http.StatusOK, resp.StatusCode, body)
	c := sessionCookie(a.t, resp, a.m.cfg.CookieName)
	require.NotNil(a.t, c, "Login sent no cookie")
	require.Equal(a.t, body, c.Value)
	return c.Value
}

// me returns the session the request with id sees, and whether there is one.
func (a *sessionApp) me(id string) (meReply, bool) {
	a.t.Helper()
	resp, body := a.do("GET", "/me", a.with(id), "")
	if resp.StatusCode == http.StatusUnauthorized {
		return meReply{}, false
	}
	require.Equal(a.t, http.StatusOK, resp.StatusCode, body)
	var r meReply
	require.NoError(a.t, json.Unmarshal([]byte(body), &r))
	return r, true
}

// put sets name to the JSON value in id's session.
func (a *sessionApp) put(id, name, value string) {
	a.t.Helper()
	resp, body := a.do("POST", "/put/"+name, a.with(id), value)
	require.Equal(a.t, http.StatusOK, resp.StatusCode, body)
}

func (a *sessionApp) advance(d time.Duration) {
	a.clock.mu.Lock()
	a.clock.t = a.clock.t.Add(d)
	a.clock.mu.Unlock()
}

// sessionCookie returns the response's cookie called name, or nil.
func sessionCookie(t testing.TB, resp *http.Response, name string) *http.Cookie {
	t.Helper()
	var found *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == name {
			require.Nil(t, found, "two Set-Cookie of %s", name)
			found = c
		}
	}
	return found
}

func TestSessionConfigRefused(t *testing.T) {
	t.Parallel()
	s := newService(t, Options{Client: newBackend(t, "miniredis").client, SessionMaxLifetime: 12 * time.Hour})
	for _, tc := range []struct {
		name string
		cfg  SessionConfig
	}{
		{"cookie name with a space", SessionConfig{CookieName: "my session"}},
		{"cookie name with a semicolon", SessionConfig{CookieName: "a;b"}},
		{"bad domain", SessionConfig{Domain: "exa mple.com"}},
		{"path with a semicolon", SessionConfig{Path: "/a;b"}},
		{"__Host- with a domain", SessionConfig{CookieName: "__Host-s", Domain: "example.com"}},
		{"__Host- with a path", SessionConfig{CookieName: "__Host-s", Path: "/app"}},
		{"__Host- insecure", SessionConfig{CookieName: "__Host-s", InsecureCookie: true}},
		{"__Secure- insecure", SessionConfig{CookieName: "__Secure-s", InsecureCookie: true}},
		{"SameSite None insecure", SessionConfig{SameSite: http.SameSiteNoneMode, InsecureCookie: true}},
		{"SameSite unknown", SessionConfig{SameSite: 9}},
		{"IdleTimeout negative", SessionConfig{IdleTimeout: -time.Minute}},
		{"IdleTimeout below a second", SessionConfig{IdleTimeout: 500 * time.Millisecond}},
		{"Lifetime negative", SessionConfig{Lifetime: -time.Hour}},
		{"Lifetime below IdleTimeout", SessionConfig{IdleTimeout: time.Hour, Lifetime: time.Minute}},
		{"Lifetime beyond SessionMaxLifetime", SessionConfig{Lifetime: 13 * time.Hour}},
		{"TouchInterval negative", SessionConfig{TouchInterval: -time.Second}},
		{"TouchInterval not below IdleTimeout", SessionConfig{IdleTimeout: time.Minute, TouchInterval: time.Minute}},
		{"bad trusted proxy", SessionConfig{TrustedProxies: []netip.Prefix{{}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := s.SessionManager(tc.cfg)
			assert.ErrorIs(t, err, ErrInvalidArgument)
			assert.Nil(t, m)
		})
	}
	m, err := s.SessionManager(SessionConfig{})
	require.NoError(t, err, "the zero SessionConfig")
	assert.Equal(t, SessionConfig{CookieName: "session", Path: "/", SameSite: http.SameSiteLaxMode, IdleTimeout: 30 * time.Minute,
		Lifetime: 12 * time.Hour, TouchInterval: time.Minute}, func() SessionConfig { c := m.cfg; c.ErrorHandler = nil; return c }(),
		"defaults: Lifetime is SessionMaxLifetime when set")
	m, err = s.SessionManager(SessionConfig{Lifetime: 10 * time.Minute})
	require.NoError(t, err)
	assert.Equal(t, 10*time.Minute, m.cfg.IdleTimeout, "IdleTimeout defaults to at most Lifetime")
	assert.Equal(t, time.Minute, m.cfg.TouchInterval, "TouchInterval defaults to IdleTimeout/10")
}

func TestSessionCookieAttributes(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		a := newSessionApp(t, b, Options{}, SessionConfig{CookieName: "sid", Domain: "example.com", IdleTimeout: 30 * time.Minute,
			Lifetime: time.Hour, TouchInterval: time.Minute})
		resp, body := a.do("POST", "/login/u1", "", "")
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
		raw := resp.Header.Values("Set-Cookie")
		require.Len(t, raw, 1)
		id := body
		assert.True(t, validSessionID(id) && len(id) == 43, "cookie value %q; want a new session id alone", id)
		attrs := strings.Split(raw[0], "; ")
		assert.Equal(t, "sid="+id, attrs[0])
		assert.ElementsMatch(t, []string{"sid=" + id, "Path=/", "Domain=example.com", "Max-Age=1800", "HttpOnly", "Secure", "SameSite=Lax",
			"Expires=" + a.clock.now().Add(30*time.Minute).UTC().Format(http.TimeFormat)}, attrs)
		assert.Contains(t, resp.Header.Values("Vary"), "Cookie")

		// Within TouchInterval nothing is sent; once it has passed, the
		// touch sends the new deadline.
		resp, _ = a.do("GET", "/noop", a.with(id), "")
		assert.Empty(t, resp.Header.Values("Set-Cookie"), "a request within TouchInterval")
		a.advance(40 * time.Minute) // past the idle deadline on the clock; the key's TTL runs on the server's
		resp, _ = a.do("GET", "/noop", a.with(id), "")
		c := sessionCookie(t, resp, "sid")
		require.NotNil(t, c, "a touch sends the cookie")
		assert.Equal(t, id, c.Value)
		assert.Equal(t, 20*60, c.MaxAge, "Max-Age 20 minutes before the absolute end, not the idle 30: it never outlives the session")
		d := b.client.PTTL(ctxT(t), b.raw("session:"+id)).Val()
		assert.True(t, d <= 20*time.Minute && d > 19*time.Minute, "PTTL = %v; want the 20 minutes left", d)

		// Past the absolute end: no session, and nothing written.
		a.advance(21 * time.Minute)
		resp, _ = a.do("GET", "/me", a.with(id), "")
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		assert.Empty(t, resp.Header.Values("Set-Cookie"), "an ended session")
	})
}

func TestSessionCookieVariants(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	for _, tc := range []struct {
		name string
		cfg  SessionConfig
		want []string // attributes beside name=value
	}{
		{"insecure", SessionConfig{InsecureCookie: true, IdleTimeout: time.Minute},
			[]string{"Path=/", "Max-Age=60", "HttpOnly", "SameSite=Lax"}},
		{"browser session", SessionConfig{BrowserSessionCookie: true, SameSite: http.SameSiteStrictMode, Path: "/app"},
			[]string{"Path=/app", "HttpOnly", "Secure", "SameSite=Strict"}},
		{"SameSite none, __Host-", SessionConfig{CookieName: "__Host-s", SameSite: http.SameSiteNoneMode, IdleTimeout: 2 * time.Second},
			[]string{"Path=/", "Max-Age=2", "HttpOnly", "Secure", "SameSite=None"}},
		{"SameSite default mode", SessionConfig{SameSite: http.SameSiteDefaultMode, IdleTimeout: time.Hour},
			[]string{"Path=/", "Max-Age=3600", "HttpOnly", "Secure"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newSessionApp(t, b, Options{}, tc.cfg)
			resp, body := a.do("POST", "/login/u1", "", "")
			raw := resp.Header.Values("Set-Cookie")
			require.Len(t, raw, 1)
			attrs := strings.Split(raw[0], "; ")
			assert.Equal(t, a.m.cfg.CookieName+"="+body, attrs[0])
			var got []string
			for _, at := range attrs[1:] {
				if !strings.HasPrefix(at, "Expires=") {
					got = append(got, at)
				}
			}
			assert.ElementsMatch(t, tc.want, got)
			assert.Equal(t, tc.cfg.BrowserSessionCookie, !strings.Contains(raw[0], "Expires="), "Expires with Max-Age only")
		})
	}
}

func TestSessionLoginFixation(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		a := newSessionApp(t, b, Options{MaxSessionsPerUser: 2}, SessionConfig{InsecureCookie: true,
			TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
		ctx := ctxT(t)

		// A session the request carries is destroyed by the log-in, the
		// new one gets a new id, and the user index follows.
		old := a.login("u1", "")
		a.put(old, "cart", `["A-1"]`)
		req, err := http.NewRequest("POST", a.srv.URL+"/login/u2", nil)
		require.NoError(t, err)
		req.Header.Set("Cookie", a.with(old))
		req.Header.Set("User-Agent", "till/2.0")
		req.Header.Set("X-Forwarded-For", "198.51.100.1, 203.0.113.9")
		resp, err := a.c.Do(req)
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		c := sessionCookie(t, resp, "session")
		require.NotNil(t, c)
		fresh := c.Value
		assert.NotEqual(t, old, fresh)
		_, found, err := a.s.GetSession(ctx, old)
		require.NoError(t, err)
		assert.False(t, found, "the carried session survives the log-in")
		assert.NotContains(t, b.client.ZRange(ctx, b.raw("user-sessions:u1"), 0, -1).Val(), old)
		assert.Equal(t, []string{fresh}, b.client.ZRange(ctx, b.raw("user-sessions:u2"), 0, -1).Val())
		me, ok := a.me(fresh)
		require.True(t, ok)
		assert.Equal(t, "u2", me.UserID)
		assert.Equal(t, "203.0.113.9", me.IP, "IP from the trusted proxy's header")
		assert.Equal(t, "till/2.0", me.UserAgent)
		assert.True(t, me.CreatedAt.Equal(a.clock.now()) && me.LastActivity.Equal(a.clock.now()), "CreatedAt %v, LastActivity %v; want now", me.CreatedAt, me.LastActivity)
		assert.Empty(t, me.Values, "the carried session's values do not pass to the new one")

		// An id the attacker chose is never the session's.
		planted := strings.Repeat("A", 43)
		resp, body := a.do("POST", "/login/u3", a.with(planted), "")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.NotEqual(t, planted, body)
		_, ok = a.me(planted)
		assert.False(t, ok)

		// MaxSessionsPerUser holds: a third log-in evicts the oldest.
		first := a.login("u4", "")
		a.advance(time.Second)
		second := a.login("u4", "")
		a.advance(time.Second)
		third := a.login("u4", "")
		_, ok = a.me(first)
		assert.False(t, ok, "the session beyond MaxSessionsPerUser")
		_, ok = a.me(second)
		assert.True(t, ok)
		_, ok = a.me(third)
		assert.True(t, ok)
	})
}

func TestSessionLogoutAndRenewID(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		a := newSessionApp(t, b, Options{}, SessionConfig{InsecureCookie: true})
		ctx := ctxT(t)
		id := a.login("u1", "")
		a.put(id, "cart", `{"items":["A-1"]}`)

		resp, body := a.do("POST", "/renew", a.with(id), "")
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
		c := sessionCookie(t, resp, "session")
		require.NotNil(t, c)
		renewed := c.Value
		assert.Equal(t, body, renewed)
		assert.NotEqual(t, id, renewed)
		assert.True(t, c.MaxAge == 1800 || c.MaxAge == 1799, "Max-Age = %d; want the seconds left, rounded down", c.MaxAge)
		_, ok := a.me(id)
		assert.False(t, ok, "the old id after RenewID")
		me, ok := a.me(renewed)
		require.True(t, ok)
		assert.JSONEq(t, `{"items":["A-1"]}`, string(me.Values["cart"]), "values move with the session")
		assert.Equal(t, []string{renewed}, b.client.ZRange(ctx, b.raw("user-sessions:u1"), 0, -1).Val())
		assert.Equal(t, float64(a.clock.now().Add(24*time.Hour).UnixMilli()), b.client.ZScore(ctx, b.raw("user-sessions:u1"), renewed).Val(),
			"the renewed id's index entry lasts until the absolute end")

		// A change and a renewal in one request: saved under the new id.
		a.mux.HandleFunc("POST /put-and-renew", func(w http.ResponseWriter, r *http.Request) {
			require.NoError(t, a.m.Put(r.Context(), "step", 2))
			require.NoError(t, a.m.RenewID(r.Context()))
		})
		resp, _ = a.do("POST", "/put-and-renew", a.with(renewed), "")
		c = sessionCookie(t, resp, "session")
		require.NotNil(t, c)
		me, ok = a.me(c.Value)
		require.True(t, ok)
		assert.Equal(t, "2", string(me.Values["step"]))
		last := c.Value

		resp, _ = a.do("POST", "/logout", a.with(last), "")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		c = sessionCookie(t, resp, "session")
		require.NotNil(t, c, "Logout expires the cookie")
		assert.Equal(t, "", c.Value)
		assert.Equal(t, -1, c.MaxAge)
		_, found, err := a.s.GetSession(ctx, last)
		require.NoError(t, err)
		assert.False(t, found, "the session after Logout")

		// Without a session: RenewID fails with ErrNoSession; Logout of a
		// cookie that names nothing expires it; of no cookie sends none.
		resp, body = a.do("POST", "/renew", a.with(last), "")
		assert.Equal(t, http.StatusConflict, resp.StatusCode)
		assert.Contains(t, body, ErrNoSession.Error()[len("redisservice: "):])
		resp, _ = a.do("POST", "/logout", a.with(last), "")
		assert.Equal(t, -1, sessionCookie(t, resp, "session").MaxAge)
		resp, _ = a.do("POST", "/logout", "", "")
		assert.Empty(t, resp.Header.Values("Set-Cookie"))
	})
}

// An unknown, ended or malformed cookie is no session: the handler runs
// and nothing is written for it. A malformed one costs no round trip.
func TestSessionJunkCookies(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		rt := new(roundTrips)
		b.client.AddHook(rt)
		a := newSessionApp(t, b, Options{}, SessionConfig{InsecureCookie: true})
		require.NoError(t, sessionLoadScript.Load(ctxT(t), b.client).Err())
		storeRaw(t, b, "notjson", `{"userId":`, time.Minute)
		storeRaw(t, b, "array", `[1,2]`, time.Minute)
		for _, tc := range []struct {
			cookies string
			rt      int64 // round trips: a cookie that is no session id costs none
		}{
			{"", 0}, {"session=", 0}, {"session=" + strings.Repeat("x", 257), 0}, {"session=a:b", 0}, {"session=%00", 0},
			{`session="quoted"`, 1}, {"session=" + strings.Repeat("B", 43), 1}, {"session=notjson", 1}, {"session=array", 1},
			{"other=" + strings.Repeat("C", 43), 0}, {"session=a b", 0}, {"session=é", 0}, {"session=a;session=", 1},
			{"session", 0}, {"=;=;", 0},
		} {
			before := rt.n.Load()
			resp, body := a.do("GET", "/me", tc.cookies, "")
			assert.Contains(t, []int{http.StatusUnauthorized, http.StatusServiceUnavailable}, resp.StatusCode, "cookies %q: %s", tc.cookies, body)
			assert.Empty(t, resp.Header.Values("Set-Cookie"), "cookies %q", tc.cookies)
			assert.Equal(t, tc.rt, rt.n.Load()-before, "round trips for cookies %q", tc.cookies)
		}
		// A stored value that is not a session: the handler learns why.
		a.mux.HandleFunc("GET /why", func(w http.ResponseWriter, r *http.Request) {
			assert.ErrorIs(t, a.m.LoadErr(r.Context()), ErrDecode)
		})
		a.do("GET", "/why", "session=array", "")

		// A valid id after junk of the same name is found.
		id := a.login("u1", "")
		me, ok := a.me("x:y; session=" + id)
		require.True(t, ok)
		assert.Equal(t, id, me.ID)
	})
}

func FuzzSessionCookie(f *testing.F) {
	for _, seed := range []string{"", "session=", "session=" + strings.Repeat("A", 43), "session=\x00", "session=%zz; session=~",
		"session=" + strings.Repeat("-", 300), "a=b; session=c; session=d", `session="x"`} {
		f.Add(seed)
	}
	b := newBackend(f, "miniredis")
	a := newSessionApp(f, b, Options{}, SessionConfig{InsecureCookie: true})
	h := a.m.LoadAndSave(a.mux)
	f.Fuzz(func(t *testing.T, cookies string) {
		req := httptest.NewRequest("GET", "/me", nil)
		req.Header.Set("Cookie", cookies)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		require.False(t, w.Code != http.StatusUnauthorized, "cookies %q: status %d; want 401", cookies, w.Code)
		c := w.Header().Values("Set-Cookie")
		require.False(t, len(c) > 0, "cookies %q: Set-Cookie %q; want none", cookies, c)
	})
}

func TestSessionValues(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		a := newSessionApp(t, b, Options{}, SessionConfig{InsecureCookie: true})
		m := a.m
		type cart struct {
			Items []string `json:"items"`
		}
		results := map[string]any{}
		a.mux.HandleFunc("POST /values", func(w http.ResponseWriter, r *http.Request) {
			ctx := r.Context()
			for _, name := range []string{"userId", "email", "role", "createdAt", "lastActivity", "ip", "userAgent", "idleTimeoutMs", "expiresAtMs"} {
				assert.ErrorIs(t, m.Put(ctx, name, "x"), ErrInvalidArgument, "Put(%q)", name)
			}
			assert.ErrorIs(t, m.Put(ctx, "\xff", 1), ErrInvalidArgument, "a name that is not UTF-8")
			for _, v := range []any{make(chan int), func() {}, map[bool]int{true: 1}} {
				assert.ErrorIs(t, m.Put(ctx, "bad", v), ErrInvalidArgument, "Put(%T)", v)
			}
			require.NoError(t, m.Put(ctx, "cart", cart{Items: []string{"A-1"}}))
			require.NoError(t, m.Put(ctx, "html", "<b>&</b>"))
			require.NoError(t, m.Put(ctx, "count", 3))
			require.NoError(t, m.Put(ctx, "nothing", nil))
			require.NoError(t, m.Put(ctx, "flash", "saved"))
			c, ok, err := SessionValue[cart](ctx, m, "cart")
			results["cart"], results["cartOK"], results["cartErr"] = c, ok, err
		})
		a.mux.HandleFunc("GET /read", func(w http.ResponseWriter, r *http.Request) {
			ctx := r.Context()
			n, ok, err := SessionValue[string](ctx, m, "count")
			assert.ErrorIs(t, err, ErrDecode, "a number as a string")
			assert.False(t, ok, "a value that does not decode is not found")
			assert.Empty(t, n)
			_, ok, err = SessionValue[int](ctx, m, "nothing")
			assert.ErrorIs(t, err, ErrDecode, "null as an int")
			assert.False(t, ok)
			p, ok, err := SessionValue[*int](ctx, m, "nothing")
			assert.NoError(t, err)
			assert.True(t, ok)
			assert.Nil(t, p)
			_, ok, err = SessionValue[cart](ctx, m, "html")
			assert.ErrorIs(t, err, ErrDecode, "a string as a struct")
			assert.False(t, ok)
			_, ok, err = SessionValue[int](ctx, m, "missing")
			assert.NoError(t, err)
			assert.False(t, ok)
			flash, ok, err := PopSessionValue[string](ctx, m, "flash")
			results["flash"], results["flashOK"], results["flashErr"] = flash, ok, err
			_, ok, err = PopSessionValue[int](ctx, m, "html")
			assert.ErrorIs(t, err, ErrDecode)
			assert.False(t, ok)
		})
		id := a.login("u1", "")
		resp, _ := a.do("POST", "/values", a.with(id), "")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, cart{Items: []string{"A-1"}}, results["cart"])
		assert.Equal(t, true, results["cartOK"])
		assert.Nil(t, results["cartErr"])
		raw := b.client.Get(ctxT(t), b.raw("session:"+id)).Val()
		assert.Contains(t, raw, `"html":"<b>&</b>"`, "stored as JSON.stringify writes it")
		assert.Contains(t, raw, `"cart":{"items":["A-1"]}`)

		a.do("GET", "/read", a.with(id), "")
		assert.Equal(t, "saved", results["flash"])
		assert.Equal(t, true, results["flashOK"])
		assert.Nil(t, results["flashErr"])
		a.do("GET", "/read", a.with(id), "")
		assert.Equal(t, "", results["flash"], "a popped value is gone on the next request")
		assert.Equal(t, false, results["flashOK"])
		me, _ := a.me(id)
		assert.Contains(t, me.Values, "html", "a value that did not decode is not popped")
	})
}

// Calls outside LoadAndSave, without a session, and after the response
// has begun.
func TestSessionManagerMisuse(t *testing.T) {
	t.Parallel()
	a := newSessionApp(t, newBackend(t, "miniredis"), Options{}, SessionConfig{InsecureCookie: true})
	m, ctx := a.m, ctxT(t)
	assert.ErrorIs(t, m.Login(ctx, SessionData{UserID: "u1"}), ErrInvalidArgument, "outside LoadAndSave")
	assert.ErrorIs(t, m.Put(ctx, "a", 1), ErrInvalidArgument)
	assert.ErrorIs(t, m.Logout(ctx), ErrInvalidArgument)
	assert.ErrorIs(t, m.RenewID(ctx), ErrInvalidArgument)
	m.Remove(ctx, "a")
	_, ok := m.Session(ctx)
	assert.False(t, ok)
	assert.Empty(t, m.ID(ctx))
	_, ok, err := SessionValue[int](ctx, m, "a")
	assert.False(t, ok)
	assert.NoError(t, err)
	_, ok, err = PopSessionValue[int](ctx, m, "a")
	assert.False(t, ok)
	assert.NoError(t, err)

	a.mux.HandleFunc("POST /misuse", func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		assert.ErrorIs(t, m.Put(ctx, "a", 1), ErrNoSession)
		assert.ErrorIs(t, m.RenewID(ctx), ErrNoSession)
		assert.ErrorIs(t, m.Login(ctx, SessionData{}), ErrInvalidArgument, "empty UserID")
		assert.ErrorIs(t, m.Login(ctx, SessionData{UserID: "u1", Values: map[string]json.RawMessage{"role": json.RawMessage(`1`)}}), ErrInvalidArgument)
		require.NoError(t, m.Login(ctx, SessionData{UserID: "u1"}))
		require.NoError(t, m.Put(ctx, "a", 1))
		w.WriteHeader(http.StatusAccepted)
		assert.ErrorIs(t, m.Put(ctx, "b", 2), ErrInvalidArgument, "after the response began")
		assert.ErrorIs(t, m.Logout(ctx), ErrInvalidArgument, "after the response began")
		_, _, err := PopSessionValue[int](ctx, m, "a")
		assert.ErrorIs(t, err, ErrInvalidArgument, "after the response began")
		v, ok, err := SessionValue[int](ctx, m, "a")
		assert.NoError(t, err)
		assert.True(t, ok)
		assert.Equal(t, 1, v)
	})
	resp, _ := a.do("POST", "/misuse", "", "")
	assert.Equal(t, http.StatusAccepted, resp.StatusCode)
	c := sessionCookie(t, resp, "session")
	require.NotNil(t, c)
	me, ok := a.me(c.Value)
	require.True(t, ok)
	assert.Equal(t, map[string]json.RawMessage{"a": json.RawMessage("1")}, me.Values)

	// A handler that panics saves nothing.
	panicky := m.LoadAndSave(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.NoError(t, m.Put(r.Context(), "p", 1))
		panic("boom")
	}))
	req := httptest.NewRequest("POST", "/", nil)
	req.Header.Set("Cookie", a.with(c.Value))
	assert.Panics(t, func() { panicky.ServeHTTP(httptest.NewRecorder(), req) })
	me, _ = a.me(c.Value)
	assert.NotContains(t, me.Values, "p", "a panicking handler's change")

	// Nested LoadAndSave: the outer one loads and saves.
	nested := httptest.NewServer(m.LoadAndSave(m.LoadAndSave(a.mux)))
	t.Cleanup(nested.Close)
	req, err = http.NewRequest("POST", nested.URL+"/put/b", strings.NewReader("2"))
	require.NoError(t, err)
	req.Header.Set("Cookie", a.with(c.Value))
	resp, err = nested.Client().Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	me, _ = a.me(c.Value)
	assert.Equal(t, "2", string(me.Values["b"]))
	assert.Len(t, resp.Header.Values("Vary"), 1)
}
