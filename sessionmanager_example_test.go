package redisservice_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"

	"github.com/vevurn/redisservice"
)

func ExampleSessionManager() {
	svc, cleanup := newExampleService()
	defer cleanup()
	sessions, err := svc.SessionManager(redisservice.SessionConfig{InsecureCookie: true}) // plain HTTP here only
	if err != nil {
		panic(err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		// ... check the password, then:
		if err := sessions.Login(r.Context(), redisservice.SessionData{UserID: "u42", Role: "cashier"}); err != nil {
			http.Error(w, "sessions unavailable", http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("POST /cart", func(w http.ResponseWriter, r *http.Request) {
		cart, _, _ := redisservice.SessionValue[[]string](r.Context(), sessions, "cart")
		cart = append(cart, r.FormValue("sku"))
		if err := sessions.Put(r.Context(), "cart", cart); err != nil {
			http.Error(w, "log in first", http.StatusUnauthorized)
			return
		}
		fmt.Fprintln(w, cart)
	})
	srv := httptest.NewServer(sessions.LoadAndSave(mux))
	defer srv.Close()

	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar}
	postAndPrint(browser, srv.URL+"/cart", url.Values{"sku": {"A-1"}})
	postAndPrint(browser, srv.URL+"/login", nil)
	postAndPrint(browser, srv.URL+"/cart", url.Values{"sku": {"A-1"}})
	postAndPrint(browser, srv.URL+"/cart", url.Values{"sku": {"B-2"}})
	// Output:
	// log in first
	// [A-1]
	// [A-1 B-2]
}

func ExamplePopSessionValue() {
	svc, cleanup := newExampleService()
	defer cleanup()
	sessions, err := svc.SessionManager(redisservice.SessionConfig{InsecureCookie: true})
	if err != nil {
		panic(err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		_ = sessions.Login(r.Context(), redisservice.SessionData{UserID: "u42"})
		_ = sessions.Put(r.Context(), "flash", "Welcome back!")
	})
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		// A flash message: shown once.
		if msg, ok, _ := redisservice.PopSessionValue[string](r.Context(), sessions, "flash"); ok {
			fmt.Fprintln(w, msg)
			return
		}
		fmt.Fprintln(w, "no news")
	})
	srv := httptest.NewServer(sessions.LoadAndSave(mux))
	defer srv.Close()

	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar}
	postAndPrint(browser, srv.URL+"/login", nil)
	for range 2 {
		resp, err := browser.Get(srv.URL + "/")
		if err != nil {
			panic(err)
		}
		_, _ = io.Copy(os.Stdout, resp.Body)
		resp.Body.Close()
	}
	// Output:
	// Welcome back!
	// no news
}

// postAndPrint posts form to u and prints the response's body.
func postAndPrint(c *http.Client, u string, form url.Values) {
	resp, err := c.PostForm(u, form)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(os.Stdout, resp.Body)
}
