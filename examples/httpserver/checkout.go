package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/vevurn/redisservice"
)

const (
	// stockLockTTL bounds how long a crashed instance keeps a SKU locked;
	// a checkout takes far less.
	stockLockTTL = 10 * time.Second
	// stockLockWait is how long a checkout waits for a SKU that another
	// checkout, on any instance, holds.
	stockLockWait = 5 * time.Second
)

var (
	errUnknownSKU = errors.New("unknown SKU")
	errOutOfStock = errors.New("out of stock")
	errStaleToken = errors.New("stale fencing token")
)

// Order is a placed order.
type Order struct {
	ID         string `json:"id"`
	SKU        string `json:"sku"`
	Qty        int    `json:"qty"`
	TotalCents int    `json:"totalCents"`
}

// checkout places an order for qty of a SKU: it takes the SKU's stock
// from the database and charges for it. It runs behind the
// Idempotency-Key middleware, so a client's retry gets the first
// response back instead of a second charge. Checkouts of one SKU, on
// every instance, queue on a fenced lock: one that cannot get it within
// stockLockWait answers 503, which the middleware does not keep, so the
// retry runs again.
func (s *server) checkout(w http.ResponseWriter, r *http.Request) {
	var in struct {
		SKU string `json:"sku"`
		Qty int    `json:"qty"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.SKU == "" || in.Qty <= 0 {
		httpError(w, http.StatusBadRequest, "want JSON sku and a positive qty")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), stockLockWait)
	defer cancel()
	lock, err := s.svc.Lock(ctx, "stock:"+in.SKU, stockLockTTL)
	if err != nil {
		w.Header().Set("Retry-After", "1")
		httpError(w, http.StatusServiceUnavailable, "stock busy; retry with the same Idempotency-Key")
		return
	}
	defer func() {
		if err := lock.Unlock(context.WithoutCancel(r.Context())); err != nil {
			slog.Warn("stock lock not released; it expires with its TTL", "error", err)
		}
	}()
	// The token goes with the write: should this lock have expired while
	// we were paused and another checkout taken it, the database refuses.
	order, err := s.catalog.sell(in.SKU, in.Qty, lock.Token())
	switch {
	case errors.Is(err, errUnknownSKU):
		httpError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, errOutOfStock):
		httpError(w, http.StatusConflict, err.Error())
	case err != nil:
		httpError(w, http.StatusServiceUnavailable, "stock busy; retry with the same Idempotency-Key")
	default:
		writeJSON(w, http.StatusCreated, order)
	}
}

// sell takes qty of sku from the stock and charges for it, in one
// transaction of the database, unless a write with a greater fencing
// token for sku came first.
func (c *catalog) sell(sku string, qty int, token int64) (Order, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.products[sku]
	switch {
	case !ok:
		return Order{}, errUnknownSKU
	case token < c.fences[sku]:
		return Order{}, fmt.Errorf("%w: %d after %d", errStaleToken, token, c.fences[sku])
	case c.stock[sku] < qty:
		return Order{}, errOutOfStock
	}
	c.fences[sku] = token
	c.stock[sku] -= qty
	c.charges++
	return Order{ID: fmt.Sprintf("ord-%d", c.charges), SKU: sku, Qty: qty, TotalCents: qty * p.PriceCents}, nil
}

// checkoutHandler is checkout behind the Idempotency-Key middleware: the
// header is required, and keys are per user.
func (s *server) checkoutHandler() http.Handler {
	return s.svc.IdempotencyMiddleware(redisservice.IdempotencyConfig{
		Required: true,
		Scope: func(r *http.Request) string {
			data, _ := s.sessions.Session(r.Context())
			return data.UserID
		},
	})(http.HandlerFunc(s.checkout))
}
