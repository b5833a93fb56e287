// Package devredis gives the examples a Redis to talk to: the one in
// $REDIS_URL, or an embedded miniredis when that is unset.
package devredis

import (
	"os"

	"github.com/alicebob/miniredis/v2"
)

// URL returns $REDIS_URL, or the URL of a new embedded miniredis, which
// stop closes. embedded reports which.
func URL() (url string, embedded bool, stop func(), err error) {
	if url := os.Getenv("REDIS_URL"); url != "" {
		return url, false, func() {}, nil
	}
	mr, err := miniredis.Run()
	if err != nil {
		return "", false, nil, err
	}
	return "redis://" + mr.Addr(), true, mr.Close, nil
}
