package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/alicebob/miniredis/v2"

	"github.com/vevurn/redisservice"
)

func newTestServer(t *testing.T) (*httptest.Server, *catalog, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	svc, err := redisservice.New(redisservice.Options{URL: "redis://" + mr.Addr(), KeyPrefix: "pos:"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	cat := newCatalog()
	api, err := newServer(svc, cat)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(api)
	t.Cleanup(ts.Close)
	return ts, cat, mr
}

func newClient(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar}
}

func do(t *testing.T, c *http.Client, method, url, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestProductsAreCachedAndInvalidated(t *testing.T) {
	ts, cat, _ := newTestServer(t)
	c := newClient(t)
	for range 3 {
		resp, body := do(t, c, "GET", ts.URL+"/products", "")
		if resp.StatusCode != 200 || !strings.Contains(body, "Espresso") {
			t.Fatalf("GET /products = %d %s", resp.StatusCode, body)
		}
		if resp.Header.Get("RateLimit-Limit") != "100" || resp.Header.Get("RateLimit-Remaining") == "" {
			t.Errorf("GET /products headers %v; want RateLimit-Limit 100 and RateLimit-Remaining", resp.Header)
		}
	}
	if cat.loads != 1 {
		t.Errorf("catalog loaded %d times for 3 GETs; want 1", cat.loads)
	}

	login(t, ts, c)
	resp, body := do(t, c, "PUT", ts.URL+"/products/A-1", `{"name":"Double espresso","priceCents":350}`)
	if resp.StatusCode != 200 {
		t.Fatalf("PUT /products/A-1 = %d %s", resp.StatusCode, body)
	}
	_, body = do(t, c, "GET", ts.URL+"/products", "")
	if !strings.Contains(body, "Double espresso") || cat.loads != 2 {
		t.Errorf("after update GET /products = %s with %d loads; want the new name, 2 loads", body, cat.loads)
	}
}

func login(t *testing.T, ts *httptest.Server, c *http.Client) {
	t.Helper()
	resp, body := do(t, c, "POST", ts.URL+"/login", `{"email":"ada@example.com","password":"espresso"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("POST /login = %d %s", resp.StatusCode, body)
	}
	cookies := resp.Cookies()
	if len(cookies) != 1 || !cookies[0].HttpOnly || cookies[0].SameSite != http.SameSiteLaxMode || cookies[0].Secure {
		t.Errorf("login cookie = %+v; want one HttpOnly, SameSite=Lax cookie, not Secure over plain HTTP", cookies)
	}
}

func TestSessions(t *testing.T) {
	ts, _, _ := newTestServer(t)
	if resp, _ := do(t, newClient(t), "GET", ts.URL+"/me", ""); resp.StatusCode != 401 {
		t.Errorf("GET /me without a session = %d; want 401", resp.StatusCode)
	}

	phone, till := newClient(t), newClient(t)
	login(t, ts, phone)
	login(t, ts, till)
	resp, body := do(t, phone, "GET", ts.URL+"/me", "")
	if resp.StatusCode != 200 || !strings.Contains(body, `"userId":"u1"`) {
		t.Fatalf("GET /me = %d %s", resp.StatusCode, body)
	}

	resp, body = do(t, phone, "POST", ts.URL+"/logout-all", "")
	var out struct{ Destroyed int }
	if err := json.Unmarshal([]byte(body), &out); err != nil || resp.StatusCode != 200 || out.Destroyed != 2 {
		t.Fatalf("POST /logout-all = %d %s; want 2 sessions destroyed", resp.StatusCode, body)
	}
	for name, c := range map[string]*http.Client{"phone": phone, "till": till} {
		if resp, _ := do(t, c, "GET", ts.URL+"/me", ""); resp.StatusCode != 401 {
			t.Errorf("%s: GET /me after logout-all = %d; want 401", name, resp.StatusCode)
		}
	}

	login(t, ts, phone)
	if resp, _ := do(t, phone, "POST", ts.URL+"/logout", ""); resp.StatusCode != 204 {
		t.Errorf("POST /logout = %d; want 204", resp.StatusCode)
	}
	if resp, _ := do(t, phone, "GET", ts.URL+"/me", ""); resp.StatusCode != 401 {
		t.Errorf("GET /me after logout = %d; want 401", resp.StatusCode)
	}
}

func TestCartKeepsConcurrentAdds(t *testing.T) {
	ts, _, _ := newTestServer(t)
	c := newClient(t)
	if resp, _ := do(t, c, "POST", ts.URL+"/cart/A-1", ""); resp.StatusCode != 401 {
		t.Errorf("POST /cart without a session = %d; want 401", resp.StatusCode)
	}
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
	if err := json.Unmarshal([]byte(body), &cart); err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"A-1": 2, "B-2": 1, "C-3": 1, "D-4": 1, "E-5": 1}; !reflect.DeepEqual(cart, want) {
		t.Errorf("cart = %v; want %v", cart, want)
	}
}

func TestLoginIsRateLimited(t *testing.T) {
	ts, _, _ := newTestServer(t)
	c := newClient(t)
	for i := range 5 {
		if resp, _ := do(t, c, "POST", ts.URL+"/login", `{"email":"ada@example.com","password":"wrong"}`); resp.StatusCode != 401 {
			t.Fatalf("attempt %d: POST /login = %d; want 401", i+1, resp.StatusCode)
		}
	}
	resp, body := do(t, c, "POST", ts.URL+"/login", `{"email":"ada@example.com","password":"espresso"}`)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("6th POST /login = %d %s %v; want 429 with Retry-After", resp.StatusCode, body, resp.Header)
	}
}

func TestHealthAndRedisDown(t *testing.T) {
	ts, cat, mr := newTestServer(t)
	c := newClient(t)
	if resp, body := do(t, c, "GET", ts.URL+"/healthz", ""); resp.StatusCode != 200 || !strings.Contains(body, `"status":"ok"`) {
		t.Errorf("GET /healthz = %d %s", resp.StatusCode, body)
	}
	mr.Close()
	if resp, _ := do(t, c, "GET", ts.URL+"/healthz", ""); resp.StatusCode != 503 {
		t.Errorf("GET /healthz with Redis down = %d; want 503", resp.StatusCode)
	}
	// The product list degrades to the database; rate limiting fails open.
	resp, body := do(t, c, "GET", ts.URL+"/products", "")
	if resp.StatusCode != 200 || !strings.Contains(body, "Espresso") || cat.loads == 0 {
		t.Errorf("GET /products with Redis down = %d %s; want the loader's products", resp.StatusCode, body)
	}
}
