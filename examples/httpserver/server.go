package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/vevurn/redisservice"
)

const (
	sessionCookie = "pos_session"
	sessionTTL    = 30 * time.Minute
	productsKey   = "products:all"
	productsTTL   = 5 * time.Minute
)

// Product is an item on sale.
type Product struct {
	SKU        string `json:"sku"`
	Name       string `json:"name"`
	PriceCents int    `json:"priceCents"`
}

// catalog stands in for the database behind the cache.
type catalog struct {
	mu       sync.Mutex // guards products and loads
	products map[string]Product
	loads    int // how often the list was read from the "database"
}

func newCatalog() *catalog {
	return &catalog{products: map[string]Product{
		"A-1": {"A-1", "Espresso", 250},
		"B-2": {"B-2", "Croissant", 300},
	}}
}

func (c *catalog) list(context.Context) ([]Product, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.loads++
	out := make([]Product, 0, len(c.products))
	for _, p := range c.products {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].SKU < out[j].SKU })
	return out, nil
}

func (c *catalog) put(p Product) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.products[p.SKU] = p
}

// users is the demo user store: email -> password and identity.
var users = map[string]struct{ password, userID, role string }{
	"ada@example.com": {"espresso", "u1", "cashier"},
}

type server struct {
	svc     *redisservice.Service
	catalog *catalog
}

// newServer returns the API's handler.
func newServer(svc *redisservice.Service, c *catalog) http.Handler {
	s := &server{svc: svc, catalog: c}
	api := http.NewServeMux()
	api.HandleFunc("GET /products", s.listProducts)
	api.Handle("PUT /products/{sku}", s.requireSession(http.HandlerFunc(s.putProduct)))
	api.Handle("GET /me", s.requireSession(http.HandlerFunc(s.me)))
	api.HandleFunc("POST /logout", s.logout)
	api.Handle("POST /logout-all", s.requireSession(http.HandlerFunc(s.logoutAll)))

	mux := http.NewServeMux()
	mux.Handle("GET /healthz", svc.HealthHandler())
	// Logins get a much smaller budget than the rest of the API.
	mux.Handle("POST /login", svc.RateLimitMiddleware(redisservice.RateLimitConfig{
		Name: "login", Limit: 5, Window: time.Minute,
	})(http.HandlerFunc(s.login)))
	mux.Handle("/", svc.RateLimitMiddleware(redisservice.RateLimitConfig{Limit: 100, Window: time.Minute})(api))
	return mux
}

func (s *server) listProducts(w http.ResponseWriter, r *http.Request) {
	products, err := redisservice.Cache(r.Context(), s.svc, productsKey, productsTTL, s.catalog.list)
	if err != nil && products == nil {
		httpError(w, http.StatusInternalServerError, "catalog unavailable")
		return
	}
	// With Redis down, Cache still returns the loader's products: serve them.
	writeJSON(w, http.StatusOK, products)
}

func (s *server) putProduct(w http.ResponseWriter, r *http.Request) {
	var p Product
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&p); err != nil || p.Name == "" {
		httpError(w, http.StatusBadRequest, "want a JSON product with a name")
		return
	}
	p.SKU = r.PathValue("sku")
	s.catalog.put(p)
	if _, err := s.svc.InvalidatePattern(r.Context(), "products:*"); err != nil {
		slog.Warn("cache invalidation failed; entries expire with their TTL", "error", err)
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *server) login(w http.ResponseWriter, r *http.Request) {
	var in struct{ Email, Password string }
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<12)).Decode(&in); err != nil {
		httpError(w, http.StatusBadRequest, "want JSON email and password")
		return
	}
	u, ok := users[in.Email]
	if !ok || u.password != in.Password {
		httpError(w, http.StatusUnauthorized, "wrong email or password")
		return
	}
	id, err := redisservice.NewSessionID()
	if err != nil {
		httpError(w, http.StatusInternalServerError, "no session")
		return
	}
	now := time.Now()
	data := redisservice.SessionData{
		UserID: u.userID, Email: in.Email, Role: u.role, CreatedAt: now, LastActivity: now,
		IP: remoteIP(r), UserAgent: r.UserAgent(),
	}
	if err := s.svc.CreateSession(r.Context(), id, data, sessionTTL); err != nil {
		// Without Redis there are no sessions: say so rather than pretend.
		httpError(w, http.StatusServiceUnavailable, "sessions unavailable")
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: id, Path: "/", MaxAge: int(sessionTTL / time.Second),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode,
	})
	writeJSON(w, http.StatusOK, map[string]string{"userId": u.userID})
}

type ctxKey struct{}

// requireSession admits requests with a live session cookie and slides
// the session's expiry.
func (s *server) requireSession(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie(sessionCookie)
		if err != nil {
			httpError(w, http.StatusUnauthorized, "log in first")
			return
		}
		data, found, err := s.svc.GetSession(r.Context(), c.Value)
		switch {
		case err != nil && !errors.Is(err, redisservice.ErrInvalidKey):
			httpError(w, http.StatusServiceUnavailable, "sessions unavailable")
			return
		case !found:
			httpError(w, http.StatusUnauthorized, "log in first")
			return
		}
		_, _ = s.svc.UpdateSessionActivity(r.Context(), c.Value)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, data)))
	})
}

func (s *server) me(w http.ResponseWriter, r *http.Request) {
	data := r.Context().Value(ctxKey{}).(redisservice.SessionData)
	writeJSON(w, http.StatusOK, map[string]string{"userId": data.UserID, "email": data.Email, "role": data.Role})
}

func (s *server) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		_, _ = s.svc.DestroySession(r.Context(), c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Path: "/", MaxAge: -1, HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode})
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) logoutAll(w http.ResponseWriter, r *http.Request) {
	data := r.Context().Value(ctxKey{}).(redisservice.SessionData)
	n, err := s.svc.DestroyUserSessions(r.Context(), data.UserID)
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, "sessions unavailable")
		return
	}
	writeJSON(w, http.StatusOK, map[string]int64{"destroyed": n})
}

// remoteIP is the address the request came from, without the port.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func httpError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
