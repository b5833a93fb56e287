package redisservice

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/vevurn/redisservice/internal/breaker"
	"github.com/vevurn/redisservice/internal/deadline"
	"github.com/vevurn/redisservice/internal/flight"
	"github.com/vevurn/redisservice/internal/localtier"
	"github.com/vevurn/redisservice/internal/telemetry"
)

// Service is the Redis layer of an application: strings, JSON, hashes,
// sessions, rate limits and a cache-aside helper over one go-redis client.
// It is safe for concurrent use. Use [New] to make one; the zero value is
// not usable.
type Service struct {
	rdb       redis.UniversalClient
	ap        *redis.AutoPipeliner // rdb's deferred autopipeliner; nil without one (fastpath.go)
	inFlight  atomic.Int64         // calls in process now
	ownClient bool                 // Close closes rdb: New dialled it
	// clientClosed is closed when Close's close of rdb, which New dialled,
	// has returned (fastpath.go closeClient).
	clientClosed chan struct{}
	cluster      bool // rdb is a *redis.ClusterClient
	prefix       string
	opts         Options
	log          *slog.Logger

	breaker *breaker.Breaker // whether Redis answers; fails calls fast while it does not

	closed atomic.Bool

	bgMu     sync.Mutex // orders bg.Add after a Close check with Close's bg.Wait
	bg       sync.WaitGroup
	bgCtx    context.Context // cancelled by Close
	bgCancel context.CancelFunc

	stats     counters
	logGate   logGate
	flights   flight.Group[flightKey]              // Cache's loads in progress
	reads     flight.ReadGroup[readKey, readReply] // Cache's reads in progress
	local     *localtier.Tier                      // Cache's in-process tier; nil unless Options.LocalCacheEntries > 0
	nodeOpts  *redis.Options                       // the Service's own copy of a single node's options, for the tier's trackers; nil for a cluster or failover client passed in
	deadlines *deadline.Bounder                    // bounds calls without a deadline of their own
	tel       *telemetry.Telemetry                 // nil unless Options.MeterProvider or TracerProvider is set
}

// New validates opts and returns a Service. It does not touch the
// network: call [Service.Connect] to fail fast at start-up, or let the
// first call connect.
//
// When opts.Client is nil, New dials opts.URL (see [Options.URL]), or the
// master that the sentinels of [Options.SentinelMaster] name, and the
// Service owns that client: [Service.Close] closes it. A client passed in
// opts.Client stays the caller's to close; the options that only shape a
// dialled client (URL, TLSConfig, DialTimeout, PoolSize, PoolTimeout,
// MaxRetries, ClientSideCache*) must then be left unset, or
// New fails with [ErrInvalidArgument] rather than ignore them.
func New(opts Options) (*Service, error) {
	if err := opts.ignoredWithClient(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	s := &Service{
		prefix:    opts.KeyPrefix,
		opts:      opts,
		log:       opts.Logger,
		deadlines: deadline.New(opts.Timeout),
	}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	if opts.Client != nil {
		s.rdb = opts.Client
	} else if err := s.dial(opts); err != nil {
		return nil, err
	}
	if err := s.startFastPath(); err != nil {
		_ = s.rdb.Close() // only a client New dialled fails here
		return nil, err
	}
	_, s.cluster = s.rdb.(*redis.ClusterClient)
	// Only a single-node client (a dialled URL, or a Sentinel failover
	// client) fails fast while Redis is down: on Redis Cluster one master
	// down says nothing about the keys of the others. The breaker takes
	// Redis as up until a call says otherwise, so that a Service used
	// without Connect does not start out reporting an outage.
	_, failFast := s.rdb.(*redis.Client)
	s.breaker = breaker.New(failFast, opts.Timeout, s.pingAll, s.goBackground)
	var err error
	if s.tel, err = newTelemetry(opts, s.rdb); err != nil {
		s.bgCancel()
		if s.ownClient {
			_ = s.rdb.Close()
		}
		return nil, fmt.Errorf("%w: telemetry: %w", ErrInvalidArgument, err)
	}
	if c, ok := opts.Client.(*redis.Client); ok && c.Options().Addr != "FailoverClient" {
		// A shallow copy now, before any tracker: go-redis writes only
		// behind the pointers that the tier's trackers replace.
		own := *c.Options()
		s.nodeOpts = &own
	}
	if opts.LocalCacheEntries > 0 {
		s.local = localtier.New(localtier.Config{Entries: opts.LocalCacheEntries, Bytes: opts.LocalCacheBytes, Prefix: s.prefix, Log: s.log})
		s.goBackground(s.track)
	}
	return s, nil
}

// dial makes the Service's own client from opts.URL and the options that
// shape it.
func (s *Service) dial(opts Options) error {
	ro, err := parseURL(opts.URL)
	if err != nil {
		return err
	}
	if ro.TLSConfig != nil && opts.TLSConfig != nil {
		tc := opts.TLSConfig.Clone()
		if tc.ServerName == "" {
			tc.ServerName = ro.TLSConfig.ServerName
		}
		ro.TLSConfig = tc
	}
	ro.DialTimeout = opts.DialTimeout
	ro.ReadTimeout = opts.Timeout
	ro.WriteTimeout = opts.Timeout
	ro.PoolTimeout = opts.PoolTimeout
	ro.MaxRetries = opts.MaxRetries
	// One dial attempt per try: against a refused port, go-redis's
	// default of five attempts 100ms apart would hold every call.
	ro.DialerRetries = 1
	// Nor retry a refused dial after a backoff.
	ro.Dialer = breaker.NoRetryOnRefused(redis.NewDialer(ro))
	ro.ContextTimeoutEnabled = true
	if opts.PoolSize > 0 {
		ro.PoolSize = opts.PoolSize
	}
	if opts.ClientSideCache {
		if err := clientSideCache(ro, opts); err != nil {
			return err
		}
	}
	own := *ro // newClient copies ro: this copy is never a live client's
	s.nodeOpts = &own
	c := newClient(ro, opts) // a failover client with Options.SentinelMaster
	s.rdb, s.ownClient, s.clientClosed = c, true, make(chan struct{})
	return nil
}

// clientSideCache turns on go-redis's client-side cache in ro, which must
// speak RESP3 to database 0: go-redis would otherwise only log that it
// disabled the cache.
func clientSideCache(ro *redis.Options, opts Options) error {
	if ro.DB != 0 {
		return fmt.Errorf("%w: ClientSideCache needs database 0, not %d", ErrInvalidArgument, ro.DB)
	}
	if ro.Protocol == 2 {
		return fmt.Errorf("%w: ClientSideCache needs RESP3, not protocol=2", ErrInvalidArgument)
	}
	ro.Protocol = 3
	ro.ClientSideCacheConfig = &redis.ClientSideCacheConfig{
		MaxEntries:   opts.ClientSideCacheEntries,
		MaxStaleness: opts.ClientSideCacheMaxStaleness,
	}
	return nil
}

// Connect checks that Redis answers a PING within the call's bound. It
// returns an error when Redis is unreachable; the Service stays usable
// and reconnects by itself once Redis is back.
func (s *Service) Connect(ctx context.Context) error {
	return s.ping(ctx, "connect")
}

// Close releases the Service. It closes the go-redis client only when New
// dialled it (never one passed in [Options.Client]) and waits for the
// Service's own background work: the local tier's tracking connections
// and its cache's clean-up goroutine end before Close returns. [Cache]'s
// loads in progress have their ctx cancelled, and Close waits for them to
// return, up to [Options.Timeout]. It waits for the dialled client to
// close up to Options.Timeout too: past it (calls queued behind a stalled
// server), it returns an error matching [context.DeadlineExceeded] and
// the client finishes closing in the background. Close is idempotent:
// calls after the first return nil. Every other method returns
// [ErrClosed] afterwards.
func (s *Service) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	s.bgMu.Lock() // goBackground checks closed under bgMu: no goroutine starts after this
	s.bgCancel()
	s.bgMu.Unlock()
	fctx, fcancel := context.WithTimeout(context.Background(), s.opts.Timeout)
	_ = s.flights.Close(fctx) // a load that ignores its cancelled ctx is not waited for past Timeout
	fcancel()
	s.bg.Wait()
	if s.local != nil {
		s.local.Close()
	}
	s.tel.Close()
	s.breaker.MarkDown() // starts no ping: goBackground refuses after Close
	if s.ownClient {
		return s.closeClient()
	}
	return nil
}

// IsConnected reports the last observed state of the connection to
// Redis: false after a call failed for a connection reason (refused,
// reset, timed out by [Options.Timeout]), true again after the next call
// or background PING that Redis answers. A command error such as
// WRONGTYPE, a caller's own cancellation or deadline, an exhausted pool
// and an invalid argument leave it as it was. While it is false, one
// background PING at a time, at most every 100 ms and each bounded by
// Options.Timeout, asks Redis, so the state recovers even when no other
// calls are made; and on a single node (not Redis Cluster) every call
// fails fast with [ErrUnavailable] (see "Behaviour under failure" in the
// README). It does not touch the network.
func (s *Service) IsConnected() bool {
	return s.breaker.Connected()
}

// goBackground runs fn in a goroutine that Close waits for and whose ctx
// Close cancels. It reports false, running nothing, once Close has begun.
func (s *Service) goBackground(fn func(ctx context.Context)) bool {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.closed.Load() {
		return false
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		fn(s.bgCtx)
	}()
	return true
}

// Client returns the underlying go-redis client, for pipelines,
// instrumentation and commands the Service does not wrap. Keys written
// through it do not get [Options.KeyPrefix] added.
func (s *Service) Client() redis.UniversalClient { return s.rdb }

// Key returns k as the Service stores it, with [Options.KeyPrefix]
// prepended: use it for keys sent through [Service.Client] or
// [Service.Run], which add no prefix themselves.
func (s *Service) Key(k string) string { return s.key(k) }

// Run runs fn as one operation of the Service, for packages that build
// on it (a session store, say) and want what its own methods get. After
// [Service.Close] it returns [ErrClosed] without calling fn, and while
// Redis is known to be down [ErrUnavailable], as every call does. fn
// receives the client and ctx bounded by [Options.Timeout] unless ctx has
// a deadline of its own. A failure is counted in [Stats], logged at most
// once a second per op, recorded by the telemetry (see
// [Options.MeterProvider]) and returned wrapped as
// `redisservice: <op> "<key>": <cause>`; redis.Nil from fn comes back
// unwrapped, as a miss. op names the operation in errors, logs and
// metrics; key is shown in errors (and in logs and spans under
// [Options.TraceKeys]), so pass a redacted form of a secret. fn must add
// the prefix itself, with [Service.Key].
func (s *Service) Run(ctx context.Context, op, key string, fn func(ctx context.Context, rdb redis.UniversalClient) error) error {
	_, err := call(s, ctx, op, key, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, fn(ctx, s.rdb)
	})
	return err
}

// eachMaster runs fn on every master of a Redis Cluster, concurrently,
// or once on the client of a single node or Sentinel setup.
func (s *Service) eachMaster(ctx context.Context, fn func(context.Context, redis.UniversalClient) error) error {
	if c, ok := s.rdb.(*redis.ClusterClient); ok {
		return c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return fn(ctx, n) })
	}
	return fn(ctx, s.rdb)
}

// key returns k with the key prefix.
func (s *Service) key(k string) string {
	if s.prefix == "" {
		return k
	}
	return s.prefix + k
}
