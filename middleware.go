package redisservice

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

//lint:file-ignore ST1005 the validation errors start with the field's name (Limit, Window)

// RateLimitConfig configures [Service.RateLimitMiddleware]. Limit and
// Window are required; every other field has a working zero value.
type RateLimitConfig struct {
	// Limit is the number of requests allowed per window for one key.
	// It must be > 0.
	Limit int

	// Window is the length of the fixed window, at least one millisecond
	// (millisecond precision).
	Window time.Duration

	// Key returns the bucket a request counts against, e.g. a user or an
	// API client. It appears in error messages and logs: hash secrets such
	// as API tokens first. The default, and the fallback when Key returns
	// "", is the client IP (see TrustedProxies).
	Key func(*http.Request) string

	// Name separates this limit's buckets from other limits' when several
	// middlewares apply to the same clients: the counter of a request is
	// "ratelimit:<Name>:<key>". Limits with the same Name share buckets.
	// The default value is "<Limit>/<Window>", e.g. "100/1m0s".
	Name string

	// TrustedProxies lists the reverse proxies and load balancers whose
	// ForwardedHeader is believed. A request whose RemoteAddr is in one of
	// these prefixes is keyed on the right-most address in the header that
	// is not itself a trusted proxy; every other request is keyed on
	// RemoteAddr, so a client cannot choose its bucket by sending the
	// header. The default, none, ignores every forwarding header.
	TrustedProxies []netip.Prefix

	// ForwardedHeader names the header that the trusted proxies set:
	// "X-Forwarded-For" (the default), "X-Real-IP", "Forwarded" (RFC 7239,
	// its for= parameters), or any other header holding a comma-separated
	// list of addresses. Only this header is read, so a proxy that appends
	// to X-Forwarded-For but passes a client's Forwarded header on cannot
	// be fooled.
	ForwardedHeader string

	// Denied, when set, writes the response to a request over the limit
	// instead of the default 429 with a JSON body. The RateLimit-* and
	// Retry-After headers are already set; Denied writes the status.
	Denied http.Handler

	// OnError, when set, is called with the request and the error whenever
	// Redis could not be asked. The request then goes on (fail open) or is
	// answered 503 (with [Options.RateLimitFailClosed]).
	OnError func(*http.Request, error)
}

// RateLimitMiddleware returns net/http middleware that allows cfg.Limit
// requests per cfg.Window for each key (by default each client IP), using
// [Service.CheckRateLimit]. Every response carries RateLimit-Limit,
// RateLimit-Remaining and RateLimit-Reset (whole seconds until the window
// ends, rounded up) and RateLimit-Policy ("<limit>;w=<seconds>"). A request
// over the limit is answered 429 Too Many Requests with Retry-After (whole
// seconds, at least 1) and a JSON body {"error":"rate limit exceeded",
// "retryAfter":<seconds>}, and does not reach next.
//
// When Redis cannot be asked, the request is let through by default; with
// [Options.RateLimitFailClosed] it is answered 503 Service Unavailable with
// Retry-After and a JSON body. cfg.OnError sees the error either way.
//
// RateLimitMiddleware panics, when called, if cfg.Limit <= 0, cfg.Window is
// below one millisecond or a trusted proxy prefix is invalid: those are
// programming errors, found at start-up rather than on the first request.
func (s *Service) RateLimitMiddleware(cfg RateLimitConfig) func(http.Handler) http.Handler {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		panic("redisservice: RateLimitMiddleware: " + err.Error())
	}
	window := cfg.Window.Truncate(time.Millisecond)
	policy := fmt.Sprintf("%d;w=%d", cfg.Limit, ceilSeconds(window))
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			key := ""
			if cfg.Key != nil {
				key = cfg.Key(r)
			}
			if key == "" {
				key = cfg.clientIP(r)
			}
			res, err := s.CheckRateLimit(r.Context(), cfg.Name+":"+key, window, cfg.Limit)
			if err != nil && cfg.OnError != nil {
				cfg.OnError(r, err)
			}
			h := w.Header()
			h.Set("RateLimit-Limit", strconv.Itoa(res.Limit))
			h.Set("RateLimit-Remaining", strconv.Itoa(res.Remaining))
			h.Set("RateLimit-Reset", strconv.FormatInt(ceilSeconds(res.ResetAfter), 10))
			h.Set("RateLimit-Policy", policy)
			switch {
			case res.Allowed:
				next.ServeHTTP(w, r)
			case err != nil:
				writeRetryJSON(w, http.StatusServiceUnavailable, "rate limiter unavailable", res.RetryAfter)
			case cfg.Denied != nil:
				h.Set("Retry-After", strconv.FormatInt(ceilSeconds(res.RetryAfter), 10))
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
		c.Name = fmt.Sprintf("%d/%v", c.Limit, c.Window)
	}
	if c.ForwardedHeader == "" {
		c.ForwardedHeader = "X-Forwarded-For"
	}
	c.ForwardedHeader = http.CanonicalHeaderKey(c.ForwardedHeader)
	// Addresses are compared unmapped (see parseHostAddr), so unmap the
	// prefixes too; the copy keeps the caller's slice as it was.
	proxies := make([]netip.Prefix, len(c.TrustedProxies))
	for i, p := range c.TrustedProxies {
		if p.IsValid() && p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		proxies[i] = p
	}
	c.TrustedProxies = proxies
	return c
}

// validate reports the first field that cannot work.
func (c RateLimitConfig) validate() error {
	switch {
	case c.Limit <= 0:
		return fmt.Errorf("Limit %d <= 0", c.Limit)
	case c.Window < time.Millisecond:
		return fmt.Errorf("Window %v < 1ms", c.Window)
	}
	for i, p := range c.TrustedProxies {
		if !p.IsValid() {
			return fmt.Errorf("TrustedProxies[%d] %v is not a valid prefix", i, p)
		}
	}
	return nil
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

// ceilSeconds returns d in whole seconds, rounded up, and at least 1.
func ceilSeconds(d time.Duration) int64 {
	secs := int64((d + time.Second - 1) / time.Second)
	return max(secs, 1)
}

// clientIP returns the address of the client that sent r: RemoteAddr
// without its port, or, when RemoteAddr is a trusted proxy, the right-most
// address in the forwarding header that is not a trusted proxy. An
// unparsable RemoteAddr is used as it is ("unknown" when empty), so that
// such clients share one bucket rather than escape the limit.
func (c RateLimitConfig) clientIP(r *http.Request) string {
	remote, ok := parseHostAddr(r.RemoteAddr)
	if !ok {
		if r.RemoteAddr == "" {
			return "unknown"
		}
		return r.RemoteAddr
	}
	if !c.trusted(remote) {
		return remote.String()
	}
	// Walk right to left: every entry right of the first untrusted one was
	// written by a trusted proxy about its peer, so it can be believed.
	// Entries further left may come from the client.
	hops := c.forwardedFor(r)
	client := remote
	for i := len(hops) - 1; i >= 0; i-- {
		a, ok := parseHostAddr(hops[i])
		if !ok {
			// A trusted proxy could not name its peer ("unknown", an
			// obfuscated id): key on that proxy rather than guess.
			break
		}
		client = a
		if !c.trusted(a) {
			break
		}
	}
	return client.String()
}

// trusted reports whether a is one of the trusted proxies.
func (c RateLimitConfig) trusted(a netip.Addr) bool {
	for _, p := range c.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// forwardedFor returns the addresses in the configured forwarding header,
// oldest (client side) first, across all of its lines.
func (c RateLimitConfig) forwardedFor(r *http.Request) []string {
	var hops []string
	for _, line := range r.Header.Values(c.ForwardedHeader) {
		for _, elem := range strings.Split(line, ",") {
			if c.ForwardedHeader != "Forwarded" {
				hops = append(hops, strings.TrimSpace(elem))
				continue
			}
			hop := ""
			for _, pair := range strings.Split(elem, ";") {
				k, v, _ := strings.Cut(strings.TrimSpace(pair), "=")
				if strings.EqualFold(k, "for") {
					hop = strings.Trim(v, `"`)
				}
			}
			hops = append(hops, hop)
		}
	}
	return hops
}

// parseHostAddr parses an IP address, with or without a port, brackets
// or an IPv6 zone, and returns it in its plain form: IPv4-mapped IPv6
// addresses become IPv4 and zones are dropped, so that one client always
// gets one key.
func parseHostAddr(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		host, _, splitErr := net.SplitHostPort(s)
		if splitErr != nil {
			return netip.Addr{}, false
		}
		if a, err = netip.ParseAddr(host); err != nil {
			return netip.Addr{}, false
		}
	}
	return a.Unmap().WithZone(""), true
}
