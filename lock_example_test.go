package redisservice_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vevurn/redisservice"
)

// A lock on a stock item: the second TryLock finds it held; after Unlock
// the next holder gets a greater fencing token, which the stock store can
// use to refuse the writes of a holder whose lock expired.
func ExampleService_TryLock() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	l, err := svc.TryLock(ctx, "sku:1234", 10*time.Second)
	if err != nil {
		panic(err)
	}
	fmt.Println("token:", l.Token())

	_, err = svc.TryLock(ctx, "sku:1234", 10*time.Second)
	fmt.Println("held:", errors.Is(err, redisservice.ErrLockHeld))

	if err := l.Unlock(ctx); err != nil {
		panic(err)
	}
	next, err := svc.Lock(ctx, "sku:1234", 10*time.Second)
	if err != nil {
		panic(err)
	}
	defer next.Unlock(ctx)
	fmt.Println("next token:", next.Token())
	// Output:
	// token: 1
	// held: true
	// next token: 2
}
