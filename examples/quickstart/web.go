package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"strings"
	"time"

	"github.com/vevurn/redisservice"
)

// httpSessions: cookie sessions through a SessionManager, as a browser
// sees them (a cookie jar), with a flash message and a log-out.
func (t *tour) httpSessions(ctx context.Context) error {
	m, err := t.svc.SessionManager(redisservice.SessionConfig{InsecureCookie: true}) // plain HTTP here only
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		if err := m.Login(r.Context(), redisservice.SessionData{UserID: "u-ada", Email: "ada@example.com"}); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_ = m.Put(r.Context(), "flash", "welcome back")
		_ = m.Put(r.Context(), "theme", "dark")
	})
	mux.HandleFunc("POST /renew", func(w http.ResponseWriter, r *http.Request) {
		before := m.ID(r.Context())
		if err := m.RenewID(r.Context()); err != nil { // after a privilege change
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		m.Remove(r.Context(), "theme")
		fmt.Fprintf(w, "new id: %v, theme removed", m.ID(r.Context()) != before)
	})
	mux.HandleFunc("GET /me", func(w http.ResponseWriter, r *http.Request) {
		data, ok := m.Session(r.Context())
		flash, _, _ := redisservice.PopSessionValue[string](r.Context(), m, "flash")
		theme, _, _ := redisservice.SessionValue[string](r.Context(), m, "theme")
		fmt.Fprintf(w, "logged in=%v user=%s flash=%q theme=%q (load error: %v)", ok, data.UserID, flash, theme, m.LoadErr(r.Context()))
	})
	mux.HandleFunc("POST /logout", func(w http.ResponseWriter, r *http.Request) { _ = m.Logout(r.Context()) })
	srv := httptest.NewServer(m.LoadAndSave(mux))
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 5 * time.Second}
	for _, step := range []struct{ method, path string }{
		{"POST", "/login"}, {"GET", "/me"}, {"GET", "/me"}, {"POST", "/renew"}, {"GET", "/me"}, {"POST", "/logout"}, {"GET", "/me"},
	} {
		body, err := send(ctx, c, step.method, srv.URL+step.path, "", nil)
		if err != nil {
			return err
		}
		fmt.Printf("%s %s -> %s\n", step.method, step.path, body)
	}
	return nil
}

// loginLimits: a log-in limited per client IP and per user name at once,
// all or nothing, the IP taken as the rate-limit middleware takes it.
func (t *tour) loginLimits(ctx context.Context) error {
	ips, err := redisservice.NewClientIPResolver([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, "", 0)
	if err != nil {
		return err
	}
	r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/login", nil)
	r.RemoteAddr = "10.0.0.5:41000" // the load balancer, which names the client
	r.Header.Set("X-Forwarded-For", "203.0.113.7")
	ip := ips.ClientIP(r)
	fmt.Printf("client IP %s (rate-limit key %s)\n", ip, ips.Key(r))
	for i := range 4 {
		res, err := t.svc.AllowAll(ctx, 1,
			redisservice.KeyLimit{Key: "login:ip:" + ip.String(), Limit: redisservice.PerMinute(10)},
			redisservice.KeyLimit{Key: "login:user:ada", Limit: redisservice.PerMinute(3)})
		if err != nil {
			return err
		}
		fmt.Printf("log-in %d from %s: allowed=%v remaining=%d\n", i+1, ip, res.Allowed, res.Remaining)
	}
	return nil
}

// payments: a payment endpoint behind the Idempotency-Key middleware (a
// retry is replayed, not charged again), and a fenced lock.
func (t *tour) payments(ctx context.Context) error {
	charges := 0
	pay := t.svc.IdempotencyMiddleware(redisservice.IdempotencyConfig{Required: true})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			charges++
			fmt.Fprintf(w, "charged, receipt %d", charges)
		}))
	srv := httptest.NewServer(pay)
	defer srv.Close()
	c := &http.Client{Timeout: 5 * time.Second}
	for _, key := range []string{`"pay-7f3a"`, `"pay-7f3a"`, ""} {
		body, err := send(ctx, c, http.MethodPost, srv.URL+"/pay", key, strings.NewReader(`{"cents":1250}`))
		if err != nil {
			return err
		}
		fmt.Printf("POST /pay Idempotency-Key=%s -> %s\n", key, body)
	}
	fmt.Printf("charges made: %d\n", charges)

	lock, err := t.svc.TryLock(ctx, "end-of-day", 10*time.Second)
	if err != nil {
		return err
	}
	_, err = t.svc.TryLock(ctx, "end-of-day", 10*time.Second)
	fmt.Printf("TryLock: token %d; a second TryLock: ErrLockHeld=%v\n", lock.Token(), errors.Is(err, redisservice.ErrLockHeld))
	if err := lock.Refresh(ctx, 10*time.Second); err != nil {
		return err
	}
	if err := lock.Unlock(ctx); err != nil {
		return err
	}
	next, err := t.svc.Lock(ctx, "end-of-day", 10*time.Second) // waits while another holds it
	if err != nil {
		return err
	}
	fmt.Printf("Lock after Unlock: token %d (always greater)\n", next.Token())
	return next.Unlock(ctx)
}

// send makes one request and returns its status and body.
func send(ctx context.Context, c *http.Client, method, url, idemKey string, body io.Reader) (string, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return "", err
	}
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b))), err
}
