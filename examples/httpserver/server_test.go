package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vevurn/redisservice"
)

func newTestServer(t *testing.T) (*httptest.Server, *catalog, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	svc, err := redisservice.New(redisservice.Options{URL: "redis://" + mr.Addr(), KeyPrefix: "pos:"})
	require.NoError(t, err)
	t.Cleanup(func() { svc.Close() })
	cat := newCatalog()
	api, err := newServer(svc, cat)
	require.NoError(t, err)
	ts := httptest.NewServer(api)
	t.Cleanup(ts.Close)
	return ts, cat, mr
}

func newClient(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	return &http.Client{Jar: jar}
}

func do(t *testing.T, c *http.Client, method, url, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestProductsAreCachedAndInvalidated(t *testing.T) {
	ts, cat, _ := newTestServer(t)
	c := newClient(t)
	for range 3 {
		resp, body := do(t, c, "GET", ts.URL+"/products", "")
		require.Equal(t, 200, resp.StatusCode, "GET /products: %s", body)
		require.Contains(t, body, "Espresso", "GET /products")
		assert.Equal(t, "100", resp.Header.Get("RateLimit-Limit"), "GET /products headers %v", resp.Header)
		assert.NotEmpty(t, resp.Header.Get("RateLimit-Remaining"), "GET /products headers %v", resp.Header)
	}
	assert.Equal(t, 1, cat.loads, "catalog loads for 3 GETs")

	login(t, ts, c)
	resp, body := do(t, c, "PUT", ts.URL+"/products/A-1", `{"name":"Double espresso","priceCents":350}`)
	require.Equal(t, 200, resp.StatusCode, "PUT /products/A-1: %s", body)
	_, body = do(t, c, "GET", ts.URL+"/products", "")
	assert.Contains(t, body, "Double espresso", "after update GET /products")
	assert.Equal(t, 2, cat.loads, "catalog loads after update GET /products")
}

func login(t *testing.T, ts *httptest.Server, c *http.Client) {
	t.Helper()
	resp, body := do(t, c, "POST", ts.URL+"/login", `{"email":"ada@example.com","password":"espresso"}`)
	require.Equal(t, 200, resp.StatusCode, "POST /login: %s", body)
	cookies := resp.Cookies()
	if assert.Len(t, cookies, 1, "login cookies") {
		assert.True(t, cookies[0].HttpOnly, "login cookie %+v: want HttpOnly", cookies[0])
		assert.Equal(t, http.SameSiteLaxMode, cookies[0].SameSite, "login cookie %+v: want SameSite=Lax", cookies[0])
		assert.False(t, cookies[0].Secure, "login cookie %+v: want not Secure over plain HTTP", cookies[0])
	}
}

func TestSessions(t *testing.T) {
	ts, _, _ := newTestServer(t)
	resp, _ := do(t, newClient(t), "GET", ts.URL+"/me", "")
	assert.Equal(t, 401, resp.StatusCode, "GET /me without a session")

	phone, till := newClient(t), newClient(t)
	login(t, ts, phone)
	login(t, ts, till)
	resp, body := do(t, phone, "GET", ts.URL+"/me", "")
	require.Equal(t, 200, resp.StatusCode, "GET /me: %s", body)
	require.Contains(t, body, `"userId":"u1"`, "GET /me")

	resp, body = do(t, phone, "POST", ts.URL+"/logout-all", "")
	require.Equal(t, 200, resp.StatusCode, "POST /logout-all: %s", body)
	var out struct{ Destroyed int }
	require.NoError(t, json.Unmarshal([]byte(body), &out), "POST /logout-all: %s", body)
	require.Equal(t, 2, out.Destroyed, "POST /logout-all: sessions destroyed")
	for name, c := range map[string]*http.Client{"phone": phone, "till": till} {
		resp, _ := do(t, c, "GET", ts.URL+"/me", "")
		assert.Equal(t, 401, resp.StatusCode, "%s: GET /me after logout-all", name)
	}

	login(t, ts, phone)
	resp, _ = do(t, phone, "POST", ts.URL+"/logout", "")
	assert.Equal(t, 204, resp.StatusCode, "POST /logout")
	resp, _ = do(t, phone, "GET", ts.URL+"/me", "")
	assert.Equal(t, 401, resp.StatusCode, "GET /me after logout")
}

func TestCartKeepsConcurrentAdds(t *testing.T) {
	ts, _, _ := newTestServer(t)
	c := newClient(t)
	resp, _ := do(t, c, "POST", ts.URL+"/cart/A-1", "")
	assert.Equal(t, 401, resp.StatusCode, "POST /cart without a session")
	login(t, ts, c)
	do(t, c, "POST", ts.URL+"/cart/A-1", "")
	var wg sync.WaitGroup
	for _, sku := range []string{"B-2", "C-3", "D-4", "E-5"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each request adds a SKU of its own; the saves merge.
			req, _ := http.NewRequest("POST", ts.URL+"/cart/"+sku, nil)
			resp, err := c.Do(req)
			if err == nil {
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	_, body := do(t, c, "POST", ts.URL+"/cart/A-1", "")
	var cart map[string]int
	require.NoError(t, json.Unmarshal([]byte(body), &cart), "cart body: %s", body)
	assert.Equal(t, map[string]int{"A-1": 2, "B-2": 1, "C-3": 1, "D-4": 1, "E-5": 1}, cart, "cart")
}

func TestLoginIsRateLimited(t *testing.T) {
	ts, _, _ := newTestServer(t)
	c := newClient(t)
	for i := range 5 {
		resp, _ := do(t, c, "POST", ts.URL+"/login", `{"email":"ada@example.com","password":"wrong"}`)
		require.Equal(t, 401, resp.StatusCode, "attempt %d: POST /login", i+1)
	}
	resp, body := do(t, c, "POST", ts.URL+"/login", `{"email":"ada@example.com","password":"espresso"}`)
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "6th POST /login: %s %v", body, resp.Header)
	assert.NotEmpty(t, resp.Header.Get("Retry-After"), "6th POST /login: want Retry-After, headers %v", resp.Header)
}

func TestHealthAndRedisDown(t *testing.T) {
	ts, cat, mr := newTestServer(t)
	c := newClient(t)
	resp, body := do(t, c, "GET", ts.URL+"/healthz", "")
	assert.Equal(t, 200, resp.StatusCode, "GET /healthz: %s", body)
	assert.Contains(t, body, `"status":"ok"`, "GET /healthz")
	mr.Close()
	resp, _ = do(t, c, "GET", ts.URL+"/healthz", "")
	assert.Equal(t, 503, resp.StatusCode, "GET /healthz with Redis down")
	// The product list degrades to the database; rate limiting fails open.
	resp, body = do(t, c, "GET", ts.URL+"/products", "")
	assert.Equal(t, 200, resp.StatusCode, "GET /products with Redis down: %s", body)
	assert.Contains(t, body, "Espresso", "GET /products with Redis down: want the loader's products")
	assert.NotZero(t, cat.loads, "GET /products with Redis down: want the loader called")
}
