package redisservice

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/vevurn/redisservice/internal/clientip"
)

// SessionConfig configures a [SessionManager]. The zero value is usable;
// every default is documented on its field. docs/sessions.md, "Sessions
// over HTTP", has the whole picture.
type SessionConfig struct {
	// CookieName is the cookie's name; its value is the session id only.
	// The default value is "session". A name starting "__Host-" needs
	// Secure, Path "/" and no Domain; "__Secure-" needs Secure.
	CookieName string

	// Domain is the cookie's Domain attribute. The default, empty, makes a
	// host-only cookie.
	Domain string

	// Path is the cookie's Path attribute. The default value is "/".
	Path string

	// SameSite is the cookie's SameSite attribute. The default, zero, is
	// http.SameSiteLaxMode; http.SameSiteDefaultMode sends none.
	// http.SameSiteNoneMode needs Secure (not InsecureCookie).
	SameSite http.SameSite

	// InsecureCookie drops the Secure attribute, for development over
	// plain HTTP only. The default, false, sends Secure: browsers then
	// send the cookie over HTTPS (and to http://localhost) only.
	InsecureCookie bool

	// BrowserSessionCookie sends the cookie without Max-Age or Expires,
	// so that it ends when the browser closes (or with the session,
	// whichever is first). The default, false, gives it a Max-Age that
	// follows the session's idle deadline.
	BrowserSessionCookie bool

	// IdleTimeout is how long a session lives unused (sliding; see
	// TouchInterval). At least one second, and no longer than Lifetime.
	// The default value is 30 minutes, or Lifetime when that is shorter.
	IdleTimeout time.Duration

	// Lifetime is how long a session lives after Login however active it
	// is (absolute). It applies to every session the manager serves,
	// counted from CreatedAt. It may not exceed
	// [Options.SessionMaxLifetime] when that is set. The default value is
	// SessionMaxLifetime when set, else 24 hours.
	Lifetime time.Duration

	// TouchInterval is how often, at most, a request moves a session's
	// lastActivity and idle deadline: a session ends IdleTimeout after
	// its last touch, so between IdleTimeout-TouchInterval and
	// IdleTimeout after its last request. It must be below IdleTimeout.
	// The default value is IdleTimeout/10, at most one minute.
	TouchInterval time.Duration

	// ErrorHandler answers a request whose session changes could not be
	// saved (see [SessionManager.LoadAndSave]); err says why. The default
	// answers 500 Internal Server Error.
	ErrorHandler func(w http.ResponseWriter, r *http.Request, err error)

	// TrustedProxies and ForwardedHeader say how Login finds the client's
	// address for SessionData.IP, with the meaning they have in
	// [RateLimitConfig]: the forwarding header is believed only from these
	// proxies. The defaults ignore every forwarding header.
	TrustedProxies  []netip.Prefix
	ForwardedHeader string
}

// withDefaults returns a copy of c with every unset field filled in,
// given the Service's SessionMaxLifetime.
func (c SessionConfig) withDefaults(maxLifetime time.Duration) SessionConfig {
	if c.CookieName == "" {
		c.CookieName = "session"
	}
	if c.Path == "" {
		c.Path = "/"
	}
	if c.SameSite == 0 {
		c.SameSite = http.SameSiteLaxMode
	}
	if c.Lifetime == 0 {
		c.Lifetime = 24 * time.Hour
		if maxLifetime > 0 {
			c.Lifetime = maxLifetime
		}
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = min(30*time.Minute, c.Lifetime)
	}
	if c.TouchInterval == 0 {
		c.TouchInterval = min(c.IdleTimeout/10, time.Minute)
	}
	if c.ErrorHandler == nil {
		c.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, _ error) {
			http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		}
	}
	return c
}

// validate reports the first setting that cannot work.
func (c SessionConfig) validate(maxLifetime time.Duration) error {
	secure := !c.InsecureCookie
	probe := http.Cookie{Name: c.CookieName, Value: "x", Path: c.Path, Domain: c.Domain}
	switch {
	case probe.Valid() != nil:
		return fmt.Errorf("SessionConfig: %w", probe.Valid())
	case strings.HasPrefix(c.CookieName, "__Host-") && (!secure || c.Path != "/" || c.Domain != ""):
		return fmt.Errorf("SessionConfig.CookieName %q needs Secure, Path \"/\" and no Domain", c.CookieName)
	case strings.HasPrefix(c.CookieName, "__Secure-") && !secure:
		return fmt.Errorf("SessionConfig.CookieName %q needs Secure", c.CookieName)
	case c.SameSite < http.SameSiteDefaultMode || c.SameSite > http.SameSiteNoneMode:
		return fmt.Errorf("SessionConfig.SameSite %d is not an http.SameSite mode", c.SameSite)
	case c.SameSite == http.SameSiteNoneMode && !secure:
		return fmt.Errorf("SessionConfig.SameSite None needs Secure: it cannot go with InsecureCookie")
	case c.IdleTimeout < time.Second:
		return fmt.Errorf("SessionConfig.IdleTimeout %v below one second", c.IdleTimeout)
	case c.Lifetime < c.IdleTimeout:
		return fmt.Errorf("SessionConfig.Lifetime %v below IdleTimeout %v", c.Lifetime, c.IdleTimeout)
	case maxLifetime > 0 && c.Lifetime > maxLifetime:
		return fmt.Errorf("SessionConfig.Lifetime %v beyond Options.SessionMaxLifetime %v", c.Lifetime, maxLifetime)
	case c.TouchInterval < time.Millisecond || c.TouchInterval >= c.IdleTimeout:
		return fmt.Errorf("SessionConfig.TouchInterval %v not from 1ms to below IdleTimeout %v", c.TouchInterval, c.IdleTimeout)
	}
	return nil
}

// SessionManager keeps cookie sessions for net/http handlers: wrap them
// in [SessionManager.LoadAndSave], then log in, read and change the
// session with its methods, passing the request's context. Sessions are
// the Service's ([Service.CreateSession] and the rest), in the format
// shared with the original service. It is safe for concurrent use.
type SessionManager struct {
	s   *Service
	cfg SessionConfig // defaults filled in
	ips *clientip.Resolver
	// hints picks GET over the load script for sessions whose touch is
	// not due (see touchHints).
	hints *touchHints
}

// SessionManager returns a manager of cookie sessions over s, configured
// by cfg. A configuration that cannot work (see [SessionConfig]'s
// fields) is refused with [ErrInvalidArgument].
func (s *Service) SessionManager(cfg SessionConfig) (*SessionManager, error) {
	cfg = cfg.withDefaults(s.opts.SessionMaxLifetime)
	if err := cfg.validate(s.opts.SessionMaxLifetime); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	ips, err := clientip.New(cfg.TrustedProxies, cfg.ForwardedHeader, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: SessionConfig.%w", ErrInvalidArgument, err)
	}
	return &SessionManager{s: s, cfg: cfg, ips: ips, hints: newTouchHints()}, nil
}

// clientIP is the address Login records for r: the rate limiter's
// resolver's, so that both name the same client; "" when RemoteAddr is
// not an address.
func (m *SessionManager) clientIP(r *http.Request) string {
	if a := m.ips.ClientIP(r); a.IsValid() {
		return a.String()
	}
	return ""
}

// sessionStateKey finds a manager's sessionState in a request's context.
type sessionStateKey struct{ m *SessionManager }

// state returns the request's session state under m, or nil outside
// LoadAndSave.
func (m *SessionManager) state(ctx context.Context) *sessionState {
	if ctx == nil {
		return nil
	}
	st, _ := ctx.Value(sessionStateKey{m}).(*sessionState)
	return st
}

// LoadAndSave loads the request's session into its context, runs next, and saves the
// request's changes (and the cookie) before the response's first byte.
//
// The session is read, and touched when TouchInterval has passed, in one round trip: a
// request that changes nothing costs that one, a single GET when the manager has seen the
// session and no touch is due (see docs/sessions.md for the exceptions), and none when the
// local tier ([Options.LocalCacheEntries]) holds it. An
// unknown, ended or malformed cookie is no session, and nothing is written for it. When the
// session cannot be read (Redis down or slow: bounded by [Options.Timeout]), next runs without
// a session ([SessionManager.LoadErr] says why) and the cookie is left as it is.
//
// Put, Remove and PopSessionValue are saved when next first writes (WriteHeader, Write,
// Flush, ReadFrom, Hijack) or returns: once, as a merge into the stored session (names this
// request did not change keep what concurrent requests wrote; a session destroyed meanwhile
// stays destroyed), atomically, bounded by Options.Timeout and not cancelled by the client
// going away. When the save fails, cfg.ErrorHandler answers instead of next, whose writes then
// fail. The response always gets "Vary: Cookie". http.ResponseController works through the
// wrapped writer.
func (m *SessionManager) LoadAndSave(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m.state(r.Context()) != nil { // nested: the outer one loads and saves
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Add("Vary", "Cookie")
		st := m.load(r)
		r = r.WithContext(context.WithValue(r.Context(), sessionStateKey{m}, st))
		st.req = r
		sw := &sessionWriter{ResponseWriter: w, st: st}
		next.ServeHTTP(sw, r)
		sw.commit()
	})
}

// load reads the session that r's cookie names: the first cookie of the
// name whose value is a valid session id.
func (m *SessionManager) load(r *http.Request) *sessionState {
	st := &sessionState{m: m, req: r}
	for _, c := range r.CookiesNamed(m.cfg.CookieName) {
		st.carried = true
		if validSessionID(c.Value) {
			st.cookieID = c.Value
			break
		}
	}
	if st.cookieID == "" {
		return st
	}
	ls, found, err := m.s.loadSession(r.Context(), "loadsession", st.cookieID, m.cfg.TouchInterval, m.cfg.Lifetime, m.hints)
	if !found {
		st.loadErr = err
		return st
	}
	st.id, st.data, st.raw = st.cookieID, ls.data, ls.raw
	if ls.touched && ls.ttl > 0 && !m.cfg.BrowserSessionCookie {
		st.expires = m.s.opts.Now().Add(ls.ttl)
		st.cookie = cookieSet // the deadline moved
	}
	return st
}
