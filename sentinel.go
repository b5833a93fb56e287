package redisservice

import (
	"fmt"
	"net"

	"github.com/redis/go-redis/v9"
)

// Redis Sentinel: when [Options.SentinelMaster] is set, New dials a go-redis
// failover client instead of the URL's host. The client asks the sentinels
// for the current master's address whenever it opens a connection, and
// follows their +switch-master announcements, so a Service keeps working
// across a failover without a restart. README.md "High availability" gives
// the measured outage window.

// newClient returns the client that New dials: a plain client over ro or,
// when opts names a Sentinel master, a failover client with every setting
// of ro (credentials, database, protocol, TLS, timeouts, pool, retries).
func newClient(ro *redis.Options, opts Options) *redis.Client {
	if opts.SentinelMaster == "" {
		return redis.NewClient(ro)
	}
	return redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:       opts.SentinelMaster,
		SentinelAddrs:    append([]string(nil), opts.SentinelAddrs...),
		SentinelUsername: opts.SentinelUsername,
		SentinelPassword: opts.SentinelPassword,

		ClientName:                 ro.ClientName,
		Dialer:                     ro.Dialer,
		OnConnect:                  ro.OnConnect,
		Protocol:                   ro.Protocol,
		Username:                   ro.Username,
		Password:                   ro.Password,
		CredentialsProvider:        ro.CredentialsProvider,
		CredentialsProviderContext: ro.CredentialsProviderContext,
		DB:                         ro.DB,

		MaxRetries:         ro.MaxRetries,
		MinRetryBackoff:    ro.MinRetryBackoff,
		MaxRetryBackoff:    ro.MaxRetryBackoff,
		DialTimeout:        ro.DialTimeout,
		DialerRetries:      ro.DialerRetries,
		DialerRetryTimeout: ro.DialerRetryTimeout,
		DialerRetryBackoff: ro.DialerRetryBackoff,
		ReadTimeout:        ro.ReadTimeout,
		WriteTimeout:       ro.WriteTimeout,

		ContextTimeoutEnabled: ro.ContextTimeoutEnabled,

		ReadBufferSize:          ro.ReadBufferSize,
		WriteBufferSize:         ro.WriteBufferSize,
		PipelineReadBufferSize:  ro.PipelineReadBufferSize,
		PipelineWriteBufferSize: ro.PipelineWriteBufferSize,
		PipelinePoolSize:        ro.PipelinePoolSize,
		AutoPipelineOptions:     ro.AutoPipelineOptions,

		PoolFIFO:              ro.PoolFIFO,
		PoolSize:              ro.PoolSize,
		MaxConcurrentDials:    ro.MaxConcurrentDials,
		PoolTimeout:           ro.PoolTimeout,
		MinIdleConns:          ro.MinIdleConns,
		MaxIdleConns:          ro.MaxIdleConns,
		MaxActiveConns:        ro.MaxActiveConns,
		ConnMaxIdleTime:       ro.ConnMaxIdleTime,
		ConnMaxLifetime:       ro.ConnMaxLifetime,
		ConnMaxLifetimeJitter: ro.ConnMaxLifetimeJitter,

		TLSConfig: ro.TLSConfig,

		DisableIdentity: ro.DisableIdentity,
		IdentitySuffix:  ro.IdentitySuffix,
	})
}

// validateSentinel reports Sentinel options that cannot work together. Its
// errors name fields, never their values: an address may have been given
// with credentials in it.
func (o Options) validateSentinel() error {
	sentinel := o.SentinelMaster != "" || len(o.SentinelAddrs) > 0 ||
		o.SentinelUsername != "" || o.SentinelPassword != ""
	switch {
	case !sentinel:
		return nil
	case o.SentinelMaster == "":
		return fmt.Errorf("%w: SentinelAddrs, SentinelUsername or SentinelPassword without SentinelMaster", ErrInvalidArgument)
	case len(o.SentinelAddrs) == 0:
		return fmt.Errorf("%w: SentinelMaster without SentinelAddrs", ErrInvalidArgument)
	case o.Client != nil:
		return fmt.Errorf("%w: SentinelMaster with Client: set the sentinels on the client", ErrInvalidArgument)
	case o.ClientSideCache:
		return fmt.Errorf("%w: ClientSideCache is not available with SentinelMaster", ErrInvalidArgument)
	}
	for i, addr := range o.SentinelAddrs {
		if host, port, err := net.SplitHostPort(addr); err != nil || host == "" || port == "" {
			return fmt.Errorf("%w: SentinelAddrs[%d] is not host:port", ErrInvalidArgument, i)
		}
	}
	return nil
}
