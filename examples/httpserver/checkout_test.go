package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vevurn/redisservice"
)

// postCheckout sends a checkout with Idempotency-Key key ("" for none).
func postCheckout(t *testing.T, ts *httptest.Server, c *http.Client, key, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.URL+"/checkout", strings.NewReader(body))
	require.NoError(t, err)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// sold returns the charges taken and the units of sku left.
func (c *catalog) sold(sku string) (charges, left int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.charges, c.stock[sku]
}

func TestCheckoutChargesOnce(t *testing.T) {
	ts, cat, _ := newTestServer(t)
	c := newClient(t)
	login(t, ts, c)
	const order = `{"sku":"A-1","qty":2}`

	resp, body := postCheckout(t, ts, c, "", order)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "checkout without a key: %s", body)
	assert.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))

	resp, first := postCheckout(t, ts, c, "ord-1", order)
	require.Equal(t, http.StatusCreated, resp.StatusCode, "checkout: %s", first)
	assert.JSONEq(t, `{"id":"ord-1","sku":"A-1","qty":2,"totalCents":500}`, first)
	resp, again := postCheckout(t, ts, c, "ord-1", order)
	require.Equal(t, http.StatusCreated, resp.StatusCode, "retry: %s", again)
	assert.Equal(t, first, again, "the retry's body")
	assert.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))

	resp, body = postCheckout(t, ts, c, "ord-1", `{"sku":"A-1","qty":3}`)
	assert.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode, "the key with another order: %s", body)
	charges, left := cat.sold("A-1")
	assert.Equal(t, 1, charges, "charges")
	assert.Equal(t, 98, left, "A-1 left")
}

// TestCheckoutWhileTheStockIsLocked: while another instance holds A-1's
// lock, a checkout waits for it, the same checkout sent again meanwhile
// is answered 409, and another checkout of A-1 waits too; once the lock
// is released both run, with greater fencing tokens.
func TestCheckoutWhileTheStockIsLocked(t *testing.T) {
	ts, cat, mr := newTestServer(t)
	c := newClient(t)
	login(t, ts, c)
	other, err := redisservice.New(redisservice.Options{URL: "redis://" + mr.Addr(), KeyPrefix: "pos:"})
	require.NoError(t, err)
	t.Cleanup(func() { other.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	held, err := other.TryLock(ctx, "stock:A-1", time.Minute)
	require.NoError(t, err)

	type result struct {
		code int
		body string
	}
	send := func(key string) <-chan result {
		out := make(chan result, 1)
		go func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/checkout", strings.NewReader(`{"sku":"A-1","qty":1}`))
			req.Header.Set("Idempotency-Key", key)
			resp, err := c.Do(req)
			if err != nil {
				out <- result{0, err.Error()}
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			out <- result{resp.StatusCode, string(b)}
		}()
		return out
	}
	// Whichever of the two claims the key first waits for the lock; the
	// other finds it in flight.
	a, b := send("ord-1"), send("ord-1")
	var waiting <-chan result
	select {
	case r := <-a:
		assert.Equal(t, http.StatusConflict, r.code, "the same checkout meanwhile: %s", r.body)
		waiting = b
	case r := <-b:
		assert.Equal(t, http.StatusConflict, r.code, "the same checkout meanwhile: %s", r.body)
		waiting = a
	case <-ctx.Done():
		require.FailNow(t, "neither checkout answered while the lock was held")
	}
	second := send("ord-2")
	charges, _ := cat.sold("A-1")
	require.Zero(t, charges, "charges while the lock is held")
	select {
	case r := <-waiting:
		require.FailNow(t, "a checkout ended while the lock was held", "%d %s", r.code, r.body)
	default:
	}

	require.NoError(t, held.Unlock(ctx))
	for _, ch := range []<-chan result{waiting, second} {
		r := <-ch
		assert.Equal(t, http.StatusCreated, r.code, "checkout after the release: %s", r.body)
	}
	charges, left := cat.sold("A-1")
	assert.Equal(t, 2, charges, "charges")
	assert.Equal(t, 98, left, "A-1 left")
	cat.mu.Lock()
	defer cat.mu.Unlock()
	assert.Greater(t, cat.fences["A-1"], held.Token(), "the last write's token, beside the earlier holder's")
}

// TestSellRefusesAStaleToken: once a write with token 5 is in, the
// database refuses one with token 4 (a holder whose lock expired).
func TestSellRefusesAStaleToken(t *testing.T) {
	cat := newCatalog()
	_, err := cat.sell("B-2", 1, 5)
	require.NoError(t, err)
	_, err = cat.sell("B-2", 1, 4)
	require.ErrorIs(t, err, errStaleToken)
	_, err = cat.sell("B-2", 1, 5)
	require.NoError(t, err, "the same holder writes again")
	charges, left := cat.sold("B-2")
	assert.Equal(t, 2, charges, "charges")
	assert.Equal(t, 18, left, "B-2 left")
}
