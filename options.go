package redisservice

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// DefaultURL is used when neither [Options.URL] nor $REDIS_URL is set.
const DefaultURL = "redis://localhost:6379"

// MaxTimeout is the largest [Options.Timeout]: larger values are taken as
// it. It leaves room to add the timeout to any instant of a process's life
// without overflowing a time.Duration.
const MaxTimeout = 100 * 365 * 24 * time.Hour

// Options configures a [Service]. The zero value is valid: it dials
// $REDIS_URL, or [DefaultURL] when that is unset, with the defaults below.
type Options struct {
	// URL is a redis:// or rediss:// (TLS) URL, with optional user:password
	// and /db, e.g. "rediss://app:secret@cache.internal:6380/2". Query
	// parameters understood by [redis.ParseURL] (dial_timeout, pool_size, …)
	// are honoured. The default value is $REDIS_URL, then [DefaultURL].
	// New refuses it together with Client.
	URL string

	// Client, when non-nil, is used instead of dialling URL: a
	// *redis.Client, *redis.ClusterClient or a Sentinel-backed client. The
	// caller keeps ownership: [Service.Close] never closes it. The
	// connection options (URL, TLSConfig, DialTimeout, PoolSize,
	// PoolTimeout, MaxRetries, ClientSideCache and its two
	// settings) then do not apply, and New refuses them with
	// [ErrInvalidArgument]: set them on the client. For the caller's deadlines to reach the socket, the client
	// should have ContextTimeoutEnabled set.
	Client redis.UniversalClient

	// SentinelMaster, when set, makes New dial through Redis Sentinel: the
	// name of the master the sentinels in SentinelAddrs monitor ("mymaster").
	// The Service then follows failovers by itself (see README.md "High
	// availability" for what one costs a caller). URL still gives the
	// master's user, password, database, TLS (rediss://) and query
	// parameters; its host and port are not used. Every setting of this
	// struct applies as with a plain URL, to the sentinels too (except
	// ClientSideCache, which New refuses here). With rediss://, the
	// certificates of the master, its replicas and the sentinels must be
	// valid for the URL's host name, or for TLSConfig.ServerName. The
	// default, "", dials URL's host. Not allowed with Client.
	SentinelMaster string

	// SentinelAddrs lists the sentinels as "host:port" (usually three or
	// more). New asks them for the master's address; it needs one to
	// answer. Required with SentinelMaster.
	SentinelAddrs []string

	// SentinelUsername and SentinelPassword authenticate to the sentinels
	// (their requirepass), which is separate from the master's password in
	// URL. They never appear in an error or a log line. The default is no
	// authentication.
	SentinelUsername string
	SentinelPassword string

	// KeyPrefix is prepended to every key and pattern the Service sends
	// ("pos:"), and is never visible to callers. The default is no prefix.
	KeyPrefix string

	// Logger receives at most about one line per second per kind of
	// failure (the rest are counted in [Stats.LogsSuppressed]). It never
	// receives values or passwords, nor keys unless TraceKeys is set;
	// session ids are redacted. The default value is slog.Default().
	Logger *slog.Logger

	// AllowFlushAll lets [Service.FlushAll] run. The default is false:
	// FlushAll returns [ErrFlushDisabled].
	AllowFlushAll bool

	// AllowReservedKeys lets the calls that write or delete a key the
	// caller names (Set, SetJSON, MSet, HSet, HDel, Expire, Del, Cache,
	// InvalidatePattern) touch the namespaces the Service keeps for its
	// own keys: "session:", "user-sessions:", "ratelimit:", "gcra:" and
	// "scs:session:" (scsstore's default; all after KeyPrefix). The
	// default is false: they fail with [ErrInvalidKey] (InvalidatePattern
	// skips such keys), so that a key name built from user input cannot
	// forge a session or break a rate limiter. Set it for migrations and
	// tools that must write those keys.
	AllowReservedKeys bool

	// Timeout bounds every call whose context has no deadline, retries
	// and pool waits included. A caller's own deadline is used as it is.
	// Calls whose context can never end (context.Background, or values
	// over it) share one deadline per slot of Timeout/64 (at most 10 ms)
	// instead of a timer each, so their bound is Timeout plus at most one
	// slot.
	// It is also the socket read and write timeout of a dialled client,
	// and the bound of each [Cache] load, whoever waits for it.
	// The default value is 3s. A value above [MaxTimeout] is taken as
	// MaxTimeout, so that math.MaxInt64 means "practically unbounded"
	// instead of a deadline that overflows.
	Timeout time.Duration

	// DialTimeout bounds establishing one connection of a dialled client.
	// The default value is 2s.
	DialTimeout time.Duration

	// PoolSize is the dialled client's connection pool size per node. The
	// default value is go-redis's, 10 per GOMAXPROCS.
	PoolSize int

	// PoolTimeout is how long a call of a dialled client waits for a free
	// connection when the pool is exhausted before it fails with
	// [redis.ErrPoolTimeout]. The default value is Timeout.
	PoolTimeout time.Duration

	// MaxRetries is how often a dialled client retries a command after a
	// network error; -1 disables retries. The default value is 2. A
	// refused dial is never retried: nothing listens, and the Service then
	// fails fast (see [Service.IsConnected]).
	// The rate-limit script is never retried after it may have run, whatever
	// this says (see [Service.CheckRateLimit]).
	MaxRetries int

	// AutoPipeline sends every single-command call (see NoAutoPipeline)
	// through the autopipeliner, a lone one too. The default, false,
	// sends a call that is the only one in flight straight on the plain
	// client, which is faster for it, and only concurrent calls through
	// the autopipeliner. Either way each call is bounded by its ctx and
	// Timeout. It cannot be combined with NoAutoPipeline.
	AutoPipeline bool

	// NoAutoPipeline turns the autopipeliner off: every call then makes
	// round trips of its own on the plain client. By default, calls that
	// send one command (Get, Set, SetJSON, GetJSON, Exists, Expire, TTL,
	// HGet, HSet, HGetAll, HDel, Cache's reads, session reads and the
	// rate-limit scripts) made while others are in flight share round trips
	// through go-redis's deferred autopipeliner on the same client, which
	// raises throughput under concurrency (see docs/operations.md). A call
	// still returns as soon as its ctx ends, with the ctx's error, while its
	// command may yet run, as with a plain client whose call is cut short;
	// a failed batch fails or retries only its own commands, and the
	// scripts that must not run twice are never sent again. Past 16,384
	// queued commands a call fails at once, with its fallback and an error
	// matching [redis.ErrAutoPipelineQueueFull], which does not count as
	// Redis down. It applies to a client New dials (one node or through
	// the sentinels) and to a *redis.Client or *redis.ClusterClient in
	// Client (whose autopipeliner go-redis shares and closes with it, and
	// whose settings, the queue bound included, are those of whoever asked
	// for it first; if its owner closes it, go-redis makes the Service a
	// new one). The default is false.
	NoAutoPipeline bool

	// ClientSideCache serves repeated reads (Get, GetJSON, Exists, HGet,
	// HGetAll, MGet, …) from process memory, using Redis 6+ server-assisted
	// invalidation (RESP3 CLIENT TRACKING): Redis tells the client when a
	// key it has read changes, and the client drops its copy. The default
	// is false, because reads become eventually consistent: after another
	// client writes a key, this Service may return the old value until the
	// invalidation is applied, which on a healthy connection takes a few
	// milliseconds (the drain interval is 5 ms) and never longer than
	// ClientSideCacheMaxStaleness. Reads are not monotonic across cached
	// and uncached paths. Writes through this Service invalidate too, by
	// the same path. It needs database 0 and RESP3 (New rejects a URL
	// naming another database or protocol=2), and applies only to a client
	// that New dials. Each cached key costs memory on the server for
	// tracking.
	ClientSideCache bool

	// ClientSideCacheEntries bounds how many replies the client-side cache
	// holds; the least recently used go first. The default value is 10000.
	ClientSideCacheEntries int

	// ClientSideCacheMaxStaleness is the longest a cached reply is served,
	// whatever invalidations say: the backstop for an invalidation lost
	// with a connection. Each entry is fetched again at least this often.
	// The default value is 1s.
	ClientSideCacheMaxStaleness time.Duration

	// LocalCacheEntries > 0 keeps up to that many decoded [Cache] values (per
	// key and type) in this process, the least useful going first. A hit there
	// costs no round trip, no decoding and no allocation, and returns the same
	// value to every caller: do not modify it. Each copy is dropped when its
	// key changes in Redis, by any client, as soon as Redis's invalidation
	// arrives (well under a millisecond on a LAN), and never outlives the
	// key's TTL. Every data node, replicas included, is tracked on a
	// connection of its own (CLIENT TRACKING in BCAST mode for KeyPrefix), so
	// that a failover loses no invalidation; nodes are listed again every
	// second, and on a cluster no value read from a node not tracked yet is
	// kept. The tier is emptied and unused whenever one of those connections
	// fails, until it is set up again; on a cluster also after a MOVED or ASK
	// reply, until the nodes are listed again. A connection that dies silently
	// (a partition) is noticed by a PING within a second, and copies may miss
	// changes meanwhile. Every write under KeyPrefix costs Redis one message
	// per tracked node to each Service with the tier. It needs Redis 6 or
	// later; on a server without CLIENT TRACKING (miniredis), or with a
	// failover client passed in Client, the tier switches itself off, logging
	// why. It cannot be combined with ClientSideCache. See README "Local
	// tier". The default, 0, keeps no values in process.
	LocalCacheEntries int

	// LocalCacheBytes bounds the memory of the local tier: its values count
	// by the length of their JSON in Redis, plus their key and about 256 B
	// each, and the least useful go first once the total would pass it. A
	// value whose JSON is longer than LocalCacheBytes/16 is not kept in
	// process at all. It needs LocalCacheEntries. The default value is
	// 64 MiB.
	LocalCacheBytes int64

	// TLSConfig is used for rediss:// URLs. The default value verifies the
	// server against the system roots and the URL's host name.
	TLSConfig *tls.Config

	// RateLimitFailClosed makes [Service.CheckRateLimit], [Service.AllowN]
	// and [Service.RateLimitMiddleware] deny requests when Redis cannot be
	// asked. The default, false, fails open: the request is allowed and the
	// error returned.
	RateLimitFailClosed bool

	// SessionMaxLifetime caps a session's total life however active it is:
	// [Service.UpdateSessionActivity] never extends a session past
	// CreatedAt + SessionMaxLifetime, and a session past it is ended for
	// every call. It applies to every session, also those created before
	// it was set (a session created under it also keeps the end it had
	// then, whichever comes first). The default, 0, means no cap.
	SessionMaxLifetime time.Duration

	// MaxSessionsPerUser bounds the per-user index used by
	// [Service.DestroyUserSessions]. Creating a session beyond the bound
	// destroys that user's live sessions closest to expiring (entries of
	// sessions that are gone do not count). The default value is 64.
	MaxSessionsPerUser int

	// LegacySessions: the original service may still be writing sessions,
	// which it never puts in a user index and whose TTL it resets to an
	// hour. [Service.DestroyUserSessions] and [Service.UserSessions] then
	// also find a user's sessions by walking session:* (SCAN with COUNT
	// 500 on every master, each step bounded by Timeout when ctx has no
	// deadline) and reading each session found, one pipelined round trip
	// per step: their cost grows with the number of sessions of all users,
	// not the one user's. Every session this package reads is also put in
	// its user's index with the TTL it has then, so that a session the
	// original service refreshed past its index entry is found again, and
	// the index names the sessions the walk found: [Service.GetSession]
	// reads the TTL with the session (same round trip) and takes one more
	// round trip for the index; UserSessions two more (see there).
	// Turn it off once the original service no longer writes sessions and
	// every session it wrote has expired. The default is false.
	LegacySessions bool
	// MeterProvider, when set, receives the Service's metrics through the
	// meter "github.com/vevurn/redisservice": redisservice.operations
	// (calls by op and outcome), redisservice.operation.duration (seconds,
	// by op), redisservice.cache.requests (by result),
	// redisservice.ratelimit.decisions and the go-redis pool's figures as
	// observable instruments (redisservice.pool.*); the README's
	// "Observability" lists them. No key is ever a metric attribute.
	// Services sharing a provider add up. The default, nil, records no
	// metrics and costs nothing.
	MeterProvider metric.MeterProvider

	// TracerProvider, when set, receives one span per call of a method,
	// named redisservice.<op> (redisservice.get, redisservice.cache, …),
	// of kind client, with db.system.name=redis, redisservice.op and
	// redisservice.outcome; a failure sets the span's status to Error with
	// error.type. A call that makes several round trips (Cache, most
	// session calls) records each as an event redisservice.round_trip of
	// its one span. A call whose context carries a span becomes its child.
	// The default, nil, makes no spans and costs nothing.
	TracerProvider trace.TracerProvider

	// TraceKeys adds each call's key to its span as redisservice.key and
	// to its failure's log line, and keeps error texts whole in both. The
	// default, false, records no key in telemetry or logs: keys may hold
	// personal data (an email in a rate-limit identifier, a user id), so
	// errors quoted there lose their keys, and a Redis error reply, which
	// can quote the command's arguments, is shown by its code alone
	// ("WRONGTYPE"). The errors returned still name the key. Session ids
	// are never recorded, as in errors.
	TraceKeys bool

	// Now is the clock used for session timestamps, a test seam. The
	// default value is time.Now. Rate-limit windows use the Redis server's
	// clock instead, so that all processes agree.
	Now func() time.Time

	// queueLimit, when positive, bounds the autopipeliner's queue instead
	// of maxQueued: a test seam, so that a test can fill the queue.
	queueLimit int
}

// withDefaults returns a copy of o with every unset field filled in.
func (o Options) withDefaults() Options {
	if o.URL == "" {
		o.URL = os.Getenv("REDIS_URL")
	}
	if o.URL == "" {
		o.URL = DefaultURL
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Timeout == 0 {
		o.Timeout = 3 * time.Second
	}
	o.Timeout = min(o.Timeout, MaxTimeout)
	if o.DialTimeout == 0 {
		o.DialTimeout = 2 * time.Second
	}
	if o.PoolTimeout == 0 {
		o.PoolTimeout = o.Timeout
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = 2
	}
	if o.ClientSideCacheEntries == 0 {
		o.ClientSideCacheEntries = 10000
	}
	if o.ClientSideCacheMaxStaleness == 0 {
		o.ClientSideCacheMaxStaleness = time.Second
	}
	if o.LocalCacheBytes == 0 && o.LocalCacheEntries > 0 {
		o.LocalCacheBytes = 64 << 20
	}
	if o.MaxSessionsPerUser == 0 {
		o.MaxSessionsPerUser = 64
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// SetOption is a per-call option of [Service.Set], [Service.SetJSON] and
// [Service.MSet].
type SetOption func(*setOptions)

type setOptions struct {
	ttl     time.Duration
	hasTTL  bool
	nx, xx  bool
	keepTTL bool
}

// WithTTL makes the key expire after d, which must be at least one
// millisecond. Milliseconds are kept: the value is sent as PX when it is
// not a whole number of seconds. A d below one millisecond, zero or
// negative makes the call fail with [ErrInvalidTTL] before anything is
// written.
func WithTTL(d time.Duration) SetOption {
	return func(o *setOptions) { o.ttl, o.hasTTL = d, true }
}

// NX makes the write happen only if the key does not exist yet.
func NX() SetOption { return func(o *setOptions) { o.nx = true } }

// XX makes the write happen only if the key already exists.
func XX() SetOption { return func(o *setOptions) { o.xx = true } }

// KeepTTL keeps the key's current time to live instead of clearing it.
// It cannot be combined with [WithTTL].
func KeepTTL() SetOption { return func(o *setOptions) { o.keepTTL = true } }

// buildSetOptions applies opts and validates the result.
func buildSetOptions(opts []SetOption) (setOptions, error) {
	var o setOptions
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.hasTTL {
		if err := checkTTL(o.ttl); err != nil {
			return o, err
		}
	}
	if o.nx && o.xx {
		return o, fmt.Errorf("%w: NX with XX", ErrInvalidArgument)
	}
	if o.keepTTL && o.hasTTL {
		return o, fmt.Errorf("%w: KeepTTL with WithTTL", ErrInvalidArgument)
	}
	return o, nil
}

// args converts o into go-redis SET arguments.
func (o setOptions) args() redis.SetArgs {
	a := redis.SetArgs{TTL: o.ttl, KeepTTL: o.keepTTL}
	switch {
	case o.nx:
		a.Mode = "NX"
	case o.xx:
		a.Mode = "XX"
	}
	return a
}

// checkTTL accepts a TTL of at least one millisecond.
func checkTTL(d time.Duration) error {
	if d < time.Millisecond {
		return fmt.Errorf("%w: %v (want >= 1ms)", ErrInvalidTTL, d)
	}
	return nil
}
