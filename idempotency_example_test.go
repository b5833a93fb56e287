package redisservice_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/vevurn/redisservice"
)

// A payment endpoint: the retry of a charge gets the first response back
// and does not charge again; the same key with another amount is refused.
func ExampleService_IdempotencyMiddleware() {
	svc, cleanup := newExampleService()
	defer cleanup()

	charges := 0
	pay := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		charges++
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "charge ch_%d", charges)
	})
	h := svc.IdempotencyMiddleware(redisservice.IdempotencyConfig{Required: true})(pay)

	post := func(key, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/pay", strings.NewReader(body))
		r.Header.Set("Idempotency-Key", key)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	first := post(`"8e03978e-40d5"`, `{"amount":500}`)
	retry := post(`"8e03978e-40d5"`, `{"amount":500}`)
	other := post(`"8e03978e-40d5"`, `{"amount":900}`)
	fmt.Println(first.Code, first.Body)
	fmt.Println(retry.Code, retry.Body, retry.Header().Get("Idempotent-Replayed"))
	fmt.Println(other.Code, other.Header().Get("Content-Type"))
	fmt.Println("charges:", charges)
	// Output:
	// 201 charge ch_1
	// 201 charge ch_1 true
	// 422 application/problem+json
	// charges: 1
}
