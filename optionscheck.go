package redisservice

import (
	"fmt"
	"strings"
)

// ignoredWithClient reports the options, set by the caller, that New would
// ignore because o.Client is set. It runs before withDefaults, so that a
// URL taken from $REDIS_URL does not count.
func (o Options) ignoredWithClient() error {
	if o.Client == nil {
		return nil
	}
	var set []string
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"URL", o.URL != ""},
		{"TLSConfig", o.TLSConfig != nil},
		{"DialTimeout", o.DialTimeout != 0},
		{"PoolSize", o.PoolSize != 0},
		{"PoolTimeout", o.PoolTimeout != 0},
		{"MaxRetries", o.MaxRetries != 0},
		{"ClientSideCache", o.ClientSideCache},
		{"ClientSideCacheEntries", o.ClientSideCacheEntries != 0},
		{"ClientSideCacheMaxStaleness", o.ClientSideCacheMaxStaleness != 0},
	} {
		if f.set {
			set = append(set, f.name)
		}
	}
	if len(set) > 0 {
		return fmt.Errorf("%w: %s only apply to a client that New dials, not to Options.Client: set them on that client", ErrInvalidArgument, strings.Join(set, ", "))
	}
	return nil
}

// validate reports the first option that cannot work, in the order of
// the checks below.
func (o Options) validate() error {
	if err := o.validateSentinel(); err != nil {
		return err
	}
	for _, c := range []struct {
		bad    bool
		format string // after "ErrInvalidArgument: "
		args   []any
	}{
		{o.Timeout < 0, "Timeout %v < 0", []any{o.Timeout}},
		{o.DialTimeout < 0, "DialTimeout %v < 0", []any{o.DialTimeout}},
		{o.PoolTimeout < 0, "PoolTimeout %v < 0", []any{o.PoolTimeout}},
		{o.PoolSize < 0, "PoolSize %d < 0", []any{o.PoolSize}},
		{o.MaxRetries < -1, "MaxRetries %d < -1", []any{o.MaxRetries}},
		{o.ClientSideCacheEntries < 0, "ClientSideCacheEntries %d < 0", []any{o.ClientSideCacheEntries}},
		{o.AutoPipeline && o.NoAutoPipeline, "AutoPipeline with NoAutoPipeline", nil},
		{o.ClientSideCacheMaxStaleness < 0, "ClientSideCacheMaxStaleness %v < 0", []any{o.ClientSideCacheMaxStaleness}},
		{o.LocalCacheEntries < 0, "LocalCacheEntries %d < 0", []any{o.LocalCacheEntries}},
		{o.LocalCacheBytes < 0, "LocalCacheBytes %d < 0", []any{o.LocalCacheBytes}},
		{o.LocalCacheBytes > 0 && o.LocalCacheEntries == 0, "LocalCacheBytes without LocalCacheEntries", nil},
		{o.LocalCacheEntries > 0 && o.ClientSideCache, "LocalCacheEntries with ClientSideCache: use one", nil},
		{o.SessionMaxLifetime < 0, "SessionMaxLifetime %v < 0", []any{o.SessionMaxLifetime}},
		{o.MaxSessionsPerUser < 0, "MaxSessionsPerUser %d < 0", []any{o.MaxSessionsPerUser}},
	} {
		if c.bad {
			return fmt.Errorf("%w: "+c.format, append([]any{ErrInvalidArgument}, c.args...)...)
		}
	}
	return nil
}
