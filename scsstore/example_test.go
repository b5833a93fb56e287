package scsstore_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"

	"github.com/alexedwards/scs/v2"
	"github.com/alicebob/miniredis/v2"
	"github.com/vevurn/redisservice"
	"github.com/vevurn/redisservice/scsstore"
)

func Example() {
	mr, _ := miniredis.Run() // stands in for a real Redis
	defer mr.Close()
	svc, _ := redisservice.New(redisservice.Options{URL: "redis://" + mr.Addr(), KeyPrefix: "pos:"})
	defer svc.Close()

	sessions := scs.New()
	sessions.Store = scsstore.New(svc)
	mux := http.NewServeMux()
	mux.HandleFunc("/visit", func(w http.ResponseWriter, r *http.Request) {
		n := sessions.GetInt(r.Context(), "visits") + 1
		sessions.Put(r.Context(), "visits", n)
		fmt.Fprintf(w, "visit %d", n)
	})
	srv := httptest.NewServer(sessions.LoadAndSave(mux))
	defer srv.Close()

	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar}
	for range 2 {
		resp, _ := client.Get(srv.URL + "/visit")
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(string(body))
	}
	fmt.Println(len(mr.Keys()), "key under", mr.Keys()[0][:len("pos:scs:session:")])
	// Output:
	// visit 1
	// visit 2
	// 1 key under pos:scs:session:
}
