package redisservice

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/vevurn/redisservice/internal/clientip"
)

// HeaderVersion selects the RateLimit header fields that
// [Service.RateLimitMiddleware] sends.
type HeaderVersion int

const (
	// HeadersDraft6 sends the fields of draft-ietf-httpapi-ratelimit-headers-06,
	// which most clients read today: RateLimit-Limit, RateLimit-Remaining
	// and RateLimit-Reset for the tightest limit, and RateLimit-Policy
	// listing every limit as "<quota>;w=<seconds>", e.g. "100;w=60,
	// 1000;w=3600". It is the default.
	HeadersDraft6 HeaderVersion = iota

	// HeadersDraft11 sends the two structured fields of
	// draft-ietf-httpapi-ratelimit-headers-11: RateLimit-Policy listing
	// every limit as `"<name>";q=<quota>;w=<seconds>` and RateLimit
	// describing the tightest as `"<name>";r=<remaining>;t=<seconds>`.
	HeadersDraft11

	// HeadersXRateLimit sends the fields GitHub's API and ulule/limiter
	// send, which many clients and dashboards parse: X-RateLimit-Limit,
	// X-RateLimit-Remaining and X-RateLimit-Reset for the tightest limit.
	// X-RateLimit-Reset is a time, not a duration: the Unix time in whole
	// seconds (rounded up) at which that limit is full again, on the Redis
	// server's clock, as GitHub and ulule/limiter send it. No field lists
	// the limits.
	HeadersXRateLimit
)

// RateLimitConfig configures [Service.RateLimitMiddleware]. Either Limit
// and Window (a fixed window, the default algorithm) or Limits (GCRA) are
// required; every other field has a working zero value.
type RateLimitConfig struct {
	// Limit is the number of requests allowed per fixed window for one
	// key. It must be > 0 unless Limits is set, and 0 when it is.
	Limit int

	// Window is the length of the fixed window, at least one millisecond
	// (millisecond precision). It must be 0 when Limits is set. Any Window
	// up to the largest Duration is sent exactly in the headers (seconds,
	// rounded up).
	Window time.Duration

	// Limits, when set, replaces the fixed window with one or several
	// GCRA limits decided together by [Service.AllowN]: a request is let
	// through only when every limit has room for its cost, and then
	// counted against all of them. The headers describe the tightest.
	Limits []Limit

	// Cost returns how many tokens a request takes under Limits (for
	// example more for an export than for a read). The default is 1 per
	// request. A cost of 0 is let through without being counted; a cost
	// above a limit's burst is always denied (429). A negative cost is a
	// programming error: the request is answered 500 Internal Server Error
	// without reaching the handler, whatever the fail mode, and OnError
	// gets an error matching [ErrInvalidArgument]; Redis is not asked.
	// Cost needs Limits.
	Cost func(*http.Request) int

	// Key returns the bucket a request counts against, e.g. a user or an
	// API client. It appears in error messages (and in logs and spans with
	// [Options.TraceKeys]): hash secrets such as API tokens first. The
	// default, and the fallback when Key returns "", is the client IP (see
	// TrustedProxies, or ClientIP), or for IPv6 its network (see
	// IPv6Prefix).
	Key func(*http.Request) string

	// Name separates this limit's buckets from other limits' when several
	// middlewares apply to the same clients: the counter of a request is
	// "ratelimit:<Name>:<key>" for a fixed window, and its GCRA state
	// "gcra:<Name>:<key>" (one field per limit); [Service.ResetRateLimit]
	// with "<Name>:<key>" forgets both. Middlewares with the same Name
	// share buckets. The default value is "<Limit>/<Window>", e.g.
	// "100/1m0s", or with Limits the limits' names joined by ",", e.g.
	// "10/1s,1000/1h0m0s" (see HeaderVersion). It is also the policy name
	// of a fixed window in [HeadersDraft11] headers.
	Name string

	// IPv6Prefix is the length of the network an IPv6 client is keyed on
	// by default (see Key): one host commonly holds a whole /64, and would
	// otherwise get a fresh bucket per address. IPv4 clients are keyed on
	// their address. 1 to 128; the default value is 64.
	IPv6Prefix int

	// HeaderVersion selects the RateLimit header fields sent. The default
	// value is [HeadersDraft6], the fields sent before this option existed;
	// [HeadersDraft11] sends the current draft's structured fields, in
	// which a GCRA limit is named "<Rate>/<Period>" (e.g. "10/1s"), with
	// "+<Burst>" when its burst is not its rate ("10/1s+20");
	// [HeadersXRateLimit] sends X-RateLimit-Limit, -Remaining and -Reset.
	// Every version sends Retry-After with a 429 or 503.
	HeaderVersion HeaderVersion

	// TrustedProxies lists the reverse proxies and load balancers whose
	// ForwardedHeader is believed. A request whose RemoteAddr is in one of
	// these prefixes is keyed on the right-most address in the header that
	// is not itself a trusted proxy; every other request is keyed on
	// RemoteAddr, so a client cannot choose its bucket by sending the
	// header. The header is read from the right, at most 16 entries of at
	// most 256 bytes each: after that, or at an entry that is not an
	// address, the request is keyed on the last trusted proxy read, so a
	// header of any size costs a bounded amount of work and no
	// allocation. The default, none, ignores every forwarding header.
	TrustedProxies []netip.Prefix

	// ForwardedHeader names the header that the trusted proxies set:
	// "X-Forwarded-For" (the default), "X-Real-IP", "Forwarded" (RFC 7239,
	// its for= parameters), or any other header holding a comma-separated
	// list of addresses. Only this header is read, so a proxy that appends
	// to X-Forwarded-For but passes a client's Forwarded header on cannot
	// be fooled.
	ForwardedHeader string

	// ClientIP, when set, finds the client IP that requests are keyed on
	// by default (see Key), in place of TrustedProxies, ForwardedHeader
	// and IPv6Prefix, which must then be unset. Give handlers the same
	// resolver, so that they see the clients the middleware counts. The
	// default, nil, builds one from those three fields.
	ClientIP *ClientIPResolver

	// Denied, when set, writes the response to a request over the limit
	// instead of the default 429 with a JSON body. The RateLimit-* and
	// Retry-After headers are already set; Denied writes the status.
	Denied http.Handler

	// OnError, when set, is called with the request and the error whenever
	// Redis could not be asked. The request then goes on (fail open) or is
	// answered 503 (with [Options.RateLimitFailClosed]). It is also called
	// for a negative Cost (see there).
	OnError func(*http.Request, error)
}

// RateLimitMiddleware returns net/http middleware that limits the
// requests of each key (by default each client IP): cfg.Limit requests per
// cfg.Window with [Service.CheckRateLimit], or, when cfg.Limits is set,
// every GCRA limit at once with [Service.AllowN] and cfg.Cost tokens per
// request. Every response carries the RateLimit header fields of
// cfg.HeaderVersion: the policy lists every limit, the rest describe the
// tightest (seconds are whole, rounded up). A request over the limit is
// answered 429 Too Many Requests with Retry-After (whole seconds, at
// least 1) and a JSON body {"error":"rate limit exceeded",
// "retryAfter":<seconds>}, and does not reach next.
//
// When Redis cannot be asked, the request is let through by default; with
// [Options.RateLimitFailClosed] it is answered 503 Service Unavailable with
// Retry-After and a JSON body. cfg.OnError sees the error either way. While
// Redis is known to be down, each request costs no wait (see
// [Service.CheckRateLimit]).
//
// RateLimitMiddleware panics, when called, if the configuration cannot
// work (cfg.Limit <= 0 or cfg.Window below one millisecond without
// Limits, Limit or Window set with Limits, an invalid limit, Cost without
// Limits, IPv6Prefix outside 0 to 128, an unknown HeaderVersion, an
// invalid trusted proxy prefix, ClientIP with the fields it replaces):
// those are programming errors, found at start-up rather than on the
// first request.
func (s *Service) RateLimitMiddleware(cfg RateLimitConfig) func(http.Handler) http.Handler {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		panic("redisservice: RateLimitMiddleware: " + err.Error())
	}
	ips := cfg.ClientIP
	if ips == nil {
		r, err := clientip.New(cfg.TrustedProxies, cfg.ForwardedHeader, cfg.IPv6Prefix)
		if err != nil {
			panic("redisservice: RateLimitMiddleware: cfg." + err.Error())
		}
		ips = &ClientIPResolver{r: r}
	}
	window := cfg.Window.Truncate(time.Millisecond)
	hdr := cfg.headers(window)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			key := ""
			if cfg.Key != nil {
				key = cfg.Key(r)
			}
			if key == "" {
				key = ips.Key(r)
			}
			var (
				res       RateLimitResult
				err       error
				tightest  int
				bucketKey = cfg.Name + ":" + key
			)
			if len(cfg.Limits) > 0 {
				n := 1
				if cfg.Cost != nil {
					n = cfg.Cost(r)
				}
				if n < 0 {
					badCost(w, r, cfg, bucketKey, n)
					return
				}
				res, tightest, err = s.allowN(r.Context(), bucketKey, n, cfg.Limits)
			} else {
				res, err = s.CheckRateLimit(r.Context(), bucketKey, window, cfg.Limit)
			}
			if err != nil && cfg.OnError != nil {
				cfg.OnError(r, err)
			}
			hdr.set(w.Header(), res, tightest)
			switch {
			case res.Allowed:
				next.ServeHTTP(w, r)
			case err != nil:
				writeRetryJSON(w, http.StatusServiceUnavailable, "rate limiter unavailable", res.RetryAfter)
			case cfg.Denied != nil:
				w.Header().Set("Retry-After", strconv.FormatInt(ceilSeconds(res.RetryAfter), 10))
				cfg.Denied.ServeHTTP(w, r)
			default:
				writeRetryJSON(w, http.StatusTooManyRequests, "rate limit exceeded", res.RetryAfter)
			}
		})
	}
}

// withDefaults returns a copy of c with unset fields filled in.
func (c RateLimitConfig) withDefaults() RateLimitConfig {
	if c.Name == "" {
		if len(c.Limits) == 0 {
			c.Name = fmt.Sprintf("%d/%v", c.Limit, c.Window)
		} else {
			names := make([]string, len(c.Limits))
			for i, l := range c.Limits {
				names[i] = l.name()
			}
			c.Name = strings.Join(names, ",")
		}
	}
	c.Limits = append([]Limit(nil), c.Limits...)
	return c
}

// validate reports the first field that cannot work.
func (c RateLimitConfig) validate() error {
	if len(c.Limits) == 0 {
		switch {
		case c.Limit <= 0:
			return fmt.Errorf("cfg.Limit %d <= 0", c.Limit)
		case c.Window < time.Millisecond:
			return fmt.Errorf("cfg.Window %v < 1ms", c.Window)
		case c.Cost != nil:
			return errors.New("cfg.Cost needs Limits")
		}
	} else if c.Limit != 0 || c.Window != 0 {
		return fmt.Errorf("cfg.Limit %d and Window %v with Limits: use one or the other", c.Limit, c.Window)
	}
	for i, l := range c.Limits {
		if err := l.check(); err != nil {
			return fmt.Errorf("cfg.Limits[%d]: %w", i, err)
		}
	}
	if c.HeaderVersion < HeadersDraft6 || c.HeaderVersion > HeadersXRateLimit {
		return fmt.Errorf("cfg.HeaderVersion %d unknown", c.HeaderVersion)
	}
	if c.ClientIP != nil && (c.TrustedProxies != nil || c.ForwardedHeader != "" || c.IPv6Prefix != 0) {
		return errors.New("cfg.ClientIP with TrustedProxies, ForwardedHeader or IPv6Prefix: give them to NewClientIPResolver")
	}
	return nil
}

// rateHeaders writes the RateLimit header fields of one configuration.
// The policy, which never changes, is formatted once.
type rateHeaders struct {
	version HeaderVersion
	policy  string
	names   []string // draft 11: the quoted policy name of each limit
}

// headers prepares the header fields of c, whose fixed window (when it
// has no Limits) is window.
func (c RateLimitConfig) headers(window time.Duration) rateHeaders {
	type policy struct {
		name   string
		quota  int
		window time.Duration
	}
	policies := []policy{{c.Name, c.Limit, window}}
	if len(c.Limits) > 0 {
		policies = policies[:0]
		for _, l := range c.Limits {
			policies = append(policies, policy{l.name(), l.Rate, l.Period})
		}
	}
	h := rateHeaders{version: c.HeaderVersion}
	if c.HeaderVersion == HeadersXRateLimit {
		return h
	}
	items := make([]string, len(policies))
	for i, p := range policies {
		w := strconv.FormatInt(ceilSeconds(p.window), 10)
		if c.HeaderVersion == HeadersDraft6 {
			items[i] = strconv.Itoa(p.quota) + ";w=" + w
			continue
		}
		name := sfString(p.name)
		h.names = append(h.names, name)
		items[i] = name + ";q=" + strconv.Itoa(p.quota) + ";w=" + w
	}
	h.policy = strings.Join(items, ", ")
	return h
}

// set writes the fields for res, which describes limit i.
func (h rateHeaders) set(hd http.Header, res RateLimitResult, i int) {
	switch h.version {
	case HeadersXRateLimit:
		hd.Set("X-RateLimit-Limit", strconv.Itoa(res.Limit))
		hd.Set("X-RateLimit-Remaining", strconv.Itoa(res.Remaining))
		hd.Set("X-RateLimit-Reset", strconv.FormatInt(unixCeil(res.ResetAt), 10))
	case HeadersDraft11:
		hd.Set("RateLimit-Policy", h.policy)
		hd.Set("RateLimit", h.names[i]+";r="+strconv.Itoa(res.Remaining)+";t="+strconv.FormatInt(ceilSeconds(res.ResetAfter), 10))
	default:
		hd.Set("RateLimit-Policy", h.policy)
		hd.Set("RateLimit-Limit", strconv.Itoa(res.Limit))
		hd.Set("RateLimit-Remaining", strconv.Itoa(res.Remaining))
		hd.Set("RateLimit-Reset", strconv.FormatInt(ceilSeconds(res.ResetAfter), 10))
	}
}

// unixCeil returns t as a Unix time in whole seconds, rounded up.
func unixCeil(t time.Time) int64 {
	secs := t.Unix()
	if t.Nanosecond() > 0 {
		secs++
	}
	return secs
}

// sfString returns s as a structured-field string (RFC 8941): quoted,
// with `"` and `\` escaped and bytes outside printable ASCII replaced.
func sfString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c > 0x7e:
			b.WriteByte('?')
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// badCost answers a request whose cfg.Cost is negative: 500, whatever the
// fail mode, since failing open would let a Cost such as r.ContentLength
// (-1 for a body of unknown length) bypass the limit.
func badCost(w http.ResponseWriter, r *http.Request, cfg RateLimitConfig, bucketKey string, n int) {
	if cfg.OnError != nil {
		cfg.OnError(r, invalid("ratelimit", bucketKey, fmt.Errorf("%w: cfg.Cost returned cost %d < 0", ErrInvalidArgument, n)))
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = io.WriteString(w, `{"error":"invalid rate-limit cost"}`+"\n")
}

// retryBody is the JSON body of a denied request.
type retryBody struct {
	Error      string `json:"error"`
	RetryAfter int64  `json:"retryAfter"` // seconds
}

// writeRetryJSON answers with code, Retry-After and a JSON body.
func writeRetryJSON(w http.ResponseWriter, code int, msg string, retryAfter time.Duration) {
	secs := ceilSeconds(retryAfter)
	h := w.Header()
	h.Set("Retry-After", strconv.FormatInt(secs, 10))
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(retryBody{Error: msg, RetryAfter: secs})
}

// ceilSeconds returns d in whole seconds, rounded up, and at least 1. It
// does not overflow near the largest Duration.
func ceilSeconds(d time.Duration) int64 {
	secs := int64(d / time.Second)
	if d%time.Second > 0 {
		secs++
	}
	return max(secs, 1)
}
