package redisservice

import (
	"fmt"
	"time"
)

// CacheOption is a per-call option of [Cache].
type CacheOption func(*cacheOptions)

type cacheOptions struct {
	swr time.Duration // StaleWhileRevalidate
}

// buildCacheOptions applies opts and validates the result.
func buildCacheOptions(opts []CacheOption) (cacheOptions, error) {
	var o cacheOptions
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.swr < 0 {
		return o, fmt.Errorf("%w: StaleWhileRevalidate %v < 0", ErrInvalidArgument, o.swr)
	}
	return o, nil
}
