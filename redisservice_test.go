package redisservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

func TestNewURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		url     string
		wantErr bool
		addr    string
		tls     bool
		db      int
	}{
		{name: "plain", url: "redis://127.0.0.1:7000", addr: "127.0.0.1:7000"},
		{name: "db and auth", url: "redis://app:s3cret@10.0.0.1:6380/4", addr: "10.0.0.1:6380", db: 4},
		{name: "tls", url: "rediss://:s3cret@cache.internal", addr: "cache.internal:6379", tls: true},
		{name: "ipv6", url: "redis://[::1]:7001", addr: "[::1]:7001"},
		{name: "wrong scheme", url: "http://:s3cret@host:6379", wantErr: true},
		{name: "unix scheme", url: "unix:///tmp/redis.sock", wantErr: true},
		{name: "unparsable port", url: "redis://user:s3cret@host:port", wantErr: true},
		{name: "control char", url: "redis://user:s3cret\x7f@host", wantErr: true},
		{name: "bad db", url: "redis://:s3cret@host/notanumber", wantErr: true},
		{name: "password with at", url: "redis://user:s3c@ret@host:bad", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(Options{URL: tt.url})
			if tt.wantErr {
				if err == nil {
					s.Close()
					t.Fatalf("New(%q) = nil error; want one", tt.url)
				}
				if !errors.Is(err, ErrInvalidArgument) {
					t.Errorf("New(%q) error %v; want ErrInvalidArgument", tt.url, err)
				}
				for _, secret := range []string{"s3cret", "s3c", "ret@"} {
					if strings.Contains(tt.url, secret) && strings.Contains(err.Error(), secret) {
						t.Errorf("New(%q) error %q contains the password", tt.url, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("New(%q): %v", tt.url, err)
			}
			defer s.Close()
			o := s.rdb.(*redis.Client).Options()
			if o.Addr != tt.addr || o.DB != tt.db || (o.TLSConfig != nil) != tt.tls {
				t.Errorf("New(%q) dials %s db %d tls %v; want %s db %d tls %v",
					tt.url, o.Addr, o.DB, o.TLSConfig != nil, tt.addr, tt.db, tt.tls)
			}
			if !o.ContextTimeoutEnabled {
				t.Errorf("New(%q): ContextTimeoutEnabled is off; caller deadlines would not reach the socket", tt.url)
			}
		})
	}
}

func TestNewURLFromEnvironment(t *testing.T) {
	t.Setenv("REDIS_URL", "redis://127.0.0.1:7777/2")
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if o := s.rdb.(*redis.Client).Options(); o.Addr != "127.0.0.1:7777" || o.DB != 2 {
		t.Errorf("New with $REDIS_URL dials %s db %d; want 127.0.0.1:7777 db 2", o.Addr, o.DB)
	}

	t.Setenv("REDIS_URL", "")
	s2, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := s2.rdb.(*redis.Client).Options().Addr; got != "localhost:6379" {
		t.Errorf("New without URL dials %s; want localhost:6379", got)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	t.Parallel()
	for name, o := range map[string]Options{
		"negative timeout":  {Timeout: -time.Second},
		"negative pool":     {PoolSize: -1},
		"retries below -1":  {MaxRetries: -2},
		"negative lifetime": {SessionMaxLifetime: -time.Hour},
	} {
		t.Run(name, func(t *testing.T) {
			if s, err := New(o); !errors.Is(err, ErrInvalidArgument) {
				if s != nil {
					s.Close()
				}
				t.Errorf("New(%+v) error = %v; want ErrInvalidArgument", o, err)
			}
		})
	}
}

func TestNewDoesNotTouchTheNetwork(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	s, err := New(Options{URL: "redis://" + ln.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	select {
	case <-accepted:
		t.Fatal("New dialled Redis")
	case <-time.After(50 * time.Millisecond):
	}
}

func TestSetGet(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)

		mustSet(t, s, "k", "v1")
		if v, found, err := s.Get(ctx, "k"); v != "v1" || !found || err != nil {
			t.Errorf("Get(k) = %q, %v, %v; want v1, true, nil", v, found, err)
		}
		if v, found, err := s.Get(ctx, "missing"); v != "" || found || err != nil {
			t.Errorf("Get(missing) = %q, %v, %v; want \"\", false, nil", v, found, err)
		}
		if got := b.client.Get(ctx, b.raw("k")).Val(); got != "v1" {
			t.Errorf("raw GET of prefixed key = %q; want v1 (KeyPrefix not applied?)", got)
		}
		if n := b.client.Exists(ctx, "k").Val(); n != 0 {
			t.Errorf("unprefixed key exists; KeyPrefix leaked")
		}

		steps := []struct {
			name  string
			key   string
			value any
			opts  []SetOption
			want  bool
			after string
		}{
			{"NX on existing", "k", "v2", []SetOption{NX()}, false, "v1"},
			{"XX on existing", "k", "v3", []SetOption{XX()}, true, "v3"},
			{"XX on missing", "new", "x", []SetOption{XX()}, false, ""},
			{"NX on missing", "new", "n", []SetOption{NX()}, true, "n"},
			{"int value", "num", 42, nil, true, "42"},
			{"bytes value", "raw", []byte{0, 1, 2}, nil, true, "\x00\x01\x02"},
		}
		for _, st := range steps {
			ok, err := s.Set(ctx, st.key, st.value, st.opts...)
			if ok != st.want || err != nil {
				t.Errorf("%s: Set(%q) = %v, %v; want %v, nil", st.name, st.key, ok, err, st.want)
			}
			if got, _, _ := s.Get(ctx, st.key); got != st.after {
				t.Errorf("%s: Get(%q) = %q; want %q", st.name, st.key, got, st.after)
			}
		}
		if ok, err := s.Exists(ctx, "k"); !ok || err != nil {
			t.Errorf("Exists(k) = %v, %v; want true, nil", ok, err)
		}
		if ok, err := s.Exists(ctx, "missing"); ok || err != nil {
			t.Errorf("Exists(missing) = %v, %v; want false, nil", ok, err)
		}
	})
}

func TestSetTTL(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)

		if _, err := s.Set(ctx, "short", "v", WithTTL(250*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if d, err := s.TTL(ctx, "short"); err != nil || d <= 200*time.Millisecond || d > 250*time.Millisecond {
			t.Errorf("TTL(short) = %v, %v; want about 250ms", d, err)
		}
		mustSet(t, s, "forever", "v")
		if d, err := s.TTL(ctx, "forever"); d != NoExpiry || err != nil {
			t.Errorf("TTL(forever) = %v, %v; want NoExpiry", d, err)
		}
		if d, err := s.TTL(ctx, "missing"); d != KeyMissing || err != nil {
			t.Errorf("TTL(missing) = %v, %v; want KeyMissing", d, err)
		}

		// KeepTTL keeps it; a plain Set clears it.
		if _, err := s.Set(ctx, "short", "v2", KeepTTL()); err != nil {
			t.Fatal(err)
		}
		if d, _ := s.TTL(ctx, "short"); d <= 0 {
			t.Errorf("after KeepTTL, TTL = %v; want the old TTL kept", d)
		}
		b.pass(300 * time.Millisecond)
		b.waitFor(t, "short key expires", func() bool {
			_, found, err := s.Get(ctx, "short")
			return !found && err == nil
		})
	})
}

func TestInvalidInputWritesNothing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		mustSet(t, s, "k", "old")

		tests := []struct {
			name string
			call func() error
			want error
		}{
			{"Set negative TTL", func() error { _, err := s.Set(ctx, "k", "x", WithTTL(-time.Second)); return err }, ErrInvalidTTL},
			{"Set zero TTL", func() error { _, err := s.Set(ctx, "k", "x", WithTTL(0)); return err }, ErrInvalidTTL},
			{"Set sub-ms TTL", func() error { _, err := s.Set(ctx, "k", "x", WithTTL(999*time.Microsecond)); return err }, ErrInvalidTTL},
			{"Set NX and XX", func() error { _, err := s.Set(ctx, "k", "x", NX(), XX()); return err }, ErrInvalidArgument},
			{"Set KeepTTL and TTL", func() error { _, err := s.Set(ctx, "k", "x", KeepTTL(), WithTTL(time.Second)); return err }, ErrInvalidArgument},
			{"Set empty key", func() error { _, err := s.Set(ctx, "", "x"); return err }, ErrInvalidKey},
			{"SetJSON bad TTL", func() error { _, err := s.SetJSON(ctx, "k", 1, WithTTL(-1)); return err }, ErrInvalidTTL},
			{"SetJSON unmarshalable", func() error { _, err := s.SetJSON(ctx, "k", make(chan int)); return err }, ErrInvalidArgument},
			{"MSet bad TTL", func() error { return s.MSet(ctx, map[string]any{"k": "x", "k2": "y"}, WithTTL(time.Microsecond)) }, ErrInvalidTTL},
			{"MSet empty key", func() error { return s.MSet(ctx, map[string]any{"k": "x", "": "y"}) }, ErrInvalidKey},
			{"MSet NX", func() error { return s.MSet(ctx, map[string]any{"k": "x"}, NX()) }, ErrInvalidArgument},
			{"Expire zero", func() error { _, err := s.Expire(ctx, "k", 0); return err }, ErrInvalidTTL},
			{"Expire negative", func() error { _, err := s.Expire(ctx, "k", -time.Second); return err }, ErrInvalidTTL},
			{"Expire sub-ms", func() error { _, err := s.Expire(ctx, "k", time.Microsecond); return err }, ErrInvalidTTL},
			{"Del empty key", func() error { _, err := s.Del(ctx, "k", ""); return err }, ErrInvalidKey},
			{"HSet empty key", func() error { return s.HSet(ctx, "", "f", "v") }, ErrInvalidKey},
			{"HDel no fields", func() error { _, err := s.HDel(ctx, "k"); return err }, ErrInvalidArgument},
			{"GetJSON nil dst", func() error { _, err := s.GetJSON(ctx, "k", nil); return err }, ErrInvalidArgument},
			{"GetJSON non-pointer dst", func() error { var v struct{}; _, err := s.GetJSON(ctx, "k", v); return err }, ErrInvalidArgument},
		}
		for _, tt := range tests {
			if err := tt.call(); !errors.Is(err, tt.want) {
				t.Errorf("%s: error = %v; want %v", tt.name, err, tt.want)
			}
		}
		if v, _ := b.client.Get(ctx, b.raw("k")).Result(); v != "old" {
			t.Errorf("after invalid calls k = %q; want old", v)
		}
		if d := b.client.PTTL(ctx, b.raw("k")).Val(); d != -1 {
			t.Errorf("after invalid calls PTTL(k) = %v; want no TTL", d)
		}
		if n := b.client.Exists(ctx, b.raw("k2"), b.raw("")).Val(); n != 0 {
			t.Errorf("invalid MSet wrote %d keys", n)
		}

		empty := []struct {
			name string
			call func() error
		}{
			{"Get", func() error { _, _, err := s.Get(ctx, ""); return err }},
			{"Exists", func() error { _, err := s.Exists(ctx, ""); return err }},
			{"Expire", func() error { _, err := s.Expire(ctx, "", time.Second); return err }},
			{"TTL", func() error { _, err := s.TTL(ctx, ""); return err }},
			{"MGet", func() error { _, err := s.MGet(ctx, "a", ""); return err }},
			{"SetJSON", func() error { _, err := s.SetJSON(ctx, "", 1); return err }},
			{"GetJSON", func() error { var v int; _, err := s.GetJSON(ctx, "", &v); return err }},
			{"HGet", func() error { _, _, err := s.HGet(ctx, "", "f"); return err }},
			{"HGetAll", func() error { _, err := s.HGetAll(ctx, ""); return err }},
			{"HDel", func() error { _, err := s.HDel(ctx, "", "f"); return err }},
		}
		for _, tt := range empty {
			if err := tt.call(); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("%s(\"\") error = %v; want ErrInvalidKey", tt.name, err)
			}
		}
	})
}

func TestExpire(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		mustSet(t, s, "k", "v")
		if ok, err := s.Expire(ctx, "k", 1500*time.Millisecond); !ok || err != nil {
			t.Fatalf("Expire(k) = %v, %v; want true, nil", ok, err)
		}
		if d, _ := s.TTL(ctx, "k"); d <= time.Second || d > 1500*time.Millisecond {
			t.Errorf("TTL after Expire(1.5s) = %v; want about 1.5s (milliseconds kept)", d)
		}
		if ok, err := s.Expire(ctx, "missing", time.Second); ok || err != nil {
			t.Errorf("Expire(missing) = %v, %v; want false, nil", ok, err)
		}
		if ok, err := s.Expire(ctx, "k", 100*time.Millisecond); !ok || err != nil {
			t.Fatalf("Expire(k, 100ms) = %v, %v", ok, err)
		}
		b.pass(150 * time.Millisecond)
		b.waitFor(t, "k expires", func() bool {
			ok, err := s.Exists(ctx, "k")
			return !ok && err == nil
		})
	})
}

func TestBulk(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)

		// Enough keys to land in every slot range of a 3-master cluster.
		values := map[string]any{}
		var keys []string
		for i := range 50 {
			k := "bulk:" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
			values[k] = i
			keys = append(keys, k)
		}
		if err := s.MSet(ctx, values); err != nil {
			t.Fatalf("MSet: %v", err)
		}
		got, err := s.MGet(ctx, append(keys, "bulk:missing")...)
		if err != nil || len(got) != len(keys) {
			t.Fatalf("MGet = %d keys, %v; want %d, nil", len(got), err, len(keys))
		}
		if _, ok := got["bulk:missing"]; ok {
			t.Errorf("MGet returned a missing key")
		}
		if got[keys[7]] != "7" {
			t.Errorf("MGet[%q] = %q; want 7", keys[7], got[keys[7]])
		}

		if err := s.MSet(ctx, map[string]any{"t1": "a", "t2": "b"}, WithTTL(200*time.Millisecond)); err != nil {
			t.Fatalf("MSet with TTL: %v", err)
		}
		for _, k := range []string{"t1", "t2"} {
			if d, _ := s.TTL(ctx, k); d <= 0 || d > 200*time.Millisecond {
				t.Errorf("TTL(%s) after MSet(WithTTL(200ms)) = %v", k, d)
			}
		}

		n, err := s.Del(ctx, append(keys, "bulk:missing")...)
		if n != int64(len(keys)) || err != nil {
			t.Errorf("Del = %d, %v; want %d, nil", n, err, len(keys))
		}
		if m, err := s.MGet(ctx); m == nil || len(m) != 0 || err != nil {
			t.Errorf("MGet() = %v, %v; want empty map", m, err)
		}
		if n, err := s.Del(ctx); n != 0 || err != nil {
			t.Errorf("Del() = %d, %v; want 0, nil", n, err)
		}
		if err := s.MSet(ctx, nil); err != nil {
			t.Errorf("MSet(nil) = %v; want nil", err)
		}
	})
}

type product struct {
	SKU   string   `json:"sku"`
	Price int      `json:"price"`
	Tags  []string `json:"tags"`
}

func TestJSON(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		in := product{SKU: "A-1", Price: 250, Tags: []string{"hot"}}
		if ok, err := s.SetJSON(ctx, "p", in, WithTTL(time.Minute)); !ok || err != nil {
			t.Fatalf("SetJSON = %v, %v", ok, err)
		}
		if raw := b.client.Get(ctx, b.raw("p")).Val(); raw != `{"sku":"A-1","price":250,"tags":["hot"]}` {
			t.Errorf("stored JSON = %s; want plain JSON text", raw)
		}
		var out product
		if ok, err := s.GetJSON(ctx, "p", &out); !ok || err != nil || out.SKU != in.SKU || out.Price != in.Price {
			t.Errorf("GetJSON = %v, %v, %+v; want true, nil, %+v", ok, err, out, in)
		}
		if ok, err := s.GetJSON(ctx, "missing", &out); ok || err != nil {
			t.Errorf("GetJSON(missing) = %v, %v; want false, nil", ok, err)
		}

		b.client.Set(ctx, b.raw("bad"), "{not json", 0)
		b.client.Set(ctx, b.raw("str"), `"a string"`, 0)
		b.client.HSet(ctx, b.raw("hash"), "f", "v")
		for _, tt := range []struct {
			key  string
			want error
		}{{"bad", ErrDecode}, {"str", ErrDecode}} {
			var p product
			if ok, err := s.GetJSON(ctx, tt.key, &p); ok || !errors.Is(err, tt.want) {
				t.Errorf("GetJSON(%q) = %v, %v; want false, %v", tt.key, ok, err, tt.want)
			}
		}
		var p product
		if ok, err := s.GetJSON(ctx, "hash", &p); ok || err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
			t.Errorf("GetJSON(hash) = %v, %v; want false, WRONGTYPE error", ok, err)
		}
		if !s.IsConnected() {
			t.Errorf("IsConnected() = false after decode and WRONGTYPE errors; want true")
		}
	})
}

func TestHash(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		for f, v := range map[string]any{"name": "Ada", "visits": 3} {
			if err := s.HSet(ctx, "h", f, v); err != nil {
				t.Fatalf("HSet(h, %s): %v", f, err)
			}
		}
		if v, found, err := s.HGet(ctx, "h", "visits"); v != "3" || !found || err != nil {
			t.Errorf("HGet(h, visits) = %q, %v, %v; want 3, true, nil", v, found, err)
		}
		if v, found, err := s.HGet(ctx, "h", "nope"); v != "" || found || err != nil {
			t.Errorf("HGet(h, nope) = %q, %v, %v; want \"\", false, nil", v, found, err)
		}
		if m, err := s.HGetAll(ctx, "h"); len(m) != 2 || m["name"] != "Ada" || err != nil {
			t.Errorf("HGetAll(h) = %v, %v", m, err)
		}
		if m, err := s.HGetAll(ctx, "missing"); m == nil || len(m) != 0 || err != nil {
			t.Errorf("HGetAll(missing) = %#v, %v; want empty non-nil map", m, err)
		}
		if n, err := s.HDel(ctx, "h", "name", "nope"); n != 1 || err != nil {
			t.Errorf("HDel = %d, %v; want 1, nil", n, err)
		}
		mustSet(t, s, "str", "x")
		if m, err := s.HGetAll(ctx, "str"); m == nil || len(m) != 0 || err == nil {
			t.Errorf("HGetAll(string key) = %#v, %v; want empty map and WRONGTYPE", m, err)
		}
	})
}

func TestClose(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	s, err := New(Options{URL: "redis://" + mr.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	mustSet(t, s, "k", "v")
	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v; want nil", err)
	}
	checks := []struct {
		name string
		call func() error
	}{
		{"Connect", func() error { return s.Connect(ctx) }},
		{"HealthCheck", func() error { return s.HealthCheck(ctx) }},
		{"Set", func() error {
			ok, err := s.Set(ctx, "k", "v")
			return wantFallback(ok == false, err)
		}},
		{"Get", func() error { v, ok, err := s.Get(ctx, "k"); return wantFallback(v == "" && !ok, err) }},
		{"Exists", func() error { ok, err := s.Exists(ctx, "k"); return wantFallback(!ok, err) }},
		{"Expire", func() error { ok, err := s.Expire(ctx, "k", time.Second); return wantFallback(!ok, err) }},
		{"TTL", func() error { d, err := s.TTL(ctx, "k"); return wantFallback(d == KeyMissing, err) }},
		{"Del", func() error { n, err := s.Del(ctx, "k"); return wantFallback(n == 0, err) }},
		{"MGet", func() error { m, err := s.MGet(ctx, "k"); return wantFallback(m != nil && len(m) == 0, err) }},
		{"MSet", func() error { return s.MSet(ctx, map[string]any{"k": 1}) }},
		{"GetJSON", func() error { var v any; ok, err := s.GetJSON(ctx, "k", &v); return wantFallback(!ok, err) }},
		{"HGetAll", func() error { m, err := s.HGetAll(ctx, "k"); return wantFallback(m != nil && len(m) == 0, err) }},
		{"Info", func() error { m, err := s.Info(ctx); return wantFallback(m != nil && len(m) == 0, err) }},
	}
	for _, c := range checks {
		if err := c.call(); !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: error = %v; want ErrClosed", c.name, err)
		}
	}
	if s.IsConnected() {
		t.Errorf("IsConnected after Close = true")
	}
}

// wantFallback returns err, or an error of its own when the value was not
// the fallback.
func wantFallback(isFallback bool, err error) error {
	if !isFallback {
		return errors.New("value is not the fallback")
	}
	return err
}

func TestCloseLeavesCallersClient(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.client.Ping(context.Background()).Err(); err != nil {
		t.Errorf("caller's client after Service.Close: %v; want it still open", err)
	}
	if s.Client() != b.client {
		t.Errorf("Client() is not the client passed in")
	}
}

func TestFlushAll(t *testing.T) {
	t.Parallel()
	// miniredis only: the suite never flushes a real server.
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	mustSet(t, s, "k", "v")
	if err := s.FlushAll(ctx); !errors.Is(err, ErrFlushDisabled) {
		t.Errorf("FlushAll without AllowFlushAll = %v; want ErrFlushDisabled", err)
	}
	if ok, _ := s.Exists(ctx, "k"); !ok {
		t.Fatalf("refused FlushAll deleted keys")
	}
	s2 := b.service(t, Options{AllowFlushAll: true})
	if err := s2.FlushAll(ctx); err != nil {
		t.Fatalf("FlushAll = %v", err)
	}
	if ok, _ := s.Exists(ctx, "k"); ok {
		t.Errorf("key survived FlushAll")
	}
}

func TestHealth(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		if err := s.Connect(ctx); err != nil {
			t.Fatalf("Connect = %v", err)
		}
		if err := s.HealthCheck(ctx); err != nil {
			t.Errorf("HealthCheck = %v", err)
		}
		rec := httptest.NewRecorder()
		s.HealthHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		var rep HealthReport
		if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil {
			t.Fatalf("health body %q: %v", rec.Body, err)
		}
		if rec.Code != http.StatusOK || rep.Status != "ok" || rep.LatencyMS < 0 {
			t.Errorf("HealthHandler = %d %+v; want 200 ok", rec.Code, rep)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q; want application/json", ct)
		}
		info, err := s.Info(ctx, "clients") // the one section miniredis has
		if err != nil || info["connected_clients"] == "" {
			t.Errorf("Info(clients) = %v, %v; want connected_clients", info, err)
		}
	})
}

func TestHealthHandlerDown(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	s, err := New(Options{URL: "redis://:hunter2@" + mr.Addr(), Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mr.RequireAuth("hunter2")
	mr.Close()
	rec := httptest.NewRecorder()
	s.HealthHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Content-Type") != "application/json" {
		t.Errorf("HealthHandler with Redis down = %d %q; want 503 application/json", rec.Code, rec.Header().Get("Content-Type"))
	}
	if !strings.Contains(rec.Body.String(), `"status":"unavailable"`) || strings.Contains(rec.Body.String(), "hunter2") {
		t.Errorf("HealthHandler body = %s", rec.Body)
	}
}

func TestIsConnectedFollowsRedis(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	logs := &syncWriter{w: new(bytes.Buffer)}
	s, err := New(Options{
		URL:     "redis://" + mr.Addr(),
		Timeout: 300 * time.Millisecond,
		Logger:  slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.Connect(ctx); err != nil || !s.IsConnected() {
		t.Fatalf("Connect = %v, IsConnected = %v", err, s.IsConnected())
	}
	mr.Close()
	start := time.Now()
	for range 20 {
		if v, found, err := s.Get(ctx, "k"); v != "" || found || err == nil {
			t.Fatalf("Get with Redis down = %q, %v, %v; want fallback and error", v, found, err)
		}
	}
	if s.IsConnected() {
		t.Fatalf("IsConnected = true with Redis down")
	}
	st := s.Stats()
	if st.Errors < 20 || st.Fallbacks < 20 {
		t.Errorf("Stats = %+v; want >= 20 errors and fallbacks", st)
	}
	lines := strings.Count(logs.String(), "op=get")
	if maxLines := 1 + int(time.Since(start)/time.Second); lines > maxLines || uint64(lines)+st.LogsSuppressed != 20 {
		t.Errorf("logged %d of 20 get failures (%d suppressed) in %v; want at most %d, the rest counted",
			lines, st.LogsSuppressed, time.Since(start), maxLines)
	}

	if err := mr.Restart(); err != nil {
		t.Fatal(err)
	}
	// No other call: IsConnected must find out by itself.
	deadline := time.Now().Add(5 * time.Second)
	for !s.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatal("IsConnected did not recover after Redis came back")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestContextErrorsStayReachable(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := s.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with cancelled ctx = %v; want context.Canceled", err)
	}
	dctx, dcancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer dcancel()
	if _, err := s.Set(dctx, "k", "v"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Set with expired ctx = %v; want context.DeadlineExceeded", err)
	}
	if !s.IsConnected() {
		t.Errorf("IsConnected = false after the caller's own cancellation; want true")
	}
}

// stalledServer accepts connections and never answers.
func stalledServer(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

func TestEveryCallIsBounded(t *testing.T) {
	t.Parallel()
	addr := stalledServer(t)
	s, err := New(Options{URL: "redis://" + addr, Timeout: 200 * time.Millisecond, MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	start := time.Now()
	_, _, err = s.Get(context.Background(), "k")
	if took := time.Since(start); err == nil || took > 2*time.Second {
		t.Errorf("Get against a stalled server took %v, err %v; want an error within the Timeout bound", took, err)
	}
	if !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
		t.Errorf("Get against a stalled server: %v; want a deadline or timeout error", err)
	}

	// A caller's shorter deadline reaches the socket.
	s2, err := New(Options{URL: "redis://" + addr, Timeout: 10 * time.Second, MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = s2.Set(ctx, "k", "v")
	if took := time.Since(start); took > time.Second || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Set with a 100ms deadline took %v, err %v; want DeadlineExceeded in about 100ms", took, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestLogsNeverHoldValues(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	logs := &syncWriter{w: new(bytes.Buffer)}
	s := b.service(t, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	ctx := ctxT(t)
	b.client.HSet(ctx, b.raw("h"), "f", "v")
	if _, err := s.Set(ctx, "h", "card-4111111111111111", XX(), KeepTTL()); err != nil {
		t.Fatal(err) // SET replaces any type; no error expected
	}
	b.client.HSet(ctx, b.raw("h2"), "f", "v")
	if _, err := s.SetJSON(ctx, "h2", map[string]string{"card": "4111111111111111"}); err != nil {
		t.Fatal(err)
	}
	b.client.HSet(ctx, b.raw("h3"), "f", "v")
	var v map[string]string
	if _, err := s.GetJSON(ctx, "h3", &v); err == nil {
		t.Fatal("GetJSON of a hash: want WRONGTYPE")
	}
	if !strings.Contains(logs.String(), "op=getjson") {
		t.Errorf("failure not logged: %q", logs.String())
	}
	if strings.Contains(logs.String(), "4111") {
		t.Errorf("log holds a value: %q", logs.String())
	}
}

func TestStatsCountHitsAndMisses(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	mustSet(t, s, "a", "1")
	s.Get(ctx, "a")
	s.Get(ctx, "b")
	s.MGet(ctx, "a", "b", "c")
	st := s.Stats()
	if st.Hits != 2 || st.Misses != 3 || st.Errors != 0 || !st.Connected {
		t.Errorf("Stats = %+v; want 2 hits, 3 misses, 0 errors, connected", st)
	}
	if st.Pool.TotalConns == 0 {
		t.Errorf("Stats.Pool = %+v; want the pool's figures", st.Pool)
	}
}

func mustSet(t testing.TB, s *Service, key string, value any) {
	t.Helper()
	if ok, err := s.Set(context.Background(), key, value); !ok || err != nil {
		t.Fatalf("Set(%q) = %v, %v", key, ok, err)
	}
}

// syncWriter serialises writes from concurrent loggers.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.String()
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func TestLargeValues(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		big := strings.Repeat("0123456789abcdef", 5<<20/16) // 5 MiB
		if _, err := s.Set(ctx, "big", big, WithTTL(time.Minute)); err != nil {
			t.Fatalf("Set(5 MiB) = %v", err)
		}
		if v, found, err := s.Get(ctx, "big"); len(v) != len(big) || v != big || !found || err != nil {
			t.Errorf("Get(5 MiB) = %d bytes, %v, %v; want the value back", len(v), found, err)
		}
		in := map[string][]string{"lines": strings.Split(big[:3<<20], "f")}
		if _, err := s.SetJSON(ctx, "bigjson", in, WithTTL(time.Minute)); err != nil {
			t.Fatalf("SetJSON(3 MiB) = %v", err)
		}
		var out map[string][]string
		if found, err := s.GetJSON(ctx, "bigjson", &out); !found || err != nil || len(out["lines"]) != len(in["lines"]) {
			t.Errorf("GetJSON(3 MiB) = %d lines, %v, %v; want %d", len(out["lines"]), found, err, len(in["lines"]))
		}
	})
}
