package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vevurn/redisservice"
)

const (
	productsKey = "products:all"
	productsTTL = 5 * time.Minute
)

// Product is an item on sale.
type Product struct {
	SKU        string `json:"sku"`
	Name       string `json:"name"`
	PriceCents int    `json:"priceCents"`
}

// catalog stands in for the database behind the cache.
type catalog struct {
	mu       sync.Mutex // guards every field below
	products map[string]Product
	loads    int              // how often the list was read from the "database"
	stock    map[string]int   // units left, by SKU
	fences   map[string]int64 // the greatest fencing token that wrote a SKU's stock
	charges  int              // payments taken
}

func newCatalog() *catalog {
	return &catalog{
		products: map[string]Product{
			"A-1": {"A-1", "Espresso", 250},
			"B-2": {"B-2", "Croissant", 300},
		},
		stock:  map[string]int{"A-1": 100, "B-2": 20},
		fences: map[string]int64{},
	}
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
	svc      *redisservice.Service
	sessions *redisservice.SessionManager
	catalog  *catalog
}

// newServer returns the API's handler.
func newServer(svc *redisservice.Service, c *catalog) (http.Handler, error) {
	sessions, err := svc.SessionManager(redisservice.SessionConfig{
		CookieName:  "pos_session",
		IdleTimeout: 30 * time.Minute,
		// This example serves plain HTTP. Behind TLS, leave Secure on.
		InsecureCookie: true,
	})
	if err != nil {
		return nil, err
	}
	s := &server{svc: svc, sessions: sessions, catalog: c}
	api := http.NewServeMux()
	api.HandleFunc("GET /products", s.listProducts)
	api.Handle("PUT /products/{sku}", s.requireSession(http.HandlerFunc(s.putProduct)))
	api.Handle("GET /me", s.requireSession(http.HandlerFunc(s.me)))
	api.Handle("POST /cart/{sku}", s.requireSession(http.HandlerFunc(s.addToCart)))
	api.Handle("POST /checkout", s.requireSession(s.checkoutHandler()))
	api.HandleFunc("POST /logout", s.logout)
	api.Handle("POST /logout-all", s.requireSession(http.HandlerFunc(s.logoutAll)))

	mux := http.NewServeMux()
	mux.Handle("GET /healthz", svc.HealthHandler())
	// Logins get a much smaller budget than the rest of the API. The rate
	// limit comes first, so that a refused request costs no session read.
	mux.Handle("POST /login", svc.RateLimitMiddleware(redisservice.RateLimitConfig{
		Name: "login", Limit: 5, Window: time.Minute,
	})(sessions.LoadAndSave(http.HandlerFunc(s.login))))
	mux.Handle("/", svc.RateLimitMiddleware(redisservice.RateLimitConfig{Limit: 100, Window: time.Minute})(sessions.LoadAndSave(api)))
	return mux, nil
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
	// A new session under a new id, with the client's IP and User-Agent;
	// any session the request carried is destroyed.
	err := s.sessions.Login(r.Context(), redisservice.SessionData{UserID: u.userID, Email: in.Email, Role: u.role})
	if err != nil {
		// Without Redis there are no sessions: say so rather than pretend.
		httpError(w, http.StatusServiceUnavailable, "sessions unavailable")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"userId": u.userID})
}

// requireSession admits requests with a live session.
func (s *server) requireSession(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := s.sessions.Session(r.Context()); !ok {
			if s.sessions.LoadErr(r.Context()) != nil {
				httpError(w, http.StatusServiceUnavailable, "sessions unavailable")
				return
			}
			httpError(w, http.StatusUnauthorized, "log in first")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *server) me(w http.ResponseWriter, r *http.Request) {
	data, _ := s.sessions.Session(r.Context())
	writeJSON(w, http.StatusOK, map[string]string{"userId": data.UserID, "email": data.Email, "role": data.Role})
}

// addToCart adds one of a SKU to the session's cart. Each SKU is a value
// of its own ("cart:<sku>"): the session manager saves a request's
// changes name by name, merged with what concurrent requests saved, so
// requests adding different SKUs at once keep every one of them.
func (s *server) addToCart(w http.ResponseWriter, r *http.Request) {
	name := "cart:" + r.PathValue("sku")
	n, _, err := redisservice.SessionValue[int](r.Context(), s.sessions, name)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "unreadable cart")
		return
	}
	if err := s.sessions.Put(r.Context(), name, n+1); err != nil {
		httpError(w, http.StatusBadRequest, "not a SKU")
		return
	}
	writeJSON(w, http.StatusOK, s.cart(r.Context()))
}

// cart returns the session's cart: quantities by SKU.
func (s *server) cart(ctx context.Context) map[string]int {
	data, _ := s.sessions.Session(ctx)
	cart := map[string]int{}
	for name, v := range data.Values {
		if sku, ok := strings.CutPrefix(name, "cart:"); ok {
			var n int
			if json.Unmarshal(v, &n) == nil {
				cart[sku] = n
			}
		}
	}
	return cart
}

func (s *server) logout(w http.ResponseWriter, r *http.Request) {
	if err := s.sessions.Logout(r.Context()); err != nil {
		httpError(w, http.StatusServiceUnavailable, "sessions unavailable")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) logoutAll(w http.ResponseWriter, r *http.Request) {
	data, _ := s.sessions.Session(r.Context())
	n, err := s.svc.DestroyUserSessions(r.Context(), data.UserID)
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, "sessions unavailable")
		return
	}
	writeJSON(w, http.StatusOK, map[string]int64{"destroyed": n})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func httpError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
